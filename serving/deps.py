"""Dependencies shared by the routes: the service object, and reading an uploaded image within the size limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, UploadFile

from cluster.pipeline.errors import ImageError, Reason
from serving.service import FaceService


def get_service(request: Request) -> FaceService:
    service: FaceService = request.app.state.service
    return service


Service = Annotated[FaceService, Depends(get_service)]


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {limit} bytes")
    return data
