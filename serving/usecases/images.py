"""Uploaded photos that need no collection: probes, compare two faces, detect faces."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor

from cluster.access import Action, Caller, authorize
from cluster.errors import NoFaceInProbe
from cluster.models.registry import DEFAULT_EMBEDDER
from cluster.pipeline.errors import ImageError, Reason
from cluster.pipeline.faces import ImageFaces
from cluster.pipeline.quality import QualityFilter
from serving import render
from serving.render import LEADS_NOTICE
from serving.schemas import CompareAnswer, DetectAnswer
from serving.usecases.audited import audited
from serving.usecases.context import Context
from serving.usecases.policy import SearchRequest, check_purpose


async def probe_faces(
    ctx: Context,
    blob: bytes,
    max_faces: int | None,
    model_id: str = DEFAULT_EMBEDDER,
    quality_filter: QualityFilter = QualityFilter.NONE,
    executor: Executor | None = None,
) -> ImageFaces:
    """The faces of an uploaded photo through the model's pipeline (on `executor`, else the service's threads);
    a photo that cannot be read raises."""
    if len(blob) > ctx.settings.serving.max_upload_bytes:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {ctx.settings.serving.max_upload_bytes} bytes")
    pipeline = ctx.models.pipeline(model_id)
    loop = asyncio.get_running_loop()
    result = (await loop.run_in_executor(executor or ctx.executor, pipeline, [blob], max_faces, quality_filter))[0]
    if isinstance(result, ImageError):
        raise result
    return result


async def compare(
    ctx: Context,
    caller: Caller,
    a: bytes,
    b: bytes,
    *,
    purpose: str | None,
    case_id: str | None,
    model: str | None = None,
) -> CompareAnswer:
    model_id = model or DEFAULT_EMBEDDER
    probe = hashlib.sha256(a).hexdigest() + ":" + hashlib.sha256(b).hexdigest()
    fields = SearchRequest(purpose=purpose, case_id=case_id).audit_fields(probe)
    async with audited(ctx, caller, "compare", None, **fields, model_id=model_id) as entry:
        authorize(caller, Action.SEARCH)
        check_purpose(ctx, purpose, case_id)
        first, second = await asyncio.gather(probe_faces(ctx, a, 1, model_id), probe_faces(ctx, b, 1, model_id))
        if not first.faces or not second.faces:
            raise NoFaceInProbe("no face was found in " + ("the first" if not first.faces else "the second") + " image")
        fa, fb = first.faces[0], second.faces[0]
        assert fa.embedding is not None and fb.embedding is not None
        similarity = round(float(fa.embedding @ fb.embedding), 6)
        entry["similarity"] = similarity
        return CompareAnswer(
            model_id=model_id,
            similarity=similarity,
            estimated_false_match_rate=float(ctx.models.false_match_rates(model_id, similarity)),
            source_face=render.face_detail(fa),
            target_face=render.face_detail(fb),
            purpose=purpose,
            case_id=case_id,
            notice=LEADS_NOTICE,
        )


async def detect(ctx: Context, caller: Caller, blob: bytes) -> DetectAnswer:
    authorize(caller, Action.DETECT)
    if len(blob) > ctx.settings.serving.max_upload_bytes:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {ctx.settings.serving.max_upload_bytes} bytes")
    result = (await ctx.in_thread(ctx.models.pipeline(), [blob], None, QualityFilter.NONE))[0]
    if isinstance(result, ImageError):
        raise result
    return DetectAnswer(width=result.width, height=result.height, faces=[render.face_detail(f) for f in result.faces])
