"""Collections: create, list, describe, rebuild (or reshard), delete."""

from __future__ import annotations

from cluster.access import Action, Caller, authorize
from cluster.index_spec import AUTO
from cluster.manifest import Manifest
from cluster.models.registry import DEFAULT_EMBEDDER
from serving.schemas import CollectionDescription, CollectionInfo
from serving.usecases.audited import audited
from serving.usecases.context import Context


def info(manifest: Manifest) -> CollectionInfo:
    return CollectionInfo.model_validate(manifest.public())


async def create(
    ctx: Context,
    caller: Caller,
    name: str,
    shards: int,
    max_false_match_rate: float,
    index: str = AUTO,
    model: str | None = None,
) -> CollectionInfo:
    model_id = model or DEFAULT_EMBEDDER
    fields = {"max_false_match_rate": max_false_match_rate, "model_id": model_id, "shards": shards, "index_spec": index}
    async with audited(ctx, caller, "create-collection", name, **fields):
        authorize(caller, Action.COLLECTIONS_WRITE)
        pinned = ctx.registry.pin(model_id)
        ctx.models.floor_similarity(model_id, max_false_match_rate)  # refuses rates the calibration cannot support
        manifest = Manifest(
            name=name, **pinned, shard_count=shards, max_false_match_rate=max_false_match_rate, index_spec=index
        )
        return info(ctx.collections.create(manifest))


def names(ctx: Context, caller: Caller) -> list[str]:
    authorize(caller, Action.COLLECTIONS_READ)
    return [n for n in ctx.collections.names() if caller.may(Action.COLLECTIONS_READ, n)]


def describe(ctx: Context, caller: Caller, name: str) -> CollectionDescription:
    authorize(caller, Action.COLLECTIONS_READ, name)
    manifest = ctx.manifest(name, fresh=True)
    floor = ctx.models.floor_similarity(manifest.model_id, manifest.max_false_match_rate)
    reasons = ctx.collections.errors(manifest).column("reason").to_pylist()
    return CollectionDescription.model_validate(
        {
            **manifest.public(),
            "threshold_floor_similarity": round(floor, 6),
            "errors_by_reason": {r: reasons.count(r) for r in sorted(set(reasons))},
        }
    )


async def rebuild(
    ctx: Context, caller: Caller, name: str, shards: int | None = None, index: str | None = None, retrain: bool = False
) -> CollectionInfo:
    """Rebuild the snapshots (another index spec, fresh training) or reshard, while searches go on (see
    ShardSet.sync for how the new snapshots or the new shard set take over)."""
    async with audited(ctx, caller, "rebuild-collection", name, shards=shards, index_spec=index) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        old = ctx.manifest(name, fresh=True)
        new = await ctx.publish_task(lambda p: p.rebuild(old, shards, index, retrain))
        await ctx.shards(name).sync(old, new, ready=ctx.remember)
        entry.update(version=new.version, built_spec=new.built_spec, faces=new.face_count)
    return info(new)


async def delete(ctx: Context, caller: Caller, name: str) -> int:
    async with audited(ctx, caller, "delete-collection", name) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        entry["deleted_faces"] = ctx.collections.get(name).face_count
        removed = ctx.collections.delete(name)
    ctx.forget(name)
    await ctx.shards(name).drop()
    return removed
