"""IndexFaces over HTTP: durable in the live log, searchable at once, idempotent; erased faces stay erased through
re-adds and index re-runs until an admin readmits them; all of it audited."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.audit.log import read_records
from cluster.collections.live import live_segments
from cluster.collections.photos import KeptPhotos
from cluster.keys.access import Role, local_operator
from cluster.pipeline.quality import QualityFilter
from cluster.settings import ServingSettings, Settings
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context
from tests.conftest import lfw_photos
from tests.factories import index

SEARCH = {"purpose": "system-test", "case_id": "INGEST-1"}


@pytest.fixture(scope="module")
def world(
    model_dir: Path, lfw_images: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> Iterator[dict[str, Any]]:
    source = tmp_path_factory.mktemp("ingest-source")
    serving = ServingSettings(ingest_source=str(source))
    settings = Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("ingest-store")), serving=serving)
    ctx = Context(settings)
    asyncio.run(collections.create(ctx, local_operator(), "live", 2, 1e-5))
    photos = lfw_photos(lfw_images, people=4, per_person=2)
    tokens = {role: ctx.keys.create(role)[1] for role in (Role.ADMIN, Role.INDEXER, Role.SEARCHER)}
    with serve_in_thread(ctx) as url:
        clients = {r: httpx.Client(base_url=url, headers={"X-API-Key": t}, timeout=120) for r, t in tokens.items()}
        yield {
            "ctx": ctx,
            "clients": clients,
            "photos": photos,
            "dir": tmp_path_factory.mktemp("ingest-src"),
            "source": source,
        }


def _add(client: httpx.Client, photo: Path, external: str) -> httpx.Response:
    files = {"image": (photo.name, photo.read_bytes())}
    return client.post("/v1/collections/live/faces", files=files, data={"external_image_id": external})


def _top(client: httpx.Client, photo: Path) -> list[str]:
    files = {"image": (photo.name, photo.read_bytes())}
    answer = client.post("/v1/collections/live/search", files=files, data=SEARCH)
    assert answer.status_code == 200, answer.text
    return [m["face_id"] for m in answer.json()["matches"]]


def test_an_added_face_is_found_at_once_and_adding_again_duplicates_nothing(world: dict[str, Any]) -> None:
    ctx, clients, photos = world["ctx"], world["clients"], world["photos"]
    added = _add(clients[Role.INDEXER], photos[0], "alice/0.jpg")
    assert added.status_code == 200, added.text
    body = added.json()
    ids = [f["face_id"] for f in body["face_records"]]
    assert len(ids) == 1 and body["face_records"][0]["bbox"] and body["model_id"] == "sface-2021dec"
    assert ids[0] in _top(clients[Role.SEARCHER], photos[1])  # the same person's other photo finds it
    again = _add(clients[Role.INDEXER], photos[0], "alice/0.jpg")
    assert [f["face_id"] for f in again.json()["face_records"]] == ids
    listed = clients[Role.ADMIN].get("/v1/collections/live/faces").json()
    assert [f["face_id"] for f in listed["faces"]] == ids and listed["total"] == 1
    assert len(live_segments(ctx.collections, ctx.collections.get("live"))) == 1
    assert _add(clients[Role.SEARCHER], photos[2], "x").status_code == 403
    records = [r for r in read_records(ctx.store) if r["action"] == "index-faces"]
    assert [r["outcome"] for r in records[-3:]] == ["ok", "ok", "refused"] and records[-3]["face_ids"] == ids


def test_unindexed_faces_say_why(world: dict[str, Any]) -> None:
    client, photo = world["clients"][Role.INDEXER], world["photos"][2]
    files = {"image": (photo.name, photo.read_bytes())}
    strict = client.post("/v1/collections/live/faces", files=files, data={"max_faces": 1, "quality_filter": "NONE"})
    assert strict.status_code == 200 and len(strict.json()["face_records"]) == 1
    bad = client.post("/v1/collections/live/faces", files=files, data={"max_faces": 0})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST"


def test_erasure_lasts_through_re_adds_and_index_runs_until_readmitted(world: dict[str, Any]) -> None:
    ctx, clients, folder = world["ctx"], world["clients"], world["dir"]
    for photo in world["photos"][4:6]:
        (folder / photo.parent.name).mkdir(exist_ok=True)
        (folder / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    first = index(ctx, "live", str(folder), quality_filter=QualityFilter.NONE)
    assert first["faces"] == 2
    page = clients[Role.ADMIN].get("/v1/collections/live/faces", params={"limit": 100}).json()["faces"]
    doomed = next(f for f in page if f["external_image_id"].endswith(world["photos"][4].name))
    erased = clients[Role.ADMIN].request("DELETE", "/v1/collections/live/faces", json={"face_ids": [doomed["face_id"]]})
    assert erased.json()["deleted_faces"] == [doomed["face_id"]]
    assert doomed["face_id"] not in _top(clients[Role.SEARCHER], world["photos"][5])
    rerun = index(ctx, "live", str(folder), quality_filter=QualityFilter.NONE)
    assert rerun["images"] == 0  # the erased photo is not read again
    listed = {f["face_id"] for f in clients[Role.ADMIN].get("/v1/collections/live/faces").json()["faces"]}
    assert doomed["face_id"] not in listed
    readmitted = clients[Role.ADMIN].post("/v1/collections/live/faces/readmit", json={"face_ids": [doomed["face_id"]]})
    assert readmitted.status_code == 200 and readmitted.json()["readmitted"][0]["face_id"] == doomed["face_id"]
    assert clients[Role.INDEXER].post("/v1/collections/live/faces/readmit", json={"face_ids": ["x"]}).status_code == 403
    back = index(ctx, "live", str(folder), quality_filter=QualityFilter.NONE)
    assert back["images"] == 1 and back["faces"] == 1
    listed = {f["face_id"] for f in clients[Role.ADMIN].get("/v1/collections/live/faces").json()["faces"]}
    assert doomed["face_id"] in listed  # the same id: same object, same etag
    actions = [(r["action"], r["outcome"]) for r in read_records(ctx.store)]
    assert ("delete-faces", "ok") in actions and ("readmit-faces", "ok") in actions
    assert actions.count(("index", "ok")) >= 3


def test_an_erased_added_face_is_refused_when_added_again(world: dict[str, Any]) -> None:
    clients, photo = world["clients"], world["photos"][6]
    added = _add(clients[Role.INDEXER], photo, "bob/6.jpg").json()["face_records"][0]["face_id"]
    gone = clients[Role.INDEXER].request("DELETE", "/v1/collections/live/faces", json={"face_ids": [added]})
    assert gone.json()["deleted_faces"] == [added]
    again = _add(clients[Role.INDEXER], photo, "bob/6.jpg").json()
    assert again["face_records"] == [] and again["unindexed_faces"][0]["reasons"] == ["ERASED"]
    assert added not in _top(clients[Role.SEARCHER], photo)


def test_an_object_of_the_ingest_source_is_recorded_as_an_index_job_would(world: dict[str, Any]) -> None:
    ctx, client, photo = world["ctx"], world["clients"][Role.INDEXER], world["photos"][7]
    (world["source"] / "carol").mkdir()
    shutil.copy(photo, world["source"] / "carol" / "7.jpg")
    added = client.post("/v1/collections/live/faces", json={"object_key": "carol/7.jpg", "quality_filter": "NONE"})
    assert added.status_code == 200, added.text
    ids = {f["face_id"] for f in added.json()["face_records"]}
    assert ids and added.json()["external_image_id"] == "carol/7.jpg"
    missing = client.post("/v1/collections/live/faces", json={"object_key": "carol/none.jpg"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "OBJECT_NOT_FOUND"
    outside = client.post("/v1/collections/live/faces", json={"object_key": "../x.jpg"})
    assert outside.status_code == 400
    rerun = index(ctx, "live", str(world["source"]), quality_filter=QualityFilter.NONE)
    assert rerun["images"] == 0  # the same location and etag: already held
    listed = [f["face_id"] for f in world["clients"][Role.ADMIN].get("/v1/collections/live/faces").json()["faces"]]
    assert ids <= set(listed) and len(listed) == len(set(listed))


def _kept(ctx: Context, collection: str) -> set[str]:
    return {i.key.rsplit("/", 1)[1] for i in ctx.store.list(KeptPhotos(ctx.store, collection).prefix)}


def test_an_uploaded_photo_is_kept_until_its_last_face_is_erased(world: dict[str, Any]) -> None:
    ctx, clients, photo = world["ctx"], world["clients"], world["photos"][3]
    sha256 = hashlib.sha256(photo.read_bytes()).hexdigest()
    first = _add(clients[Role.INDEXER], photo, "dave/3.jpg").json()["face_records"][0]["face_id"]
    second = _add(clients[Role.INDEXER], photo, "dave/3-again.jpg").json()["face_records"][0]["face_id"]
    assert first != second and sha256 in _kept(ctx, "live")
    assert KeptPhotos(ctx.store, "live").get(sha256) == photo.read_bytes()
    # Only uploads are kept: the ingest source's object and the index job's photos stay where they are.
    assert _kept(ctx, "live") >= {hashlib.sha256(world["photos"][i].read_bytes()).hexdigest() for i in (0, 2, 3)}
    assert hashlib.sha256(world["photos"][7].read_bytes()).hexdigest() not in _kept(ctx, "live")

    def erase(face_id: str) -> dict[str, Any]:
        answer = clients[Role.ADMIN].request("DELETE", "/v1/collections/live/faces", json={"face_ids": [face_id]})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    assert erase(first)["deleted_faces"] == [first]
    assert sha256 in _kept(ctx, "live")  # the other face still names it
    assert erase(second)["deleted_faces"] == [second]
    assert sha256 not in _kept(ctx, "live") and not ctx.store.exists(KeptPhotos(ctx.store, "live").key(sha256))
    assert erase(second)["already_erased"] == [second]  # a retry changes nothing and fails nothing
    acts = [json.loads(ctx.store.get(i.key)) for i in ctx.store.list("collections/live/erasures/")]
    assert [e["photo_sha256"] for a in acts if a["act"] == "delete-photos" for e in a["entries"]].count(sha256) == 1
    erasures = [r for r in read_records(ctx.store) if r["action"] == "delete-faces" and r["outcome"] == "ok"]
    assert erasures[-2]["deleted_photos"] == [sha256] and erasures[-3]["deleted_photos"] == []
    # Erased and added again: refused, and the photo is not kept again.
    again = _add(clients[Role.INDEXER], photo, "dave/3.jpg").json()
    assert again["face_records"] == [] and sha256 not in _kept(ctx, "live")


def test_a_collection_may_be_created_keeping_no_photos(world: dict[str, Any]) -> None:
    ctx, clients, photo = world["ctx"], world["clients"], world["photos"][1]
    made = clients[Role.ADMIN].post("/v1/collections", json={"name": "unkept", "keep_photos": False, "shards": 1})
    assert made.status_code == 201 and made.json()["keep_photos"] is False
    files = {"image": (photo.name, photo.read_bytes())}
    added = clients[Role.INDEXER].post("/v1/collections/unkept/faces", files=files)
    assert added.status_code == 200 and added.json()["face_records"], added.text
    assert _kept(ctx, "unkept") == set()
    created = [r for r in read_records(ctx.store) if r["action"] == "create-collection" and r["collection"] == "unkept"]
    assert created[-1]["keep_photos"] is False
