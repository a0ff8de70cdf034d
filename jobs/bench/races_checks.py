"""The race harness's checker: each round's answers folded into the model, and the invariants held against every
server (snapshots complete, erasures named and gone, adds found, a restarted server the same, one record an act)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from typing import Any

import httpx

from cluster.audit.log import read_records
from cluster.audit.verify import verify
from cluster.collections.photos import KeptPhotos
from jobs.bench.races_world import COLLECTION, Photo, Run
from jobs.processes import serve_process, stop_process

# Every acknowledged add is searchable on every server within this; no server serves an erased face past it.
BOUND_S = 2.0
# A search that has not answered by then hangs: a violation, and the run goes on to report it.
SEARCH_TIMEOUT_S = 120.0
SEARCH = {"purpose": "system-test", "case_id": "RACES", "max_results": "50"}


def apply(run: Run, results: list[dict[str, Any]]) -> None:
    """Fold a round's answers into the model, checking each erasure's answer against what was there."""
    model = run.model
    erased_by: Counter[str] = Counter()
    for result in results:
        if result.get("act") == "add":
            photo, ids = result["photo"], result["ids"]
            for face_id in ids:
                if face_id in model.erased and face_id not in model.readmitted:
                    run.violated(f"add of {photo.external_id} brought back erased face {face_id}")
            if not photo.faces:
                photo.faces, photo.single = ids, len(ids) == 1
            model.present |= set(ids)
            model.erased -= set(ids)
            model.readmitted -= set(ids)
        elif result.get("act") == "erase":
            body, asked = result["body"], set(result["asked"])
            deleted, already = set(body["deleted_faces"]), set(body.get("already_erased", []))
            missed = (asked & result["before"]) - deleted - already
            if missed:
                run.violated(
                    f"erasure of {sorted(asked)} on server {result['server']} answered without {sorted(missed)}"
                )
            erased_by.update(deleted)
            model.present -= asked
            model.erased |= asked & (result["before"] | model.erased)
        elif result.get("act") == "readmit":
            model.readmitted.add(result["face_id"])
        elif result.get("act") == "user":
            for face_id in result["changed"]:
                model.owner[face_id] = result["user"]
    for face_id, count in erased_by.items():
        if count > 1:
            run.violated(f"face {face_id} named as erased by {count} erasures at once")
    for face_id in model.erased:
        model.owner.pop(face_id, None)


def check_manifest(run: Run) -> None:
    """The published manifest names only complete snapshots."""
    manifest = json.loads(run.store.get(f"collections/{COLLECTION}/manifest.json"))
    for shard, folder in manifest["shards"].items():
        names = {i.key.rsplit("/", 1)[1] for i in run.store.list(folder + "/")}
        if "index.faiss" not in names or "records.arrow" not in names:
            run.violated(f"manifest version {manifest['version']} names shard {shard} at {folder}: holds {names}")


def _found(run: Run, server: int, photo: Photo) -> set[str]:
    with run.client(server) as client:
        try:
            answer = client.post(
                f"/v1/collections/{COLLECTION}/search",
                files={"image": (photo.path.name, photo.path.read_bytes())},
                data=SEARCH,
                timeout=SEARCH_TIMEOUT_S,
            )
        except httpx.TimeoutException:
            run.violated(f"search on server {server}: no answer in {SEARCH_TIMEOUT_S} s")
            return set()
    run.acts["search"] += 1
    if answer.status_code != 200:
        run.violated(f"search on server {server}: {answer.status_code} {answer.text[:300]}")
        return set()
    return {m["face_id"] for m in answer.json()["matches"]}


def check_searches(run: Run, results: list[dict[str, Any]]) -> None:
    """Every server finds each photo touched this round as the model says within BOUND_S; the server that
    answered an erasure serves none of the erased faces from its answer on."""
    touched = [r["photo"] for r in results if r.get("act") == "add"]
    erased = {f for r in results if r.get("act") == "erase" for f in r["asked"]}
    touched += [p for p in run.photos + run.index_photos if set(p.faces) & erased]
    for result in results:
        if result.get("act") == "erase":
            named = set(result["body"]["deleted_faces"]) | set(result["body"]["already_erased"])
            for photo in [p for p in touched if p.single and set(p.faces) & named]:
                leaked = _found(run, result["server"], photo) & named
                if leaked:
                    run.violated(f"server {result['server']} served erased {sorted(leaked)} after its erasure answer")
    for photo in {p.external_id: p for p in touched if p.single}.values():
        for server in range(len(run.urls)):
            _settles(run, server, photo)


def _settles(run: Run, server: int, photo: Photo) -> None:
    want = set(photo.faces) & run.model.present
    gone = set(photo.faces) & run.model.erased
    began = time.monotonic()
    while True:
        found = _found(run, server, photo)
        if want <= found and not gone & found:
            return
        if time.monotonic() - began > BOUND_S:
            run.violated(
                f"server {server}, photo {photo.external_id}: wanted {sorted(want - found)} missing, erased "
                f"{sorted(gone & found)} served, {BOUND_S} s on"
            )
            return
        time.sleep(0.1)


def restart_one(run: Run, rng: random.Random) -> None:
    """Every server, a restarted one too, answers searches as the model says."""
    server = rng.randrange(len(run.urls))
    stop_process(run.processes[server])
    port = int(run.urls[server].rsplit(":", 1)[1])
    run.processes[server], _ = serve_process(run.env, run.workdir / f"server-{server}.log", port)
    for photo in [p for p in run.photos + run.index_photos if p.faces and p.single]:
        _settles(run, server, photo)


def check_kept_photos(run: Run) -> None:
    """A kept photo is in the store exactly while a face added from it is (erasure deletes it with its last)."""
    present: dict[str, bool] = {}
    for photo in run.photos:
        sha256 = hashlib.sha256(photo.path.read_bytes()).hexdigest()
        present[sha256] = present.get(sha256, False) or bool(set(photo.faces) & run.model.present)
    for sha256, wanted in present.items():
        held = run.store.exists(KeptPhotos(run.store, COLLECTION).key(sha256))
        if held != wanted:
            run.violated(f"kept photo {sha256[:12]}: in the store {held}, a face added from it present {wanted}")


def check_end(run: Run) -> None:
    """The audit chain verifies and holds one record per act; no user keeps an erased face."""
    checked = verify(run.store)
    if not checked["ok"]:
        run.violated(f"audit chain: {checked['first_bad_record']}")
    logged = Counter(r["action"] for r in read_records(run.store) if r.get("collection") == COLLECTION)
    expected = {
        "index-faces": run.acts["add"],
        "rebuild-collection": run.acts["rebuild"] + run.acts["reshard"],
        "index": run.acts["index"],
        "delete-faces": run.acts["erase"],
        "search": run.acts["search"],
        "readmit-faces": run.acts["readmit"],
        "create-user": run.acts["user"],
        "associate-faces": run.acts["associate"],
    }
    for action, count in expected.items():
        if logged[action] != count:
            run.violated(f"audit holds {logged[action]} {action} records for {count} acts")
    check_kept_photos(run)
    with run.client(0) as client:
        users = client.get(f"/v1/collections/{COLLECTION}/users", params={"limit": 100}).json()["users"]
    for user in users:
        kept = set(user["face_ids"]) & run.model.erased
        if kept:
            run.violated(f"user {user['user_id']} still holds erased faces {sorted(kept)}")
