"""Searching a collection: by probe photo or by vector; the checks every search passes, and what it records."""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from typing import Any

import numpy as np

from cluster.collections.index_spec import SearchKnobs
from cluster.collections.manifest import Manifest
from cluster.errors import FaceNotFound, InvalidRequest, ModelMismatch, NoFaceInProbe, ShardsUnavailable
from cluster.keys.access import Action, Caller, authorize
from serving import metrics, render, stages
from serving.fanout import Hit
from serving.schemas import Match, SearchAnswer, SearchedFace, VectorAnswer
from serving.schemas_people import FaceIdAnswer
from serving.usecases.audited import audited, clipped
from serving.usecases.context import Context
from serving.usecases.images import pick, probe_faces
from serving.usecases.policy import SearchRequest, check_purpose

# The threshold the current request's search applied, with its promise: interfaces whose answer has no field for it
# (Rekognition's protocol) echo it in headers.
THRESHOLD_APPLIED: ContextVar[dict[str, Any] | None] = ContextVar("threshold_applied", default=None)


async def prepare(
    ctx: Context, caller: Caller, collection: str, request: SearchRequest, entry: dict[str, Any]
) -> tuple[Manifest, dict[str, Any]]:
    """The checks every search passes before any work: role, purpose, case id, limits, collection, floor, and the
    per-search promise at the collection's size now (recorded in `entry`, the search's audit record, answered or
    refused)."""
    authorize(caller, Action.SEARCH, collection)
    check_purpose(ctx, request.purpose, request.case_id)
    request.check(ctx.settings.serving.max_results)
    manifest = await ctx.read_manifest(collection)
    promise = manifest.max_false_candidates_per_search
    faces = await ctx.faces_searched(manifest) if promise is not None else None
    entry.update(max_false_candidates_per_search=promise, faces_searched=faces)
    limits = ctx.models.applied_threshold(manifest, request.threshold, faces)
    entry.update(promise_similarity=limits.get("promise_similarity"))
    THRESHOLD_APPLIED.set(limits)
    return manifest, limits


def _matches(ctx: Context, hits: list[Hit], manifest: Manifest, threshold: float) -> list[Match]:
    kept = [h for h in hits if h.similarity >= threshold]
    rates, bounds = ctx.models.false_match_rates(manifest, np.array([h.similarity for h in kept]))
    return [render.match(h, float(r), bool(b), manifest) for h, r, b in zip(kept, rates, bounds, strict=True)]


async def search_vectors(
    ctx: Context, manifest: Manifest, vectors: np.ndarray, k: int, threshold: float, knobs: SearchKnobs | None = None
) -> tuple[list[list[Match]], list[int]]:
    """Fan the vectors out over the collection's shards; matches above `threshold` per vector, missing shards."""
    handles = await ctx.shards(manifest.name).handles(manifest)
    stages.mark("policy")  # checks, manifest, threshold, the shard set's handles
    result = await ctx.batcher(manifest.name, handles).search(vectors, k, knobs)
    stages.mark("fan_out")
    for part, seconds in result.seconds.items():  # what the batcher and the fan-out measured inside
        stages.split("fan_out", seconds, part)
    metrics.shards_seen(manifest.name, handles, result.missing_shards)
    if handles and len(result.missing_shards) == len(handles):
        raise ShardsUnavailable(f"none of the {len(handles)} shards of {manifest.name!r} answered; try again")
    matches = [_matches(ctx, hits, manifest, threshold) for hits in result.hits]
    stages.mark("matches")
    return matches, result.missing_shards


def _record_results(entry: dict[str, Any], answer: VectorAnswer, searched: list[list[Match]]) -> None:
    entry["threshold_applied"] = answer.threshold.applied
    entry["expected_false_candidates"] = answer.threshold.expected_false_candidates
    entry["partial"] = answer.partial
    entry["results"] = [[{"face_id": m.face_id, "similarity": m.similarity} for m in face] for face in searched]


async def search(ctx: Context, caller: Caller, collection: str, blob: bytes, request: SearchRequest) -> SearchAnswer:
    """Search with the faces of a probe photo: the largest, or up to `request.max_faces` of them."""
    fields = request.audit_fields(hashlib.sha256(blob).hexdigest())
    async with audited(ctx, caller, "search", collection, **fields) as entry:
        manifest, limits = await prepare(ctx, caller, collection, request, entry)
        wanted = None if request.face_index is not None else request.max_faces
        probe = await probe_faces(ctx, blob, wanted, manifest.face_recipe)
        if not probe.faces:
            skipped = [render.face_detail(f).model_dump() for f in probe.skipped]
            raise NoFaceInProbe("no face was found in the probe image", skipped=skipped)
        if request.face_index is not None:
            probe = pick(probe, request.face_index)
        vectors = np.stack([f.embedding for f in probe.faces if f.embedding is not None])
        matches, missing = await search_vectors(
            ctx, manifest, vectors, request.max_results, limits["applied"], request.knobs
        )
        first = render.answer(manifest, limits, matches[0], missing, request.purpose, request.case_id)
        result = SearchAnswer(
            **dict(first),
            searched_face=render.face_detail(probe.faces[0]),
            other_faces=[
                SearchedFace(searched_face=render.face_detail(f), matches=m)
                for f, m in zip(probe.faces[1:], matches[1:], strict=True)
            ],
            unsearched_faces=[render.face_detail(f) for f in probe.skipped],
        )
        _record_results(entry, result, matches)
    return result


async def search_vector(
    ctx: Context,
    caller: Caller,
    collection: str,
    vector: list[float],
    request: SearchRequest,
    model_id: str | None = None,
) -> VectorAnswer:
    """Search with an embedding made elsewhere by the same model: the collection's model id, when the caller
    names the vector's model, must match (vectors of two models can have the same length and mean nothing)."""
    query = np.asarray(vector, dtype=np.float32)
    fields = request.audit_fields(hashlib.sha256(query.tobytes()).hexdigest())
    async with audited(ctx, caller, "search-vector", collection, **fields) as entry:
        manifest, limits = await prepare(ctx, caller, collection, request, entry)
        if model_id is not None and model_id != manifest.model_id:
            raise ModelMismatch(
                f"the vector is a {model_id} embedding; collection {collection!r} holds {manifest.model_id} "
                "embeddings, which cannot be compared with it"
            )
        if query.shape != (manifest.dim,):
            raise ModelMismatch(
                f"the vector has {query.size} numbers; collection {collection!r} holds {manifest.dim}-number "
                f"{manifest.model_id} embeddings"
            )
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0:
            raise InvalidRequest(f"vector must be {manifest.dim} finite numbers, not all zero")
        matches, missing = await search_vectors(
            ctx, manifest, (query / norm)[None], request.max_results, limits["applied"], request.knobs
        )
        result = render.answer(manifest, limits, matches[0], missing, request.purpose, request.case_id)
        _record_results(entry, result, matches)
        stages.mark("render")
    return result


async def face_vectors(ctx: Context, manifest: Manifest, face_ids: list[str]) -> dict[str, np.ndarray]:
    """The stored vectors of indexed faces, from the shards that hold them (absent: no such face)."""
    return await ctx.shards(manifest.name).vectors(manifest, face_ids)


async def search_face(
    ctx: Context, caller: Caller, collection: str, face_id: str, request: SearchRequest
) -> FaceIdAnswer:
    """More like an indexed face: its stored vector searched like a probe's; the face itself is not a match."""
    fields = request.audit_fields(hashlib.sha256(face_id.encode()).hexdigest())
    async with audited(ctx, caller, "search-face", collection, **fields, face_id=clipped(face_id, 64)) as entry:
        manifest, limits = await prepare(ctx, caller, collection, request, entry)
        found = await face_vectors(ctx, manifest, [face_id])
        if face_id not in found:
            raise FaceNotFound(f"face {clipped(face_id, 64)!r} is not in collection {collection!r}")
        matches, missing = await search_vectors(
            ctx, manifest, found[face_id][None], request.max_results + 1, limits["applied"], request.knobs
        )
        others = [m for m in matches[0] if m.face_id != face_id][: request.max_results]
        answer = render.answer(manifest, limits, others, missing, request.purpose, request.case_id)
        result = FaceIdAnswer(**dict(answer), searched_face_id=face_id)
        _record_results(entry, result, [others])
    return result
