"""facegrid bench races: real `facegrid serve` processes and the CLI on one store, clients issuing seeded random
interleavings of adds, overlapping erasures, rebuilds, reshards, people acts, readmissions and index jobs, and a
checker holding every answer against a model of the collection (Jepsen's way, on one machine)."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.bench.races_checks import apply, check_end, check_manifest, check_searches, restart_one
from jobs.bench.races_world import COLLECTION, Photo, Run, world

ACTS = ("add", "erase", "rebuild", "reshard", "readmit", "user", "index")
WEIGHTS = (40, 25, 8, 6, 8, 10, 2)


def run_races(
    ops: int,
    seed: int,
    images: Path,
    store_kind: str = "folder",
    servers: int = 2,
    model_dir: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """`ops` acts in rounds of one to four at once on `servers` servers; the violations found, with the seed."""
    began = time.monotonic()
    with world(store_kind, servers, images, model_dir, progress) as run:
        run.seed = seed
        rng = random.Random(seed)
        with run.client(0) as admin:
            answer = admin.post("/v1/collections", json={"name": COLLECTION, "shards": 2})
            assert answer.status_code == 201, answer.text
        done = rounds = 0
        while done < ops and len(run.violations) < 20:
            acts = [_pick(rng, run) for _ in range(rng.choice((1, 2, 2, 3, 4)))]
            _round(run, rng, acts)
            done, rounds = done + len(acts), rounds + 1
            if rounds % 10 == 0:
                progress(f"{done} acts, {len(run.violations)} violations, {time.monotonic() - began:.0f} s")
        restart_one(run, rng)
        check_end(run)
        return {
            "seed": seed,
            "store": store_kind,
            "servers": servers,
            "acts": done,
            "rounds": rounds,
            "by_act": dict(run.acts),
            "faces_present": len(run.model.present),
            "faces_erased": len(run.model.erased),
            "violations": run.violations,
            "trace": _around_first_violation(run.trace),
            "seconds": round(time.monotonic() - began, 1),
        }


def _around_first_violation(trace: list[str]) -> list[str]:
    """The acts that led to the first violation found, and a few after it: where to look."""
    first = next((n for n, line in enumerate(trace) if " VIOLATION " in line), None)
    return [] if first is None else trace[max(0, first - 50) : first + 10]


def _pick(rng: random.Random, run: Run) -> str:
    act: str = rng.choices(ACTS, WEIGHTS)[0]
    if act == "index" and not run.index_photos:
        return "add"
    return act


def _round(run: Run, rng: random.Random, acts: list[str]) -> None:
    """Acts at once, then the checks. Erasures overlap each other on purpose; every other act takes faces (and
    photos) no other act of its round touches, so that the model knows each act's outcome."""
    erasable = sorted(run.model.present)
    erase_from = rng.sample(erasable, min(len(erasable), rng.randint(1, 4))) if erasable else []
    again = rng.sample(sorted(run.model.erased), min(1, len(run.model.erased)))  # erased before: a no-op
    busy = set(erase_from) | set(again)
    photos = list(run.photos)
    rng.shuffle(photos)
    plans: list[Callable[[], dict[str, Any]]] = []
    for act in acts:
        server = rng.randrange(len(run.urls))
        free = [p for p in photos if not set(p.faces) & busy]
        readmittable = sorted(run.model.erased - run.model.readmitted - busy)
        if act == "add" and free:
            photos.remove(free[0])
            busy |= set(free[0].faces)
            plans.append(_add(run, server, free[0], rng))
        elif act == "erase" and erase_from:
            plans.append(_erase(run, server, rng.sample(erase_from, rng.randint(1, len(erase_from))) + again))
        elif act in ("rebuild", "reshard"):
            plans.append(_rebuild(run, server, rng.randint(1, 3) if act == "reshard" else None))
        elif act == "readmit" and readmittable:
            chosen = rng.choice(readmittable)
            busy |= {f for p in run.photos if chosen in p.faces for f in p.faces} | {chosen}
            plans.append(_readmit(run, server, chosen))
        elif act == "user" and run.model.present - busy:
            faces = rng.sample(sorted(run.model.present - busy), min(2, len(run.model.present - busy)))
            busy |= set(faces)
            plans.append(_user(run, server, f"u{rng.randrange(6)}", faces))
        elif act == "index" and run.index_photos:
            plans.append(_index(run, run.index_photos.pop()))
    if not plans:
        plans.append(_rebuild(run, 0, None))
    results: list[dict[str, Any]] = [{} for _ in plans]

    def go(n: int) -> None:
        try:
            results[n] = plans[n]()
        except Exception as exc:  # a client-side failure is a finding too
            run.violated(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=go, args=(n,)) for n in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.note(f"round: {acts}")
    apply(run, results)
    check_manifest(run)
    check_searches(run, results)


def _add(run: Run, server: int, photo: Photo, rng: random.Random) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.post(
                f"/v1/collections/{COLLECTION}/faces",
                files={"image": (photo.path.name, photo.path.read_bytes())},
                data={"external_image_id": photo.external_id, "quality_filter": "NONE"},
            )
        run.acts["add"] += 1
        if answer.status_code != 200:
            run.violated(f"add {photo.external_id} on server {server}: {answer.status_code} {answer.text[:300]}")
            return {}
        body = answer.json()
        ids = [f["face_id"] for f in body["face_records"]]
        run.note(f"add {photo.external_id} on {server}: {ids} unindexed {body.get('unindexed_faces')}")
        refused = {f.get("face_id") for f in body.get("unindexed_faces", []) if f.get("reasons") == ["ERASED"]}
        return {"act": "add", "server": server, "photo": photo, "ids": ids, "erased": refused}

    return act


def _erase(run: Run, server: int, face_ids: list[str]) -> Callable[[], dict[str, Any]]:
    before = set(run.model.present)

    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.request("DELETE", f"/v1/collections/{COLLECTION}/faces", json={"face_ids": face_ids})
        run.acts["erase"] += 1
        if answer.status_code != 200:
            run.violated(f"erase {face_ids} on server {server}: {answer.status_code} {answer.text[:300]}")
            return {}
        body = answer.json()
        run.note(f"erase {face_ids} on {server}: {body}")
        return {"act": "erase", "server": server, "asked": face_ids, "before": before, "body": body, "at": time.time()}

    return act


def _rebuild(run: Run, server: int, shards: int | None) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.post(f"/v1/collections/{COLLECTION}/rebuild", json={"shards": shards})
        run.acts["rebuild" if shards is None else "reshard"] += 1
        run.note(f"rebuild shards={shards} on {server}: {answer.status_code}")
        # A rebuild that lost its race to another publish changed nothing and says so: a valid outcome.
        if answer.status_code not in (200, 409):
            run.violated(f"rebuild(shards={shards}) on server {server}: {answer.status_code} {answer.text[:300]}")
        return {"act": "rebuild"}

    return act


def _readmit(run: Run, server: int, face_id: str) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.post(f"/v1/collections/{COLLECTION}/faces/readmit", json={"face_ids": [face_id]})
        run.acts["readmit"] += 1
        run.note(f"readmit {face_id} on {server}: {answer.status_code}")
        if answer.status_code != 200:
            run.violated(f"readmit {face_id} on server {server}: {answer.status_code} {answer.text[:300]}")
            return {}
        return {"act": "readmit", "face_id": face_id}

    return act


def _user(run: Run, server: int, user_id: str, faces: list[str]) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            created = client.post(f"/v1/collections/{COLLECTION}/users", json={"user_id": user_id})
            if created.status_code not in (201, 409):
                run.violated(f"create user {user_id}: {created.status_code} {created.text[:300]}")
            run.acts["user"] += 1
            if not faces:
                return {}
            answer = client.post(f"/v1/collections/{COLLECTION}/users/{user_id}/faces", json={"face_ids": faces})
            run.acts["associate"] += 1
        if answer.status_code != 200:
            run.violated(f"associate {faces} to {user_id}: {answer.status_code} {answer.text[:300]}")
            return {}
        return {"act": "user", "user": user_id, "changed": answer.json()["changed_faces"]}

    return act


def _index(run: Run, photo: Photo) -> Callable[[], dict[str, Any]]:
    """An index job through the CLI (its own process) over a folder holding this one photo."""

    def act() -> dict[str, Any]:
        source = run.workdir / "sources" / photo.external_id
        source.mkdir(parents=True)
        shutil.copy(photo.path, source / photo.path.name)
        done = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "index", COLLECTION, str(source), "--quality-filter", "NONE"],
            env=run.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        run.acts["index"] += 1
        if done.returncode != 0:
            run.violated(f"index job over {source}: exit {done.returncode}: {done.stderr[-600:]}")
            return {}
        with run.client(0) as client:
            page = client.get(f"/v1/collections/{COLLECTION}/faces", params={"limit": 1000}).json()["faces"]
        ids = [f["face_id"] for f in page if f["external_image_id"].endswith(photo.path.name)]
        return {"act": "add", "server": None, "photo": photo, "ids": ids, "erased": set()}

    return act
