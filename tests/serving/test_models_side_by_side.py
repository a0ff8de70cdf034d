"""Two embedding models in one store: each collection is indexed, floored and searched with its own model only."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cluster.errors import FacegridError, ModelMismatch
from cluster.keys.access import Role, local_operator
from cluster.models.registry import DLIB_ID, SFACE_ID
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from serving.schemas import SearchAnswer
from serving.threaded import serve_in_thread
from serving.usecases import collections, search
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest
from tests.factories import index

pytestmark = pytest.mark.slow

PEOPLE = 6
INDEXED = 3
COLLECTIONS = {"faces-sface": SFACE_ID, "faces-dlib": DLIB_ID}
SEARCH = {"purpose": "system-test", "case_id": "MODELS-1"}


@pytest.fixture(scope="module")
def world(
    model_dir: Path, lfw_images: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> Iterator[dict[str, Any]]:
    people = []
    for person in sorted(p for p in lfw_images.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) > INDEXED:
            people.append((person.name, photos[: INDEXED + 1]))
        if len(people) == PEOPLE:
            break
    source = tmp_path_factory.mktemp("photos")
    for name, photos in people:
        (source / name).mkdir()
        for photo in photos[1:]:  # the first photo of each person is held out as the probe
            os.symlink(photo, source / name / photo.name)
    settings = Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("models-store")))
    service = Context(settings)
    token = service.keys.create(Role.ADMIN, label="models")[1]
    with serve_in_thread(service) as url:
        client = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})
        for name, model in COLLECTIONS.items():
            # The default model needs no field: that is what a new user gets.
            body = {"name": name, "shards": 2, **({} if model == SFACE_ID else {"model": model})}
            created = client.post("/v1/collections", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["model_id"] == model
            index(service, name, str(source), quality_filter=QualityFilter.NONE)
        yield {"service": service, "client": client, "people": people, "settings": settings, "source": source}


def _search(service: Context, collection: str, probe: bytes) -> dict[str, Any]:
    request = SearchRequest(SEARCH["purpose"], SEARCH["case_id"], max_results=5)
    answer: SearchAnswer = asyncio.run(search.search(service, local_operator(), collection, probe, request))
    return answer.model_dump()


def test_each_collection_keeps_its_model_and_floor(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    floors = {}
    for name, model in COLLECTIONS.items():
        described = asyncio.run(collections.describe(service, local_operator(), name)).model_dump()
        assert described["model_id"] == model and described["face_count"] >= PEOPLE * INDEXED - 1
        floors[model] = described["threshold_floor_similarity"]
    # The same promise (1e-5) is a different similarity for each model: each floor comes from its own calibration.
    assert floors[SFACE_ID] < 0.6 < 0.9 < floors[DLIB_ID]


def test_indexed_vectors_are_the_collections_own_model(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    name, photos = world["people"][0]
    for collection, model in COLLECTIONS.items():
        manifest = service.collections.get(collection)
        stored = service.collections.faces(manifest, ["external_image_id", "embedding"])
        row = stored.column("external_image_id").to_pylist().index(f"{name}/{photos[1].name}")
        vector = np.asarray(stored.column("embedding")[row].as_py(), np.float32)
        own = service.models.pipeline(manifest.face_recipe)([photos[1].read_bytes()])[0].faces[0].embedding
        other = service.models.pipeline(DLIB_ID if model == SFACE_ID else SFACE_ID)([photos[1].read_bytes()])[0]
        assert float(vector @ own) > 0.9999
        assert float(vector @ other.faces[0].embedding) < 0.9


def test_each_collection_is_searched_with_its_own_model(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    found = {}
    for collection, model in COLLECTIONS.items():
        hits = 0
        for name, photos in world["people"]:
            answer = _search(service, collection, photos[0].read_bytes())
            assert answer["model_id"] == model
            assert all(m["similarity"] >= answer["threshold"]["floor"] for m in answer["matches"])
            if answer["matches"]:
                assert answer["matches"][0]["external_image_id"].split("/")[0] == name
                hits += 1
        found[model] = hits
    print(f"\nprobes whose person was found at the default floor: {found} of {PEOPLE}")
    assert found[SFACE_ID] >= PEOPLE - 1


def test_a_vector_of_another_model_is_refused(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    client: httpx.Client = world["client"]
    probe = world["people"][0][1][0].read_bytes()
    vector = service.models.pipeline(SFACE_ID)([probe])[0].faces[0].embedding.tolist()
    refused = client.post(
        "/v1/collections/faces-dlib/search-vector", json={"vector": vector, "model_id": SFACE_ID, **SEARCH}
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "MODEL_MISMATCH"
    assert "sface-2021dec" in refused.json()["error"]["message"]
    accepted = client.post(
        "/v1/collections/faces-sface/search-vector", json={"vector": vector, "model_id": SFACE_ID, **SEARCH}
    )
    assert accepted.status_code == 200 and accepted.json()["matches"]


def test_indexing_with_another_model_or_an_unknown_one_is_refused(world: dict[str, Any]) -> None:
    with pytest.raises(ModelMismatch, match="holds sface-2021dec embeddings"):
        index(world["service"], "faces-sface", str(world["source"]), model=DLIB_ID)
    unknown = world["client"].post("/v1/collections", json={"name": "faces-x", "model": "arcface-r100"})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "UNKNOWN_MODEL"
    with pytest.raises(FacegridError, match="unknown embedding model"):
        index(world["service"], "faces-new", str(world["source"]), model="arcface-r100")
    assert "faces-x" not in collections.names(world["service"], local_operator())
