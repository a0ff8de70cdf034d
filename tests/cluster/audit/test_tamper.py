"""The tamper suite: each kind of damage to the audit log, on a folder and on an S3 server. `verify` never raises and
names the place; appends on a damaged head fail closed (AuditUnavailable); a repair cuts the log back to its last
verified record, keeps the damaged part aside, and appends go on from there with a chain that verifies."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator

import pytest

from cluster.audit import log as audit
from cluster.audit.log import HEAD, AuditLog, record_hash, segments
from cluster.audit.repair import DAMAGED, repair
from cluster.audit.verify import verify
from cluster.errors import AuditUnavailable
from cluster.settings import Settings
from cluster.storage import LocalStore, ObjectStore, S3Store, open_store
from tests.s3server import ACCESS_KEY, SECRET_KEY

RECORDS = 40


def _lines(store: ObjectStore, key: str) -> list[str]:
    return store.get(key).decode().splitlines()


def _put_lines(store: ObjectStore, key: str, lines: list[str]) -> None:
    store.put(key, "".join(f"{line}\n" for line in lines).encode())


def _middle(store: ObjectStore) -> str:
    keys = segments(store)
    return keys[len(keys) // 2]


def _line(n: int, text: str) -> Callable[[ObjectStore], None]:
    """Line n of the middle segment replaced by `text`."""

    def damage(store: ObjectStore) -> None:
        key = _middle(store)
        lines = _lines(store, key)
        lines[n] = text
        _put_lines(store, key, lines)

    return damage


def _edit_segment(change: Callable[[list[str]], list[str]], which: int | None = None) -> Callable[[ObjectStore], None]:
    def damage(store: ObjectStore) -> None:
        key = segments(store)[which] if which is not None else _middle(store)
        _put_lines(store, key, change(_lines(store, key)))

    return damage


def _modify(lines: list[str]) -> list[str]:
    record = json.loads(lines[1])
    record["case_id"] = "REWRITTEN"
    return [lines[0], json.dumps(record), *lines[2:]]


def _forge(lines: list[str]) -> list[str]:
    """A record with a valid hash of its own, appended without the chain's link."""
    record = json.loads(lines[-1]) | {"seq": json.loads(lines[-1])["seq"] + 1, "prev_hash": "f" * 64}
    record["hash"] = record_hash(record)
    return [*lines, json.dumps(record)]


def _head(text: bytes) -> Callable[[ObjectStore], None]:
    def damage(store: ObjectStore) -> None:
        if isinstance(store, LocalStore):
            (store.root / HEAD).write_bytes(text)
        else:
            store.put(HEAD, text)

    return damage


def _remove_segment(which: int) -> Callable[[ObjectStore], None]:
    return lambda store: store.delete(segments(store)[which])


def _swap_segments(store: ObjectStore) -> None:
    first, second = segments(store)[1:3]
    a, b = store.get(first), store.get(second)
    store.put(first, b)
    store.put(second, a)


def _add_file(name: str) -> Callable[[ObjectStore], None]:
    def damage(store: ObjectStore) -> None:
        day = segments(store)[0].rsplit("/", 1)[0]
        store.put(f"{day}/{name}", _lines(store, segments(store)[0])[0].encode() + b"\n")

    return damage


def _head_names_missing_segment(store: ObjectStore) -> None:
    pointer = json.loads(store.get(HEAD)) | {"segment": "audit/2001/01/01/000000000001.jsonl"}
    _head(json.dumps(pointer).encode())(store)


def _bytes(raw: bytes) -> Callable[[ObjectStore], None]:
    def damage(store: ObjectStore) -> None:
        key = _middle(store)
        store.put(key, store.get(key)[:40] + raw + store.get(key)[40:])

    return damage


# name -> (damage, whether appends must stop until a repair)
VARIANTS: dict[str, tuple[Callable[[ObjectStore], None], bool]] = {
    "line is a JSON list": (_line(2, "[]"), False),
    "line is a number": (_line(2, "123"), False),
    "line is null": (_line(2, "null"), False),
    "line is a string": (_line(2, '"x"'), False),
    "line is not JSON": (_line(2, '{"seq": 3, "ha'), False),
    "blank line inserted": (_edit_segment(lambda lines: [lines[0], "", *lines[1:]]), False),
    "record modified": (_edit_segment(_modify), False),
    "record removed": (_edit_segment(lambda lines: lines[:1] + lines[2:]), False),
    "records reordered": (_edit_segment(lambda lines: [lines[1], lines[0], *lines[2:]]), False),
    "record duplicated": (_edit_segment(lambda lines: [lines[0], *lines]), False),
    "record forged out of chain": (_edit_segment(_forge, which=-1), False),
    "last record removed": (_edit_segment(lambda lines: lines[:-1], which=-1), False),
    "invalid UTF-8 in a segment": (_bytes(b"\xff\xfe\xfa"), False),
    "segment cut mid-line": (_edit_segment(lambda lines: [*lines[:-1], lines[-1][:20]]), False),
    "middle segment removed": (_remove_segment(1), False),
    "segments swapped": (_swap_segments, False),
    "stray file added": (_add_file("evil.jsonl"), False),
    "segment added under a segment's name": (_add_file("000000000002.jsonl"), False),
    "HEAD not JSON": (_head(b"\x00garbage{"), True),
    "HEAD a JSON list": (_head(b"[]"), True),
    "HEAD an empty object": (_head(b"{}"), True),
    "HEAD seq not a number": (
        _head(b'{"segment": "audit/2026/01/01/000000000001.jsonl", "seq": "9", "hash": "x"}'),
        True,
    ),
    "HEAD removed": (lambda store: store.delete(HEAD), True),
    "HEAD names a missing segment": (_head_names_missing_segment, True),
    "last segment removed": (_remove_segment(-1), True),
}


@pytest.fixture(params=["folder", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStore]:
    monkeypatch.setattr(audit, "SEGMENT_RECORDS", 8)  # several segments from a few records (S3: 16 a segment)
    if request.param == "folder":
        yield LocalStore(tmp_path_factory.mktemp("tamper"))
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"tamper-{secrets.token_hex(4)}"
    settings = Settings(
        store=f"s3://{bucket}", s3_endpoint=endpoint, s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY
    )
    opened = open_store(settings.store, settings)
    assert isinstance(opened, S3Store)
    opened.ensure_bucket()
    yield opened


def _fill(store: ObjectStore) -> None:
    log = AuditLog(store)
    for i in range(RECORDS):
        log.append({"action": "search", "key_id": f"k{i % 3}", "purpose": "system-test", "case_id": f"C-{i}"})
    assert verify(store) == {"ok": True, "records": RECORDS, "head": audit.head(store)["hash"]}
    assert len(segments(store)) >= 3


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_damage_is_found_named_refused_and_repaired(store: ObjectStore, variant: str) -> None:
    _fill(store)
    damage, stops_appends = VARIANTS[variant]
    damage(store)

    found = verify(store)
    assert not found["ok"], variant
    place = found["first_bad_record"]
    assert place["segment"] and place["problem"], place
    if stops_appends:
        with pytest.raises(AuditUnavailable, match="audit repair"):
            AuditLog(store).append({"action": "search"})

    done = repair(AuditLog(store))
    assert done["repaired"] and done["moved_to"].startswith(DAMAGED)
    kept = list(store.list(done["moved_to"]))
    assert kept or done["moved"] == [], "the damaged part is kept for inspection"
    AuditLog(store).append({"action": "audit-repair", **{k: v for k, v in done.items() if k != "problem"}})
    AuditLog(store).append({"action": "search"})
    after = verify(store)
    assert after["ok"], (variant, after)
    assert after["records"] == done["anchored_seq"] + 2
    assert repair(AuditLog(store)) == {"repaired": False, "records": after["records"]}
