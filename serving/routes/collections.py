"""Collections: create, list, describe, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cluster.collection import DEFAULT_MAX_FALSE_MATCH_RATE
from serving.deps import Service

router = APIRouter(prefix="/v1/collections", tags=["collections"])


class CreateCollection(BaseModel):
    name: str
    shards: int = Field(4, ge=1, le=1024)
    max_false_match_rate: float = Field(DEFAULT_MAX_FALSE_MATCH_RATE, gt=0, lt=1)


@router.post("", status_code=201)
def create(body: CreateCollection, service: Service) -> dict[str, Any]:
    return service.create_collection(body.name, body.shards, body.max_false_match_rate).model_dump(
        exclude={"face_files", "error_files"}
    )


@router.get("")
def list_all(service: Service) -> dict[str, Any]:
    return {"collections": service.collections.names()}


@router.get("/{collection}")
def describe(collection: str, service: Service) -> dict[str, Any]:
    return service.describe_collection(collection)


@router.delete("/{collection}")
def delete(collection: str, service: Service) -> dict[str, Any]:
    return {"collection": collection, "deleted_objects": service.delete_collection(collection)}
