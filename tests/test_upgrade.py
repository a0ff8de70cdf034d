"""A collection's model upgrade end to end, on real models, a real local Ray and a real server: a dlib collection
(faces from an index job and from uploads, some erased, some in a user) re-embedded with SFace into a shadow
version, the driver killed mid-way and resumed, compared, cut over with searches running, rolled back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.collections.photos import KeptPhotos
from cluster.collections.versions import Versions
from cluster.indexing.upgrade import UpgradeRequest
from cluster.keys.access import Role, local_operator
from cluster.models.registry import DLIB_ID, SFACE_ID
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from cluster.storage import LocalStore
from jobs.processes import stop_process
from serving.threaded import serve_in_thread
from serving.usecases import collections, versions
from serving.usecases.context import Context
from tests.conftest import lfw_folder, lfw_photos
from tests.factories import index

pytestmark = [pytest.mark.slow, pytest.mark.lfw]
SEARCH = {"purpose": "system-test", "case_id": "UPGRADE-1", "max_faces": "20"}


def _killed_after_a_part(settings: Settings, env: dict[str, str]) -> int:
    """Start `facegrid collections upgrade` as its own process and kill it hard (its embedded Ray with it) once a
    part has finished; the photos that finished parts settled."""
    store = LocalStore(Path(settings.store))
    environment = {**os.environ, **env, "FACEGRID_STORE": settings.store, "FACEGRID_MODEL_DIR": str(settings.model_dir)}
    environment.pop("RAY_ADDRESS", None)
    log = Path(settings.store).parent / "upgrade-cli.log"
    command = [sys.executable, "-m", "jobs.cli", "collections", "upgrade", "up", "--model", SFACE_ID]
    driver = subprocess.Popen(
        [*command, "--partition-size", "2"],
        env=environment,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not _parts(store):
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no part finished"
            time.sleep(0.05)
    finally:
        stop_process(driver, hard=True)
    # Its actors outlive it a moment (their raylet's end reaches them after the driver's): a part they finish now is
    # written under the name a rerun would give it. Counted once the parts stop changing.
    seen, still = _parts(store), time.monotonic()
    while time.monotonic() - still < 5:
        time.sleep(0.2)
        if (now := _parts(store)) != seen:
            seen, still = now, time.monotonic()
    return sum(len(json.loads(store.get(key))["photos"]) for key in seen)


def _parts(store: LocalStore) -> list[str]:
    return [i.key for i in store.list("collections/up/upgrade/") if "/part-" in i.key and i.key.endswith(".json")]


def _faces(client: httpx.Client) -> dict[str, dict[str, Any]]:
    listed = client.get("/v1/collections/up/faces", params={"limit": 1000}).json()
    return {f["face_id"]: f for f in listed["faces"]}


def _search(client: httpx.Client, photo: Path) -> list[tuple[str, float]]:
    answer = client.post("/v1/collections/up/search", files={"image": (photo.name, photo.read_bytes())}, data=SEARCH)
    assert answer.status_code == 200, answer.text
    return [(m["face_id"], round(m["similarity"], 5)) for m in answer.json()["matches"]]


def test_a_dlib_collection_moves_to_sface_keeping_its_faces_and_users(
    model_dir: Path, lfw_images: Path, tmp_path: Path, local_ray: None
) -> None:
    from tests.s3server import ACCESS_KEY, SECRET_KEY, s3_server

    lfw_folder(lfw_images, tmp_path / "s3" / "photos", people=3, per_person=3)  # a bucket of an S3 source
    folder = tmp_path / "source"
    for photo in lfw_photos(lfw_images, people=5, per_person=3)[9:]:  # two more people, in a folder
        (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    with s3_server(tmp_path / "s3") as endpoint:
        keys = {"s3_endpoint": endpoint, "s3_access_key": ACCESS_KEY, "s3_secret_key": SECRET_KEY}
        settings = Settings(model_dir=model_dir, store=str(tmp_path / "store"), **keys)
        env = {f"FACEGRID_{k.upper()}": str(v) for k, v in keys.items()}
        _upgrade_end_to_end(settings, env, lfw_images, folder)


def _upgrade_end_to_end(settings: Settings, env: dict[str, str], lfw_images: Path, folder: Path) -> None:
    ctx = Context(settings)
    op = local_operator()
    asyncio.run(collections.create(ctx, op, "up", 2, 1e-5, model=DLIB_ID))
    index(ctx, "up", "s3://photos", quality_filter=QualityFilter.NONE)
    index(ctx, "up", str(folder), quality_filter=QualityFilter.NONE)
    uploads = lfw_photos(lfw_images, people=8, per_person=2)[-4:]  # two people the jobs did not index
    token = ctx.keys.create(Role.ADMIN)[1]
    with serve_in_thread(ctx) as url, httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=300) as client:
        added = {}
        for photo in uploads:
            answer = client.post(
                "/v1/collections/up/faces",
                files={"image": (photo.name, photo.read_bytes())},
                data={"external_image_id": f"{photo.parent.name}/{photo.name}"},
            )
            assert answer.status_code == 200, answer.text
            added[photo] = answer.json()["face_records"][0]["face_id"]
        before = _faces(client)
        assert any(f["source"].startswith("s3://photos/") for f in before.values())
        indexed = sorted(f for f, face in before.items() if not face["source"].startswith("upload://"))
        erased = [indexed[0], added[uploads[0]]]
        gone = client.request("DELETE", "/v1/collections/up/faces", json={"face_ids": erased})
        assert gone.status_code == 200, gone.text
        photo_sha = before[added[uploads[0]]]["source"].removeprefix("upload://")
        assert not KeptPhotos(ctx.store, "up").exists(photo_sha)  # erasure took the kept photo with its last face
        assert client.post("/v1/collections/up/users", json={"user_id": "ann"}).status_code == 201
        members = [added[uploads[2]], added[uploads[3]]]
        assert client.post("/v1/collections/up/users/ann/faces", json={"face_ids": members}).status_code == 200
        live = _faces(client)
        probes = [uploads[1], lfw_photos(lfw_images, people=1, per_person=3)[2]]
        answers_before = [_search(client, p) for p in probes]

        # The CLI's driver is killed (with its embedded Ray) once a part is done; the same request again embeds
        # only the photos no finished part names.
        first = _killed_after_a_part(settings, env)
        request = UpgradeRequest(collection="up", model=SFACE_ID, partition_size=2)
        summary = asyncio.run(versions.upgrade(ctx, op, request))
        photos = len({face["source"] for face in live.values()})
        assert summary["photos"] == photos and summary["photos_embedded_now"] == photos - first
        assert summary["ready"] and summary["unsettled_count"] == 0
        assert summary["kept"] + summary["lost_count"] == len(live)  # every face found again, or listed as lost
        assert summary["kept"] >= len(live) - 1
        shadow = Versions(ctx.store, "up").shadow()
        assert shadow is not None
        ids = [
            f
            for key in Versions(ctx.store, "up").record_files(shadow)
            for f in ctx.store.get_parquet(key, ["face_id"]).column("face_id").to_pylist()
        ]
        assert len(ids) == len(set(ids))  # nothing embedded twice
        settled = [tuple(p) for r in Versions(ctx.store, "up").results(shadow) for p in r["photos"]]
        assert len(settled) == len(set(settled)) == photos  # every photo in one part only

        report = client.get("/v1/collections/up/versions/compare", params={"sample": 50, "mates_by_folder": True})
        assert report.status_code == 200, report.text
        total = report.json()["total"]
        assert total["recipe_shadow"] == "mtcnn-sface" and total["floor_live"] != total["floor_shadow"]
        assert total["mates_shadow"] >= total["mates_live"] > 0

        # Cut-over while searches run: none fails.
        failures: list[str] = []
        stop = threading.Event()

        def searching() -> None:
            with httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=300) as other:
                while not stop.is_set():
                    files = {"image": (probes[0].name, probes[0].read_bytes())}
                    answer = other.post("/v1/collections/up/search", files=files, data=SEARCH)
                    if answer.status_code != 200:
                        failures.append(answer.text)

        runner = threading.Thread(target=searching)
        runner.start()
        try:
            switched = client.post("/v1/collections/up/switch", json={})
            assert switched.status_code == 200, switched.text
        finally:
            stop.set()
            runner.join()
        assert not failures, failures[:3]
        described = client.get("/v1/collections/up").json()
        assert described["model_id"] == SFACE_ID and described["recipe"] == "mtcnn-sface"
        after = _faces(client)
        assert not set(erased) & set(after)  # erased faces stay erased
        assert set(after) <= set(live) | {f["face_id"] for f in summary["found"]}
        assert len(set(live) & set(after)) == summary["kept"]  # their ids kept
        user = client.get("/v1/collections/up/users").json()["users"]
        assert next(u for u in user if u["user_id"] == "ann")["face_count"] == 2
        assert set(members) <= set(after)
        assert [f for f, _ in _search(client, probes[0])][:1] == [f for f, _ in answers_before[0]][:1]
        back = client.post("/v1/collections/up/rollback", json={})
        assert back.status_code == 200, back.text
        assert client.get("/v1/collections/up").json()["model_id"] == DLIB_ID
        assert [_search(client, p) for p in probes] == answers_before  # the old answers, exactly
        forward = client.post("/v1/collections/up/rollback", json={})  # the version left is kept in turn
        assert forward.status_code == 200 and client.get("/v1/collections/up").json()["model_id"] == SFACE_ID

        # A face added after the cut-over is embedded with the new recipe; a rollback now would leave it out of
        # searches, so it is refused unless asked for.
        extra = lfw_photos(lfw_images, people=9, per_person=1)[-1]
        again = client.post("/v1/collections/up/faces", files={"image": (extra.name, extra.read_bytes())})
        assert again.status_code == 200, again.text
        assert again.json()["face_records"][0]["face_id"] in _faces(client)
        refused = client.post("/v1/collections/up/rollback", json={})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "SHADOW_STALE", refused.text
        assert client.get("/v1/collections/up").json()["model_id"] == SFACE_ID
