"""Collections: create, list, describe, rebuild, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cluster.collection import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.index_spec import AUTO
from serving.deps import CallerDep, Service

router = APIRouter(prefix="/v1/collections", tags=["collections"])


class CreateCollection(BaseModel):
    name: str
    shards: int = Field(4, ge=1, le=1024)
    max_false_match_rate: float = Field(DEFAULT_MAX_FALSE_MATCH_RATE, gt=0, lt=1)
    index_spec: str = AUTO
    model: str | None = Field(None, description="Embedding model: sface-2021dec (default) or dlib-resnet-v1")


@router.post("", status_code=201)
async def create(body: CreateCollection, service: Service, caller: CallerDep) -> dict[str, Any]:
    manifest = await service.create_collection(
        caller, body.name, body.shards, body.max_false_match_rate, body.index_spec, body.model
    )
    return manifest.model_dump(exclude={"face_files", "error_files"})


class RebuildCollection(BaseModel):
    shards: int | None = Field(None, ge=1, le=1024)
    index_spec: str | None = None
    retrain: bool = False


@router.post("/{collection}/rebuild")
async def rebuild(collection: str, body: RebuildCollection, service: Service, caller: CallerDep) -> dict[str, Any]:
    """Rebuild, retrain or reshard; searches are answered throughout, and the new snapshots swap in atomically."""
    return await service.rebuild_collection(caller, collection, body.shards, body.index_spec, body.retrain)


@router.get("")
def list_all(service: Service, caller: CallerDep) -> dict[str, Any]:
    return {"collections": service.list_collections(caller)}


@router.get("/{collection}")
def describe(collection: str, service: Service, caller: CallerDep) -> dict[str, Any]:
    return service.describe_collection(caller, collection)


@router.delete("/{collection}")
async def delete(collection: str, service: Service, caller: CallerDep) -> dict[str, Any]:
    return {"collection": collection, "deleted_objects": await service.delete_collection(caller, collection)}
