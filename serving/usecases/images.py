"""Uploaded photos that need no collection: probes, compare two faces, detect faces."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np

from cluster.errors import InvalidRequest, NoFaceInProbe
from cluster.keys.access import Action, Caller, authorize
from cluster.models.faces import ImageFaces
from cluster.models.recipes import Recipe, plain_recipe
from cluster.models.registry import DEFAULT_EMBEDDER
from cluster.pipeline.errors import ImageError, Reason
from cluster.pipeline.quality import QualityFilter
from serving import render
from serving.pools import BoundedPool
from serving.render import LEADS_NOTICE
from serving.schemas import CompareAnswer, ComparedFace, DetectAnswer, Threshold
from serving.usecases.audited import audited
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest, check_purpose


async def probe_faces(
    ctx: Context,
    blob: bytes,
    max_faces: int | None,
    recipe: Recipe | None = None,
    quality_filter: QualityFilter = QualityFilter.NONE,
    pool: BoundedPool | None = None,
    embed: bool = True,
) -> ImageFaces:
    """The faces of an uploaded photo through a recipe's pipeline (a collection's; default: the default model's
    plain recipe) on `pool`, else the probe pool, which may answer Busy; a photo that cannot be read raises."""
    if len(blob) > ctx.settings.serving.max_upload_bytes:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {ctx.settings.serving.max_upload_bytes} bytes")
    pipeline = ctx.models.pipeline(recipe or DEFAULT_EMBEDDER)
    result = (await (pool or ctx.probes).run(pipeline, [blob], max_faces, quality_filter, embed))[0]
    if isinstance(result, ImageError):
        raise result
    return result


def pick(probe: ImageFaces, index: int) -> ImageFaces:
    """The probe with only its face number `index` (0: the largest) to search; the others listed as skipped."""
    if not 0 <= index < len(probe.faces):
        raise InvalidRequest(f"face_index {index}: the probe has {len(probe.faces)} usable faces")
    chosen = probe.faces[index]
    others = [f for f in probe.faces if f is not chosen]
    return ImageFaces(width=probe.width, height=probe.height, faces=[chosen], skipped=[*others, *probe.skipped])


MAX_COMPARED_FACES = 100


async def compare(
    ctx: Context,
    caller: Caller,
    a: bytes,
    b: bytes,
    *,
    purpose: str | None,
    case_id: str | None,
    model: str | None = None,
    threshold: float | None = None,
) -> CompareAnswer:
    """The largest face of the source photo against every face of the target (up to 100): each with its
    similarity and false match rate, matched or not at the floor (the default one, 1e-5, on the model's
    calibration) or a stricter threshold."""
    model_id = model or DEFAULT_EMBEDDER
    probe = hashlib.sha256(a).hexdigest() + ":" + hashlib.sha256(b).hexdigest()
    request = SearchRequest(purpose=purpose, case_id=case_id, threshold=threshold)
    fields = request.audit_fields(probe)
    async with audited(ctx, caller, "compare", None, **fields, model_id=model_id) as entry:
        authorize(caller, Action.SEARCH)
        check_purpose(ctx, purpose, case_id)
        request.check(ctx.settings.serving.max_results)
        limits = ctx.models.applied_threshold(model_id, threshold)
        plain = plain_recipe(model_id)
        first, second = await asyncio.gather(
            probe_faces(ctx, a, 1, plain), probe_faces(ctx, b, MAX_COMPARED_FACES, plain)
        )
        if not first.faces or not second.faces:
            raise NoFaceInProbe("no face was found in " + ("the first" if not first.faces else "the second") + " image")
        source = first.faces[0]
        assert source.embedding is not None
        targets = np.stack([f.embedding for f in second.faces if f.embedding is not None])
        similarities = np.round(targets @ source.embedding, 6)
        rates, bounds = ctx.models.false_match_rates(model_id, similarities)
        compared = sorted(
            (
                ComparedFace(
                    face=render.face_detail(face),
                    similarity=float(sim),
                    estimated_false_match_rate=float(rate),
                    false_match_rate_is_bound=bool(bound),
                    matched=bool(sim >= limits["applied"]),
                )
                for face, sim, rate, bound in zip(second.faces, similarities, rates, bounds, strict=True)
            ),
            key=lambda c: -c.similarity,
        )
        best = compared[0]
        entry.update(
            similarity=best.similarity,
            threshold_applied=limits["applied"],
            results=[{"face": i, "similarity": c.similarity, "matched": c.matched} for i, c in enumerate(compared)],
        )
        return CompareAnswer(
            model_id=model_id,
            similarity=best.similarity,
            estimated_false_match_rate=best.estimated_false_match_rate,
            false_match_rate_is_bound=best.false_match_rate_is_bound,
            threshold=Threshold(**limits),
            source_face=render.face_detail(source),
            face_matches=[c for c in compared if c.matched],
            unmatched_faces=[c for c in compared if not c.matched],
            uncompared_faces=[render.face_detail(f) for f in second.skipped],
            purpose=purpose,
            case_id=case_id,
            notice=LEADS_NOTICE,
        )


async def detect(ctx: Context, caller: Caller, blob: bytes) -> DetectAnswer:
    authorize(caller, Action.DETECT)
    result = await probe_faces(ctx, blob, None, embed=False)  # detection: no vectors wanted
    return DetectAnswer(width=result.width, height=result.height, faces=[render.face_detail(f) for f in result.faces])
