"""Faces of a collection: search by probe or vector, list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from cluster.collections.index_spec import SearchKnobs
from cluster.errors import InvalidRequest
from cluster.pipeline.quality import QualityFilter
from serving.deps import CallerDep, Ctx, errors, json_response, read_upload, search_request
from serving.rules import MAX_PAGE
from serving.schemas import (
    AddFaces,
    AddFacesFromObject,
    AddFacesUpload,
    DeleteFaces,
    FacePage,
    FacesDeleted,
    IndexFacesAnswer,
    Readmit,
    Readmitted,
    SearchAnswer,
    VectorAnswer,
    VectorSearch,
)
from serving.usecases import faces, ingest, search
from serving.usecases.policy import SearchRequest

router = APIRouter(prefix="/v1/collections/{collection}", tags=["faces"])


@router.post("/search", response_model=SearchAnswer, responses=errors(404, 409, 413))
async def search_by_image(
    collection: str,
    ctx: Ctx,
    caller: CallerDep,
    image: Annotated[UploadFile, File(description="The probe photo")],
    purpose: Annotated[str | None, Form()] = None,
    case_id: Annotated[str | None, Form()] = None,
    threshold: Annotated[float | None, Form(description="Minimum similarity; never below the floor")] = None,
    max_results: Annotated[int, Form()] = 10,
    max_faces: Annotated[int, Form(description="1: the largest face; N: up to N faces of the probe")] = 1,
    nprobe: Annotated[int | None, Form(description="IVF lists to visit (IVF collections)")] = None,
    ef_search: Annotated[int | None, Form(description="HNSW search breadth (HNSW collections)")] = None,
    face_index: Annotated[int | None, Form(description="Search only this face (0: the largest), not max_faces")] = None,
) -> Response:
    blob = await read_upload(image, ctx.settings.serving.max_upload_bytes)
    knobs = SearchKnobs(nprobe, ef_search)
    request = SearchRequest(purpose, case_id, threshold, max_results, max_faces, knobs, face_index)
    return json_response(await search.search(ctx, caller, collection, blob, request))


@router.post("/search-vector", response_model=VectorAnswer, responses=errors(404, 409))
async def search_by_vector(collection: str, body: VectorSearch, ctx: Ctx, caller: CallerDep) -> Response:
    request = search_request(body)
    return json_response(await search.search_vector(ctx, caller, collection, body.vector, request, body.model_id))


ADD_FACES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": AddFacesUpload.model_json_schema()},
            "application/json": {"schema": AddFacesFromObject.model_json_schema()},
        },
    }
}


@router.post("/faces", responses=errors(404, 413), openapi_extra=ADD_FACES_BODY)
async def add_faces(collection: str, ctx: Ctx, caller: CallerDep, request: Request) -> IndexFacesAnswer:
    """Rekognition's IndexFaces: a multipart upload (`image`), or JSON naming an object of the server's ingest
    source (`object_key`). Durable before it answers, found by every server's searches within 2 s, the same photo
    under the same id giving the same face ids."""
    try:
        if request.headers.get("content-type", "").startswith("application/json"):
            asked: AddFaces = AddFacesFromObject.model_validate_json(await request.body())
            blob = None
        else:
            form = await request.form()
            upload = form.get("image")
            if not isinstance(upload, StarletteUpload):
                raise InvalidRequest("send the photo as the multipart field `image` (or JSON with object_key)")
            asked = AddFacesUpload.model_validate({k: v for k, v in form.items() if k != "image" and v != ""})
            blob = await read_upload(upload, ctx.settings.serving.max_upload_bytes)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    key = asked.object_key if isinstance(asked, AddFacesFromObject) else None
    return await ingest.add_faces(
        ctx,
        caller,
        collection,
        blob,
        asked.external_image_id,
        asked.max_faces,
        QualityFilter(asked.quality_filter),
        key,
    )


@router.post("/faces/readmit", responses=errors(404))
async def readmit(collection: str, body: Readmit, ctx: Ctx, caller: CallerDep) -> Readmitted:
    """Admins: lift erasures so that the next index run may bring those faces back."""
    return await ingest.readmit(ctx, caller, collection, body.face_ids, body.sources)


@router.get("/faces", responses=errors(404))
async def list_faces(
    collection: str,
    ctx: Ctx,
    caller: CallerDep,
    limit: Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": MAX_PAGE})] = 100,
    offset: Annotated[int, Query(json_schema_extra={"minimum": 0})] = 0,
) -> FacePage:
    return await faces.page(ctx, caller, collection, limit, offset)


@router.delete("/faces", responses=errors(404, 409))
async def delete_faces(collection: str, body: DeleteFaces, ctx: Ctx, caller: CallerDep) -> FacesDeleted:
    return await faces.erase(ctx, caller, collection, body.face_ids, body.external_image_ids)
