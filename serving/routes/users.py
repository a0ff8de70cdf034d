"""People in a collection (Rekognition's users), and searching a collection by one of its faces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from serving.deps import CallerDep, Ctx, errors, json_response, read_upload, search_request
from serving.rules import MAX_PAGE
from serving.schemas_people import (
    AssociationChange,
    CreateUser,
    FaceIdAnswer,
    FaceIds,
    FaceSearch,
    UserDeleted,
    UserInfo,
    UserPage,
    UserSearchAnswer,
)
from serving.usecases import people, search
from serving.usecases.policy import SearchRequest

router = APIRouter(prefix="/v1/collections/{collection}", tags=["people"])


@router.post("/faces/{face_id}/search", response_model=FaceIdAnswer, responses=errors(404, 409))
async def search_by_face(collection: str, face_id: str, body: FaceSearch, ctx: Ctx, caller: CallerDep) -> Response:
    """Rekognition's SearchFaces: faces like an indexed one (the face itself left out), audited as any search."""
    request = search_request(body)
    return json_response(await search.search_face(ctx, caller, collection, face_id, request))


@router.post("/users", status_code=201, responses=errors(404, 409))
async def create_user(collection: str, body: CreateUser, ctx: Ctx, caller: CallerDep) -> UserInfo:
    return await people.create(ctx, caller, collection, body.user_id)


@router.get("/users", responses=errors(404))
async def list_users(
    collection: str,
    ctx: Ctx,
    caller: CallerDep,
    limit: Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": MAX_PAGE})] = 100,
    offset: Annotated[int, Query(json_schema_extra={"minimum": 0})] = 0,
) -> UserPage:
    return await people.page(ctx, caller, collection, limit, offset)


@router.delete("/users/{user_id}", responses=errors(404, 409))
async def delete_user(
    collection: str,
    user_id: str,
    ctx: Ctx,
    caller: CallerDep,
    erase_faces: Annotated[bool, Query(description="Also erase the user's faces (real erasure)")] = False,
) -> UserDeleted:
    return await people.delete(ctx, caller, collection, user_id, erase_faces)


@router.post("/users/{user_id}/faces", responses=errors(404))
async def associate(collection: str, user_id: str, body: FaceIds, ctx: Ctx, caller: CallerDep) -> AssociationChange:
    """Associate up to 100 faces; a face belongs to at most one user (the others are listed as unsuccessful)."""
    return await people.associate(ctx, caller, collection, user_id, body.face_ids)


@router.delete("/users/{user_id}/faces", responses=errors(404))
async def disassociate(collection: str, user_id: str, body: FaceIds, ctx: Ctx, caller: CallerDep) -> AssociationChange:
    return await people.disassociate(ctx, caller, collection, user_id, body.face_ids)


@router.post("/users/search", response_model=UserSearchAnswer, responses=errors(404, 409, 413))
async def search_users(
    collection: str,
    ctx: Ctx,
    caller: CallerDep,
    face_id: Annotated[str | None, Form()] = None,
    user_id: Annotated[str | None, Form()] = None,
    image: Annotated[UploadFile | None, File(description="A probe photo (its largest face)")] = None,
    purpose: Annotated[str | None, Form()] = None,
    case_id: Annotated[str | None, Form()] = None,
    threshold: Annotated[float | None, Form(description="Minimum similarity; never below the floor")] = None,
    max_users: Annotated[int, Form()] = 10,
) -> Response:
    """Rekognition's SearchUsers and SearchUsersByImage: one of `face_id`, `user_id` or `image` (multipart form)."""
    blob = await read_upload(image, ctx.settings.serving.max_upload_bytes) if image is not None else None
    request = SearchRequest(purpose, case_id, threshold)
    answer = await people.search(
        ctx, caller, collection, request, face_id=face_id, user_id=user_id, image=blob, max_users=max_users
    )
    return json_response(answer)
