"""Collections: create, list, describe, rebuild, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from cluster.indexing.upgrade import UpgradeRequest
from serving.deps import CallerDep, Ctx, errors
from serving.schemas import (
    CollectionDeleted,
    CollectionDescription,
    CollectionInfo,
    CollectionList,
    CreateCollection,
    RebuildCollection,
    Replicas,
    UpgradeCollection,
    VersionSwitch,
)
from serving.schemas_admin import CALIBRATION, CalibrationChange, Promise, PromiseChange
from serving.usecases import collections, versions
from serving.usecases.versions import DEFAULT_SAMPLE, MAX_SAMPLE

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.post("", status_code=201, responses=errors(409))
async def create(body: CreateCollection, ctx: Ctx, caller: CallerDep) -> CollectionInfo:
    return await collections.create(
        ctx,
        caller,
        body.name,
        body.shards,
        body.max_false_match_rate,
        body.index_spec,
        body.model,
        body.replicas,
        body.max_false_candidates_per_search,
        body.recipe,
        body.keep_photos,
    )


@router.put("/{collection}/promise", responses=errors(404, 409))
async def set_promise(collection: str, body: Promise, ctx: Ctx, caller: CallerDep) -> PromiseChange:
    """Set the per-search promise: strangers expected above the threshold in one search, whatever the
    collection's size (the threshold tightens as it grows). Admin only; audited with the old and the new one."""
    return await collections.set_promise(ctx, caller, collection, body.max_false_candidates_per_search)


@router.put("/{collection}/replicas", responses=errors(404, 409))
async def set_replicas(collection: str, body: Replicas, ctx: Ctx, caller: CallerDep) -> CollectionInfo:
    """Run this many actors of every shard, on different nodes where the cluster has enough; a query asks one
    and fails over to another. The new replicas have loaded before this answers. Admin only; audited."""
    return await collections.set_replicas(ctx, caller, collection, body.replicas)


@router.post("/{collection}/rebuild", responses=errors(404, 409))
async def rebuild(collection: str, body: RebuildCollection, ctx: Ctx, caller: CallerDep) -> CollectionInfo:
    """Rebuild, retrain or reshard; searches are answered throughout, and the new snapshots swap in atomically."""
    return await collections.rebuild(ctx, caller, collection, body.shards, body.index_spec, body.retrain)


@router.put(
    "/{collection}/calibration",
    responses=errors(404, 409),
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": CALIBRATION}}}},
)
async def calibrate(collection: str, body: dict[str, Any], ctx: Ctx, caller: CallerDep) -> CalibrationChange:
    """Pin another calibration (a file `facegrid eval --save-calibration` wrote) to this collection: the only way
    its floor moves. Admin only; audited with the old and the new floor similarity."""
    return await collections.calibrate(ctx, caller, collection, body)


@router.get("", responses=errors())
def list_all(ctx: Ctx, caller: CallerDep) -> CollectionList:
    return CollectionList(collections=collections.names(ctx, caller))


@router.get("/{collection}", responses=errors(404))
async def describe(collection: str, ctx: Ctx, caller: CallerDep) -> CollectionDescription:
    return await collections.describe(ctx, caller, collection)


@router.delete("/{collection}", responses=errors(404))
async def delete(collection: str, ctx: Ctx, caller: CallerDep) -> CollectionDeleted:
    return CollectionDeleted(collection=collection, deleted_objects=await collections.delete(ctx, caller, collection))


@router.post("/{collection}/upgrade", responses=errors(404, 409))
async def upgrade(collection: str, body: UpgradeCollection, ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    """Embed every face again with another recipe into a shadow version (the live one serves throughout); face
    ids kept. Resumable: the same request again embeds only what is missing. Admin only; audited."""
    return await versions.upgrade(ctx, caller, UpgradeRequest(collection=collection, **body.model_dump()))


@router.get("/{collection}/versions/compare", responses=errors(404, 409))
async def compare_versions(
    collection: str,
    ctx: Ctx,
    caller: CallerDep,
    sample: Annotated[int, Query(ge=1, le=MAX_SAMPLE)] = DEFAULT_SAMPLE,
    mates_by_folder: bool = False,
) -> dict[str, Any]:
    """Search a sample of the collection's faces against the live and the upgraded version: top-10 overlap, faces
    gained and lost above each floor, the floors. Admin only; audited."""
    return await versions.compare(ctx, caller, collection, sample, None, mates_by_folder)


@router.post("/{collection}/switch", responses=errors(404, 409))
async def switch(collection: str, body: VersionSwitch, ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    """Cut over to the upgraded version atomically (every server within a manifest read); the version replaced is
    kept for a rollback. Admin only; audited."""
    return await versions.cut_over(ctx, caller, collection, body.keep_days)


@router.post("/{collection}/rollback", responses=errors(404, 409))
async def rollback(collection: str, body: VersionSwitch, ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    """Switch back to the version the last cut-over replaced. Admin only; audited."""
    return await versions.roll_back(ctx, caller, collection, body.keep_days, body.drop_added)
