"""An index job that dies part-way resumes from its checkpoint: nothing lost, nothing indexed twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.access import local_operator
from cluster.embedder import IndexRequest
from cluster.manifest import Collections
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from cluster.storage import LocalStore
from serving.usecases import indexing
from serving.usecases.context import Context
from tests.conftest import lfw_photos
from tests.factories import index


class DriverCrash(Exception):
    """Stands in for the driver process dying after some partitions were done."""


def _source(images: Path, target: Path) -> Path:
    for photo in lfw_photos(images, people=12, per_person=2):
        path = target / photo.parent.name / photo.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo.read_bytes())
    return target


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
