"""What people gain: rank-1 identification at the default floor on lfw-dev, probing with one photo of each person
with enough photos against their other photos as separate faces, and against the same photos associated as a user.

Everything runs through the product's own path (index job, face search, user search by image) on a scratch store;
only the users' acts are written directly (one create and the associations per person), not request by request.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.collections.live import all_faces
from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.collections.people import MAX_FACES_PER_ACT
from cluster.indexing.embedder import IndexRequest
from cluster.keys.access import local_operator
from cluster.settings import Settings
from jobs.demo import stage_source
from serving.usecases import collections, indexing, people, search
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest

COLLECTION = "bench-people"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _probes(images: Path, min_photos: int) -> list[Path]:
    """The first photo of every person (a folder) with at least `min_photos` photos: held out of the gallery."""
    probes = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= min_photos:
            probes.append(photos[0])
    return probes


def _outcome(found: str | None, person: str) -> str:
    return "none above the floor" if found is None else ("right" if found == person else "wrong")


async def _measure(ctx: Context, images: Path, probes: list[Path], staging: Path, console: Console) -> dict[str, Any]:
    caller = local_operator()
    await collections.create(ctx, caller, COLLECTION, 4, DEFAULT_MAX_FALSE_MATCH_RATE)
    staged = stage_source(images, probes, staging)
    started = time.perf_counter()
    # The largest face of each photo: LFW's photos are of their subject, and a stranger behind them has no label.
    request = IndexRequest.model_validate({"collection": COLLECTION, "source": str(staged), "max_faces": 1})
    await indexing.index(ctx, caller, request)
    indexed_s = time.perf_counter() - started
    manifest = ctx.manifest(COLLECTION, fresh=True)
    rows = all_faces(ctx.collections, manifest, ["face_id", "external_image_id"]).to_pylist()
    by_person: dict[str, list[str]] = {}
    for row in rows:
        by_person.setdefault(row["external_image_id"].split("/")[0], []).append(row["face_id"])
    book = ctx.people(COLLECTION)
    for person, face_ids in by_person.items():  # every person a user: strangers are distractors in both modes
        book.write("create", person, caller.key_id)
        for start in range(0, len(face_ids), MAX_FACES_PER_ACT):
            book.write("associate", person, caller.key_id, face_ids[start : start + MAX_FACES_PER_ACT])
    asked = SearchRequest("system-test", "BENCH-PEOPLE", max_results=10)
    outcomes: dict[str, Counter[str]] = {"faces": Counter(), "users": Counter()}
    evidence = []
    for n, probe in enumerate(probes, 1):
        person, blob = probe.parent.name, probe.read_bytes()
        try:
            faces = await search.search(ctx, caller, COLLECTION, blob, asked)
            users = await people.search(ctx, caller, COLLECTION, asked, image=blob, max_users=5)
        except Exception as exc:  # a probe with no usable face: counted, never dropped
            outcomes["faces"][type(exc).__name__] += 1
            outcomes["users"][type(exc).__name__] += 1
            continue
        top_face = (faces.matches[0].external_image_id or "").split("/")[0] if faces.matches else None
        top_user = users.user_matches[0].user_id if users.user_matches else None
        outcomes["faces"][_outcome(top_face, person)] += 1
        outcomes["users"][_outcome(top_user, person)] += 1
        if users.user_matches and top_user == person:
            evidence.append(len(users.user_matches[0].matched_faces))
        if n % 50 == 0:
            console.print(f"{n}/{len(probes)} probes")
    floor = ctx.models.floor_similarity(manifest)
    return {
        "model_id": manifest.model_id,
        "probes": len(probes),
        "gallery_faces": manifest.face_count,
        "users": len(by_person),
        "max_false_match_rate": manifest.max_false_match_rate,
        "floor_similarity": round(floor, 6),
        "rank1_faces": round(outcomes["faces"]["right"] / len(probes), 4),
        "rank1_users": round(outcomes["users"]["right"] / len(probes), 4),
        "outcomes_faces": dict(outcomes["faces"]),
        "outcomes_users": dict(outcomes["users"]),
        "mean_matched_faces_of_right_user": round(sum(evidence) / len(evidence), 2) if evidence else None,
        "index_seconds": round(indexed_s, 1),
    }


def run_people_benchmark(settings: Settings, images: Path, min_photos: int, console: Console) -> dict[str, Any]:
    import asyncio

    probes = _probes(images, min_photos)
    if not probes:
        raise SystemExit(f"no person under {images} has {min_photos} photos")
    with tempfile.TemporaryDirectory(prefix="bench-people-") as scratch:
        ctx = Context(settings.model_copy(update={"store": f"{scratch}/store"}))
        try:
            return asyncio.run(_measure(ctx, images, probes, Path(scratch) / "source", console))
        finally:
            ctx.close()
