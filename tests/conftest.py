"""Shared fixtures: the real models built once per session, and the lfw-dev photos (skipped where absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from cluster.models.registry import ModelRegistry
from cluster.settings import Settings

LFW = Path(os.environ.get("FACEGRID_LFW_DEV", Path(__file__).resolve().parents[1] / ".." / "shared" / "lfw-dev"))


@pytest.fixture(scope="session")
def lfw_images() -> Path:
    images = LFW / "images"
    if not images.is_dir():
        pytest.skip(f"lfw-dev photos not found at {images}: set FACEGRID_LFW_DEV to the lfw-dev folder")
    return images


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray per test module (127.0.0.1 only: tests/__init__.py), in the namespace our actors use."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="facegrid", log_to_driver=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1", "Ray would listen beyond this machine"
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-protocol server (rclone) on 127.0.0.1 for the module; its host:port."""
    from tests.s3server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as address:
        yield address


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shared = os.environ.get("FACEGRID_TEST_MODEL_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def settings(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="session")
def registry(settings: Settings) -> ModelRegistry:
    registry = ModelRegistry(settings.model_dir)
    registry.build_all()
    return registry


@pytest.fixture(scope="session")
def pipeline(settings: Settings, registry: ModelRegistry):  # type: ignore[no-untyped-def]
    """The default model's pipeline (SFace)."""
    from cluster.models.faces import FacePipeline

    return FacePipeline(settings, registry)


@pytest.fixture(scope="session")
def dlib_pipeline(settings: Settings, registry: ModelRegistry):  # type: ignore[no-untyped-def]
    from cluster.models.faces import FacePipeline
    from cluster.models.registry import DLIB_ID

    return FacePipeline(settings, registry, DLIB_ID)


def lfw_photos(images: Path, people: int, per_person: int = 1) -> list[Path]:
    """The first photos of the first people (sorted) that have at least `per_person` photos."""
    found = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= per_person:
            found.extend(photos[:per_person])
            if len(found) >= people * per_person:
                break
    return found


def lfw_folder(images: Path, target: Path, people: int, per_person: int = 1) -> Path:
    """Those photos (`lfw_photos`) copied into `target`, a folder per person, as a source to index."""
    for photo in lfw_photos(images, people, per_person):
        path = target / photo.parent.name / photo.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo.read_bytes())
    return target


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read lfw-dev are marked `lfw` (select or deselect them with -m)."""
    for item in items:
        if "lfw_images" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lfw)
