"""End to end with real parts: an S3 server, a local Ray, the real models and lfw-dev photos, through the HTTP API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import pytest
import ray

from cluster.collections.manifest import Collections
from cluster.keys.access import Role, local_operator
from cluster.models.registry import DEFAULT_EMBEDDER, embedding_of
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from cluster.storage import S3Store, open_store
from serving.threaded import serve_in_thread
from serving.usecases import collections, search
from serving.usecases.context import Context
from tests.factories import index
from tests.s3server import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.slow

PEOPLE = 40
INDEXED_PER_PERSON = 8
PROBED_PEOPLE = 20
COLLECTION = "e2e"
SEARCH = {"purpose": "system-test", "case_id": "TEST-1"}


def _people(images: Path) -> list[tuple[str, list[Path]]]:
    chosen = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= INDEXED_PER_PERSON + 1:
            chosen.append((person.name, photos[: INDEXED_PER_PERSON + 1]))
        if len(chosen) == PEOPLE:
            return chosen
    pytest.skip("lfw-dev has too few people with enough photos")


@pytest.fixture(scope="module")
def world(lfw_images: Path, model_dir: Path, s3_endpoint: str, local_ray: None) -> Iterator[dict[str, Any]]:
    people = _people(lfw_images)
    settings = Settings(
        model_dir=model_dir,
        store="s3://facegrid-store",
        s3_endpoint=s3_endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
    )
    store, photos = open_store("s3://facegrid-store", settings), open_store("s3://photos/lfw", settings)
    assert isinstance(store, S3Store) and isinstance(photos, S3Store)
    store.ensure_bucket()
    photos.ensure_bucket()
    probes = {}
    for name, files in people:
        probes[name] = files[0].read_bytes()  # held out: never indexed
        for path in files[1:]:
            photos.put(f"{name}/{path.name}", path.read_bytes())
    service = Context(settings)
    # The defaults a new user gets: SFace, and the floor of 1e-5 false matches per comparison.
    asyncio.run(collections.create(service, local_operator(), COLLECTION, 4, 1e-5))
    token = service.keys.create(Role.ADMIN, label="e2e")[1]
    summary = index(service, COLLECTION, "s3://photos/lfw", quality_filter=QualityFilter.NONE)
    with serve_in_thread(service) as url:
        yield {
            "settings": settings,
            "service": service,
            "summary": summary,
            "probes": probes,
            "people": people,
            "client": httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}),
        }


def _search(client: httpx.Client, probe: bytes, **fields: Any) -> httpx.Response:
    return client.post(
        f"/v1/collections/{COLLECTION}/search", files={"image": ("probe.jpg", probe)}, data={**SEARCH, **fields}
    )


def test_index_job_indexed_every_photo(world: dict[str, Any]) -> None:
    summary = world["summary"]
    assert summary["images"] == PEOPLE * INDEXED_PER_PERSON
    assert summary["faces"] >= summary["images"] - summary["errors"]
    assert summary["collection_faces"] == summary["faces"]


def test_right_person_is_top_match(world: dict[str, Any]) -> None:
    client, hits, wrong = world["client"], 0, 0
    for name, _ in world["people"][:PROBED_PEOPLE]:
        response = _search(client, world["probes"][name])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["partial"] is False and body["missing_shards"] == []
        assert "investigative leads" in body["notice"]
        assert body["model_id"] == DEFAULT_EMBEDDER
        if body["matches"] and body["matches"][0]["external_image_id"].split("/")[0] != name:
            wrong += 1
        elif body["matches"]:
            hits += 1
            top = body["matches"][0]
            assert top["source"].startswith("s3://photos/lfw/") and len(top["bbox"]) == 4
            assert 0 < top["estimated_false_match_rate"] <= 1e-5
    print(f"\nright person top match at the default floor: {hits}/{PROBED_PEOPLE}, wrong person: {wrong}")
    assert hits >= 19 and wrong == 0


def test_sharded_top10_equals_brute_force(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    manifest = service.collections.get(COLLECTION)
    stored = service.collections.faces(manifest, ["faiss_id", "embedding"])
    vectors = np.stack(stored.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    ids = stored.column("faiss_id").to_numpy()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    pipeline = service.models.pipeline()
    probed = world["people"][:PROBED_PEOPLE]
    probes = np.stack([pipeline([world["probes"][name]])[0].faces[0].embedding for name, _ in probed])
    _, want = exact.search(probes, 10)
    matches, missing = asyncio.run(search.search_vectors(service, manifest, probes, 10, threshold=-1.0))
    assert missing == []
    for row, got in zip(want, matches, strict=True):
        assert [int(m.face_id, 16) for m in got] == [int(ids[i]) for i in row]


def test_rerun_adds_no_duplicates(world: dict[str, Any]) -> None:
    service = world["service"]
    before = service.collections.get(COLLECTION).face_count
    again = index(service, COLLECTION, "s3://photos/lfw", quality_filter=QualityFilter.NONE)
    assert again["images"] == 0
    assert service.collections.get(COLLECTION).face_count == before
    faces = service.collections.faces(service.collections.get(COLLECTION), ["face_id"]).column("face_id").to_pylist()
    assert len(faces) == len(set(faces)) == before


def test_errors_are_json_with_codes(world: dict[str, Any]) -> None:
    client = world["client"]
    probe = next(iter(world["probes"].values()))
    assert _search(client, b"not an image").json()["error"]["code"] == "UNSUPPORTED_FORMAT"
    missing = client.post("/v1/collections/nope/search", files={"image": ("p.jpg", probe)}, data=SEARCH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "COLLECTION_NOT_FOUND"
    blank = np.full((200, 200, 3), 128, np.uint8)
    import cv2

    _ok, png = cv2.imencode(".png", blank)
    assert _search(client, png.tobytes()).json()["error"]["code"] == "NO_FACE_IN_PROBE"
    refused = client.post(f"/v1/collections/{COLLECTION}/search", files={"image": ("p.jpg", probe)})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "PURPOSE_REQUIRED"
    loose = _search(client, probe, threshold=0.1)
    assert loose.status_code == 403 and loose.json()["error"]["code"] == "THRESHOLD_BELOW_FLOOR"


def test_list_compare_detect(world: dict[str, Any]) -> None:
    client = world["client"]
    page = client.get(f"/v1/collections/{COLLECTION}/faces", params={"limit": 50}).json()
    assert page["total"] == world["service"].collections.get(COLLECTION).face_count and len(page["faces"]) == 50
    assert "embedding" not in page["faces"][0]
    _name, files = world["people"][0]
    compare = client.post(
        "/v1/compare",
        files={"source": ("a.jpg", files[0].read_bytes()), "target": ("b.jpg", files[1].read_bytes())},
        data=SEARCH,
    ).json()
    # Two photos of one person: above SFace's best-accuracy threshold on lfw-dev.
    assert compare["model_id"] == DEFAULT_EMBEDDER
    assert compare["similarity"] > embedding_of(DEFAULT_EMBEDDER).match_similarity
    detect = client.post("/v1/detect", files={"image": ("a.jpg", files[0].read_bytes())}).json()
    assert len(detect["faces"]) >= 1 and len(detect["faces"][0]["landmarks"]) == 5
    assert client.get("/healthz").json()["status"] == "ok"
    assert "facegrid_requests_total" in client.get("/metrics").text


def test_shard_actor_restarts_from_snapshot(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    manifest = service.collections.get(COLLECTION)
    actors = service.settings.model_copy(deep=True)
    actors.serving.local_shards = False  # the server holds its node's shards itself; other nodes' are actors
    handle = asyncio.run(ShardSet(actors, COLLECTION).handles(manifest))[0][0]
    count = ray.get(handle.count.remote())
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            assert ray.get(handle.count.remote(), timeout=10) == count
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise


def test_delete_person_erases_them(world: dict[str, Any]) -> None:
    client, service = world["client"], world["service"]
    name, files = world["people"][1]
    keys = [f"{name}/{p.name}" for p in files[1:]]
    response = client.request("DELETE", f"/v1/collections/{COLLECTION}/faces", json={"external_image_ids": keys}).json()
    assert len(response["deleted_faces"]) >= INDEXED_PER_PERSON - 1
    body = _search(client, world["probes"][name]).json()
    assert all(not m["external_image_id"].startswith(f"{name}/") for m in body["matches"])
    records = service.collections.faces(service.collections.get(COLLECTION), ["external_image_id"])
    assert not any(e.startswith(f"{name}/") for e in records.column("external_image_id").to_pylist())
    store = open_store(world["settings"].store, world["settings"])
    # No stale snapshots: only the folders the manifest names (index, ids, records per shard), nothing older.
    current = set(service.collections.get(COLLECTION).shards.values())
    folders = {i.key.rsplit("/", 1)[0] for i in store.list(Collections.prefix(COLLECTION) + "shards/")}
    assert folders == current and len(current) == 4
