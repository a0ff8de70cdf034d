"""The audit chain: verify passes untouched and names the first bad record after each kind of tampering."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from cluster.audit import log as audit
from cluster.audit.log import AuditLog, record_hash
from cluster.audit.verify import verify
from cluster.storage import LocalStore
from jobs.cli.main import app


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    monkeypatch.setattr(audit, "SEGMENT_RECORDS", 8)  # several segments from a few records
    store = LocalStore(tmp_path / "store")
    log = AuditLog(store)
    for i in range(20):
        log.append({"action": "search", "key_id": f"k{i % 3}", "purpose": "system-test", "case_id": f"C-{i}"})
    return store


def _segments(store: LocalStore) -> list[Path]:
    return sorted((store.root / "audit").rglob("*.jsonl"))


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_untouched_log_verifies(store: LocalStore) -> None:
    result = verify(store)
    assert result["ok"] and result["records"] == 20
    assert len(_segments(store)) == 3


def test_changed_byte_is_named(store: LocalStore) -> None:
    segment = _segments(store)[1]  # records 9..16
    _edit(segment, lambda lines: [lines[0], lines[1].replace("C-9", "C-X"), *lines[2:]])
    bad = verify(store)["first_bad_record"]
    assert not verify(store)["ok"] and bad["seq"] == 10 and "modified" in bad["problem"]


def test_deleted_record_is_named(store: LocalStore) -> None:
    _edit(_segments(store)[1], lambda lines: [lines[0], *lines[2:]])  # seq 10 removed
    bad = verify(store)["first_bad_record"]
    assert bad["seq"] == 11 and "10..10 are missing" in bad["problem"]


def test_swapped_records_are_named(store: LocalStore) -> None:
    _edit(_segments(store)[0], lambda lines: [lines[0], lines[2], lines[1], *lines[3:]])
    bad = verify(store)["first_bad_record"]
    assert bad["seq"] == 3 and bad["line"] == 2 and "prev_hash" in bad["problem"]


def test_record_appended_out_of_chain_is_named(store: LocalStore) -> None:
    last = _segments(store)[-1]
    forged = {"seq": 21, "time": "2026-01-01T00:00:00+00:00", "action": "search", "prev_hash": "f" * 64}
    forged["hash"] = record_hash(forged)
    _edit(last, lambda lines: [*lines, json.dumps(forged)])
    bad = verify(store)["first_bad_record"]
    assert bad["seq"] == 21 and "appended out of chain" in bad["problem"]


def test_a_new_writer_continues_the_chain(store: LocalStore) -> None:
    AuditLog(store).append({"action": "export"})
    assert verify(store)["records"] == 21


def _append_many(root: str, writer: int, count: int) -> None:
    log = AuditLog(LocalStore(Path(root)))
    for n in range(count):
        log.append({"action": "search", "writer": writer, "n": n})


def test_processes_appending_at_once_extend_one_chain(store: LocalStore) -> None:
    """Each process chains on the head it wrote while HEAD (rewritten in place) still holds its bytes: two
    processes appending in turn and at once must never fork the chain or lose a record."""
    context = multiprocessing.get_context("spawn")
    before = verify(store)["records"]
    writers = [context.Process(target=_append_many, args=(str(store.root), w, 600)) for w in range(3)]
    for writer in writers:
        writer.start()
    _append_many(str(store.root), 9, 600)
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    checked = verify(store)
    assert checked["ok"] and checked["records"] == before + 4 * 600, checked


def test_cli_verify_exit_status(store: LocalStore) -> None:
    env = {"FACEGRID_STORE": str(store.root)}
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "verify", "--json"], env=env).exit_code == 0
    _edit(_segments(store)[0], lambda lines: [lines[0].replace("search", "sEarch"), *lines[1:]])
    failed = runner.invoke(app, ["audit", "verify", "--json"], env=env)
    assert failed.exit_code == 1
    assert json.loads(failed.stdout.strip().splitlines()[-1])["first_bad_record"]["seq"] == 1


def _drop_last(store: LocalStore, n: int) -> None:
    """Cut the last n records off the end of the log, as someone with write access to the store could."""
    for _ in range(n):
        last = _segments(store)[-1]
        lines = last.read_text().splitlines()
        if len(lines) == 1:
            last.unlink()
        else:
            _edit(last, lambda lines: lines[:-1])


@pytest.mark.parametrize("removed", [1, 3])
def test_removing_the_last_records_is_detected(store: LocalStore, removed: int) -> None:
    _drop_last(store, removed)
    result = verify(store)
    assert not result["ok"] and result["records_verified"] == 20 - removed
    assert f"records {21 - removed}..20 are missing (removed from the end)" in result["first_bad_record"]["problem"]


def test_an_append_after_a_cut_keeps_the_gap_visible(store: LocalStore) -> None:
    _drop_last(store, 3)
    AuditLog(store).append({"action": "export"})  # chains on from HEAD's record 20, not the shortened segment
    bad = verify(store)["first_bad_record"]
    assert bad["seq"] == 21 and "18..20 are missing" in bad["problem"]


def test_a_rewritten_last_record_is_detected(store: LocalStore) -> None:
    last = _segments(store)[-1]
    lines = last.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"case_id": "C-forged"}
    forged["hash"] = record_hash(forged)
    _edit(last, lambda lines: [*lines[:-1], json.dumps(forged)])
    assert "HEAD.json names (rewritten)" in verify(store)["first_bad_record"]["problem"]


def test_a_checkpoint_verifies_after_later_appends_and_catches_a_cut_before_it(
    store: LocalStore, tmp_path: Path
) -> None:
    checkpoint = audit.head(store)
    assert checkpoint["seq"] == 20 and len(checkpoint["hash"]) == 64 and checkpoint["time"]
    log = AuditLog(store)
    for _ in range(5):
        log.append({"action": "export"})
    assert verify(store, checkpoint) == {
        "ok": True,
        "records": 25,
        "head": audit.head(store)["hash"],
        "checkpoint": {"seq": 20, "hash": checkpoint["hash"], "verified": True},
    }
    # Someone with write access cuts records 15..25 and rewrites HEAD.json to match: only the checkpoint sees it.
    _drop_last(store, 11)
    last = json.loads(_segments(store)[-1].read_text().splitlines()[-1])
    (store.root / audit.HEAD).write_text(
        json.dumps(
            {
                "segment": f"audit/{_segments(store)[-1].relative_to(store.root / 'audit').as_posix()}",
                "seq": last["seq"],
                "hash": last["hash"],
                "time": last["time"],
            }
        )
    )
    assert verify(store)["ok"]
    result = verify(store, checkpoint)
    assert not result["ok"] and "records 15..20 are missing" in result["first_bad_record"]["problem"]
    saved = tmp_path / "checkpoint.json"
    saved.write_text(json.dumps(checkpoint))
    runner = CliRunner()
    env = {"FACEGRID_STORE": str(store.root)}
    failed = runner.invoke(app, ["audit", "verify", "--checkpoint", str(saved), "--json"], env=env)
    assert failed.exit_code == 1


def test_cli_head_prints_the_checkpoint(store: LocalStore) -> None:
    result = CliRunner().invoke(app, ["audit", "head", "--json"], env={"FACEGRID_STORE": str(store.root)})
    assert result.exit_code == 0
    assert json.loads(result.stdout.strip().splitlines()[-1]) == audit.head(store)


def test_the_writer_commits_concurrent_appends_in_groups_on_s3(s3_endpoint: str, local_ray: None) -> None:
    """Appends that arrive together are written together; the chain is whole and every caller got its own seq."""
    import asyncio

    from cluster.audit.writer import AuditWriter
    from cluster.settings import Settings
    from cluster.storage import S3Store, open_store
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    settings = Settings(
        store="s3://audit-groups", s3_endpoint=s3_endpoint, s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY
    )
    store = open_store(settings.store, settings)
    assert isinstance(store, S3Store)
    store.ensure_bucket()
    writer = ray.remote(AuditWriter).options(name="audit-groups-test", num_cpus=0).remote(settings)

    async def many() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(writer.append.remote({"action": "search", "n": i}) for i in range(150))))

    answers = asyncio.run(many())
    assert sorted(a["seq"] for a in answers) == list(range(1, 151))
    result = verify(store)
    assert result["ok"] and result["records"] == 150, result
    segments = [i.key for i in store.list("audit/") if i.key.endswith(".jsonl")]
    assert len(segments) <= 150 // audit.SMALL_SEGMENT_RECORDS + 2  # grouped, never one object per record
    ray.kill(writer)
    again = AuditLog(store).append({"action": "export"})  # a restarted writer resumes from the stored head
    assert again["seq"] == 151 and verify(store)["ok"]
