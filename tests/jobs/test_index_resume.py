"""An index job that dies part-way resumes from its checkpoint: nothing lost, nothing indexed twice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.collections.manifest import Collections
from cluster.indexing.embedder import IndexRequest
from cluster.keys.access import local_operator
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from cluster.storage import LocalStore
from jobs.processes import stop_process
from serving.usecases import indexing
from serving.usecases.context import Context
from tests.conftest import lfw_folder, lfw_photos
from tests.factories import index


class DriverCrash(Exception):
    """Stands in for the driver process dying after some partitions were done."""


def _source(images: Path, target: Path) -> Path:
    return lfw_folder(images, target, people=12, per_person=2)


def test_resume_after_crash(local_ray: None, lfw_images: Path, model_dir: Path, tmp_path: Path) -> None:
    source = _source(lfw_images, tmp_path / "photos")
    crashed = Settings(model_dir=model_dir, store=str(tmp_path / "crashed"))
    clean = Settings(model_dir=model_dir, store=str(tmp_path / "clean"))
    done = []

    def crash_after_two(result: object) -> None:
        done.append(result)
        if len(done) == 2:
            raise DriverCrash

    with pytest.raises(DriverCrash):
        request = IndexRequest(collection="c", source=str(source), partition_size=4, quality_filter=QualityFilter.NONE)
        asyncio.run(indexing.index(Context(crashed), local_operator(), request, on_partition=crash_after_two))
    store = LocalStore(tmp_path / "crashed")
    assert any(i.key.endswith("checkpoint.json") for i in store.list("jobs/"))
    assert Collections(store).get("c").face_count == 0  # nothing published yet
    resumed = index(crashed, "c", str(source), partition_size=4, quality_filter=QualityFilter.NONE)
    reference = index(clean, "c", str(source), partition_size=4, quality_filter=QualityFilter.NONE)
    assert resumed["images"] == reference["images"] == 24
    faces = Collections(store).faces(Collections(store).get("c"), ["face_id"]).column("face_id").to_pylist()
    want = (
        Collections(LocalStore(tmp_path / "clean"))
        .faces(Collections(LocalStore(tmp_path / "clean")).get("c"), ["face_id"])
        .column("face_id")
        .to_pylist()
    )
    assert sorted(faces) == sorted(want) and len(faces) == len(set(faces))
    assert not any(i.key.endswith("checkpoint.json") for i in store.list("jobs/"))


def _cli_index(env: dict[str, str], source: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "index", "c", source, "--partition-size", "2", "--quality-filter", "NONE"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _checkpointed(store: LocalStore, parts: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the job's checkpoint holds `parts` partitions."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for info in store.list("jobs/"):
            if info.key.endswith("checkpoint.json") and len(json.loads(store.get(info.key))["partitions"]) >= parts:
                return
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint was written")


def _faces_by_source(store: LocalStore) -> dict[str, list[str]]:
    collections = Collections(store)
    table = collections.faces(collections.get("c"), ["face_id", "source_key"])
    out: dict[str, list[str]] = {}
    for row in table.to_pylist():
        out.setdefault(row["source_key"].rsplit("/", 2)[-2] + "/" + row["source_key"].rsplit("/", 1)[-1], []).append(
            row["face_id"]
        )
    return out


@pytest.mark.slow
def test_a_killed_driver_resumes_by_object_key(lfw_images: Path, model_dir: Path, tmp_path: Path) -> None:
    """Kill the CLI mid-job, add a photo that sorts before every other, run again: each photo indexed once."""
    source = _source(lfw_images, tmp_path / "photos")
    env = {**os.environ, "FACEGRID_STORE": str(tmp_path / "store"), "FACEGRID_MODEL_DIR": str(model_dir)}
    env.pop("RAY_ADDRESS", None)
    store = LocalStore(tmp_path / "store")
    log = tmp_path / "cli.log"
    first = _cli_index(env, str(source), log)
    _checkpointed(store, 2, first, log)
    stop_process(first, hard=True)  # the driver dies with its embedded Ray
    assert Collections(store).get("c").face_count == 0
    extra = lfw_photos(lfw_images, people=13, per_person=2)[-1]
    (source / "000-first").mkdir()
    (source / "000-first" / extra.name).write_bytes(extra.read_bytes())
    again = _cli_index(env, str(source), log)
    assert again.wait(600) == 0, log.read_text()[-3000:]
    clean_env = {**env, "FACEGRID_STORE": str(tmp_path / "clean")}
    reference = _cli_index(clean_env, str(source), log)
    assert reference.wait(600) == 0, log.read_text()[-3000:]
    resumed, clean = _faces_by_source(store), _faces_by_source(LocalStore(tmp_path / "clean"))
    assert resumed == clean and f"000-first/{extra.name}" in resumed  # the same faces of the same photos
    ids = [f for faces in resumed.values() for f in faces]
    assert len(ids) == len(set(ids)) and len(resumed) == 25


@pytest.mark.slow
def test_an_outage_past_the_retries_fails_the_job_and_a_rerun_reads_the_rest(
    lfw_images: Path, model_dir: Path, tmp_path: Path
) -> None:
    """The S3 source stops answering mid-job: the CLI exits non-zero naming the objects not read and the command
    that resumes; once it answers again, the same command indexes the rest and the READ_FAILED records go."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY, s3_server

    served = tmp_path / "s3"
    _source(lfw_images, served / "photos")
    env = {
        **os.environ,
        "FACEGRID_STORE": str(tmp_path / "store"),
        "FACEGRID_MODEL_DIR": str(model_dir),
        "FACEGRID_S3_ACCESS_KEY": ACCESS_KEY,
        "FACEGRID_S3_SECRET_KEY": SECRET_KEY,
    }
    env.pop("RAY_ADDRESS", None)
    store = LocalStore(tmp_path / "store")
    log = tmp_path / "cli.log"
    with s3_server(served) as endpoint:
        env["FACEGRID_S3_ENDPOINT"] = endpoint
        job = _cli_index(env, "s3://photos", log)
        _checkpointed(store, 1, job, log)
        port = endpoint.rsplit(":", 1)[1]
    status = job.wait(600)
    out = log.read_text()
    assert status != 0 and "INDEX_INCOMPLETE" in out and "could not be read" in out, out[-3000:]
    assert "Run the same command again" in out
    collections = Collections(store)
    reasons = collections.errors(collections.get("c")).column("reason").to_pylist()
    assert "READ_FAILED" in reasons
    with s3_server(served, port=int(port)):
        rerun = _cli_index(env, "s3://photos", log)
        assert rerun.wait(600) == 0, log.read_text()[-3000:]
    manifest = collections.get("c")
    assert "READ_FAILED" not in collections.errors(manifest).column("reason").to_pylist()
    indexed = _faces_by_source(store)
    ids = [f for faces in indexed.values() for f in faces]
    assert len(indexed) == 24 and len(ids) == len(set(ids))
