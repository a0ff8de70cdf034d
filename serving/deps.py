"""Dependencies shared by the routes: the service, the authenticated caller, and reading an upload within limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from cluster.access import Caller, Role
from cluster.pipeline.errors import ImageError, Reason
from serving.service import FaceService


def get_service(request: Request) -> FaceService:
    service: FaceService = request.app.state.service
    return service


Service = Annotated[FaceService, Depends(get_service)]


async def get_caller(
    request: Request,
    service: Service,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Caller:
    client = request.client.host if request.client else ""
    if not service.accountable:
        return Caller(key_id="accountability-off", role=Role.ADMIN, client=client)
    token = x_api_key
    if token is None and authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    if service.keys.fresh():
        return service.keys.authenticate(token).caller(client)  # no I/O: the keys were read under a second ago
    key = await run_in_threadpool(service.keys.authenticate, token)
    return key.caller(client)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"upload over {limit} bytes")
    return data
