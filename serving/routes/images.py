"""Operations on uploaded images that need no collection: compare two faces, detect faces."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from serving.deps import CallerDep, Service, read_upload

router = APIRouter(prefix="/v1", tags=["images"])


@router.post("/compare")
async def compare(
    service: Service,
    caller: CallerDep,
    source: Annotated[UploadFile, File()],
    target: Annotated[UploadFile, File()],
    purpose: Annotated[str | None, Form()] = None,
    case_id: Annotated[str | None, Form()] = None,
    model: Annotated[str | None, Form(description="Embedding model (default sface-2021dec)")] = None,
) -> dict[str, Any]:
    limit = service.settings.serving.max_upload_bytes
    a, b = await read_upload(source, limit), await read_upload(target, limit)
    return await service.compare(caller, a, b, purpose=purpose, case_id=case_id, model=model)


@router.post("/detect")
async def detect(service: Service, caller: CallerDep, image: Annotated[UploadFile, File()]) -> dict[str, Any]:
    return await service.detect(caller, await read_upload(image, service.settings.serving.max_upload_bytes))
