"""Faces of a collection: search by probe or vector, list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from cluster.index_spec import SearchKnobs
from serving.deps import CallerDep, Ctx, errors, json_response, read_upload
from serving.schemas import DeleteFaces, FacePage, FacesDeleted, SearchAnswer, VectorAnswer, VectorSearch
from serving.usecases import faces, search
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
) -> Response:
    blob = await read_upload(image, ctx.settings.serving.max_upload_bytes)
    knobs = SearchKnobs(nprobe, ef_search)
    request = SearchRequest(purpose, case_id, threshold, max_results, max_faces, knobs)
    return json_response(await search.search(ctx, caller, collection, blob, request))


@router.post("/search-vector", response_model=VectorAnswer, responses=errors(404, 409))
async def search_by_vector(collection: str, body: VectorSearch, ctx: Ctx, caller: CallerDep) -> Response:
    knobs = SearchKnobs(body.nprobe, body.ef_search)
    request = SearchRequest(body.purpose, body.case_id, body.threshold, body.max_results, knobs=knobs)
    return json_response(await search.search_vector(ctx, caller, collection, body.vector, request, body.model_id))


@router.get("/faces", responses=errors(404))
def list_faces(
    collection: str,
    ctx: Ctx,
    caller: CallerDep,
    limit: Annotated[int, Query()] = 100,
    offset: Annotated[int, Query()] = 0,
) -> FacePage:
    return faces.page(ctx, caller, collection, limit, offset)


@router.delete("/faces", responses=errors(404, 409))
async def delete_faces(collection: str, body: DeleteFaces, ctx: Ctx, caller: CallerDep) -> FacesDeleted:
    return await faces.erase(ctx, caller, collection, body.face_ids, body.external_image_ids)
