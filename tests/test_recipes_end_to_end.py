"""Every recipe beyond today's pipeline end to end: a collection created with it over HTTP (4 shards), indexed from a
real S3 server on a local Ray, pinned to the recipe's own calibration, and searched with held-out photos."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.collections.manifest import DEFAULT_SHARDS
from cluster.errors import ModelMismatch
from cluster.keys.access import Role
from cluster.models.calibration import calibration_sha256
from cluster.models.recipes import RECIPES
from cluster.models.registry import PUBLISHED_CALIBRATIONS
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from cluster.storage import S3Store, open_store
from serving.threaded import serve_in_thread
from serving.usecases.context import Context
from tests.factories import index
from tests.s3server import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.slow

PEOPLE, INDEXED = 12, 3
NEW_RECIPES = [name for name, recipe in RECIPES.items() if not recipe.is_plain]
SEARCH = {"purpose": "system-test", "case_id": "RECIPES-1"}


@pytest.fixture(scope="module")
def world(lfw_images: Path, model_dir: Path, s3_endpoint: str, local_ray: None) -> Iterator[dict[str, Any]]:
    settings = Settings(
        model_dir=model_dir,
        store="s3://recipes-store",
        s3_endpoint=s3_endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
    )
    store, photos = open_store("s3://recipes-store", settings), open_store("s3://recipe-photos/lfw", settings)
    assert isinstance(store, S3Store) and isinstance(photos, S3Store)
    store.ensure_bucket()
    photos.ensure_bucket()
    probes: dict[str, bytes] = {}
    for person in sorted(p for p in lfw_images.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if len(files) > INDEXED and len(probes) < PEOPLE:
            probes[person.name] = files[0].read_bytes()  # held out: never indexed
            for path in files[1 : INDEXED + 1]:
                photos.put(f"{person.name}/{path.name}", path.read_bytes())
    service = Context(settings)
    token = service.keys.create(Role.ADMIN, label="recipes")[1]
    with serve_in_thread(service) as url:
        client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"})
        for recipe in NEW_RECIPES:
            made = client.post("/v1/collections", json={"name": recipe, "recipe": recipe})
            assert made.status_code == 201, made.text
            index(service, recipe, "s3://recipe-photos/lfw", quality_filter=QualityFilter.NONE)
        yield {"service": service, "client": client, "probes": probes}


@pytest.mark.parametrize("recipe", NEW_RECIPES)
def test_a_recipes_collection_finds_the_right_person_first(world: dict[str, Any], recipe: str) -> None:
    client, hits, wrong = world["client"], 0, 0
    described = client.get(f"/v1/collections/{recipe}").json()
    assert described["recipe"] == recipe and described["shard_count"] == DEFAULT_SHARDS
    assert described["face_count"] >= PEOPLE * INDEXED - 2
    shipped = json.loads((PUBLISHED_CALIBRATIONS / f"{recipe}.json").read_text())
    assert described["calibration_sha256"] == calibration_sha256(shipped)  # its own calibration, pinned
    for name, probe in world["probes"].items():
        answer = client.post(f"/v1/collections/{recipe}/search", files={"image": ("p.jpg", probe)}, data=SEARCH)
        assert answer.status_code == 200, answer.text
        matches = answer.json()["matches"]
        if matches and matches[0]["external_image_id"].split("/")[0] != name:
            wrong += 1
        elif matches:
            hits += 1
    print(f"\n{recipe}: right person first for {hits}/{PEOPLE} held-out probes, a stranger first for {wrong}")
    assert hits >= PEOPLE - 2 and wrong == 0


def test_a_collection_keeps_its_recipe(world: dict[str, Any]) -> None:
    """Indexing into a collection with another recipe is refused, not mixed."""
    with pytest.raises(ModelMismatch, match="holds faces of recipe yunet-sface, not yunet-onet-sface-dlib-mirror"):
        index(world["service"], "yunet-sface", "s3://recipe-photos/lfw", recipe="accurate")
    # The refusal changed nothing: the collection still answers.
    answer = world["client"].post(
        "/v1/collections/yunet-sface/search",
        files={"image": ("p.jpg", next(iter(world["probes"].values())))},
        data=SEARCH,
    )
    assert answer.status_code == 200, answer.text
