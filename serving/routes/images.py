"""Operations on uploaded images that need no collection: compare two faces, detect faces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from cluster.models.registry import EMBEDDERS
from serving.deps import CallerDep, Ctx, errors, read_upload
from serving.schemas import CompareAnswer, DetectAnswer
from serving.usecases import images

router = APIRouter(prefix="/v1", tags=["images"])


@router.post("/compare", responses=errors(413))
async def compare(
    ctx: Ctx,
    caller: CallerDep,
    source: Annotated[UploadFile, File()],
    target: Annotated[UploadFile, File()],
    purpose: Annotated[str | None, Form()] = None,
    case_id: Annotated[str | None, Form()] = None,
    model: Annotated[
        str | None, Form(description="Embedding model (default sface-2021dec)", json_schema_extra={"enum": EMBEDDERS})
    ] = None,
) -> CompareAnswer:
    limit = ctx.settings.serving.max_upload_bytes
    a, b = await read_upload(source, limit), await read_upload(target, limit)
    return await images.compare(ctx, caller, a, b, purpose=purpose, case_id=case_id, model=model)


@router.post("/detect", responses=errors(413))
async def detect(ctx: Ctx, caller: CallerDep, image: Annotated[UploadFile, File()]) -> DetectAnswer:
    return await images.detect(ctx, caller, await read_upload(image, ctx.settings.serving.max_upload_bytes))
