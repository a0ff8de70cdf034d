"""Collections: create, list, describe, rebuild (or reshard), delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cluster.collections.index_spec import AUTO
from cluster.collections.live import live_face_count
from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES, Manifest, check_promise, check_replicas
from cluster.collections.publish import Publisher
from cluster.errors import InvalidRequest, PromiseNotSupported
from cluster.keys.access import Action, Caller, authorize
from cluster.models.calibration import Rates, calibration_sha256, check_calibration
from cluster.models.recipes import Recipe, resolve
from cluster.shards.host import auto_shard_count
from cluster.shards.set import cluster_nodes
from serving.schemas import CollectionDescription, CollectionInfo
from serving.schemas_admin import CalibrationChange, PromiseChange
from serving.usecases.audited import audited
from serving.usecases.context import Context


def info(manifest: Manifest) -> CollectionInfo:
    return CollectionInfo.model_validate(manifest.public())


def check_shards(ctx: Context, shards: int | None) -> None:
    most = ctx.settings.serving.max_shards
    if shards is not None and not 1 <= shards <= most:
        raise InvalidRequest(f"shards must be between 1 and {most} (FACEGRID_SERVING__MAX_SHARDS)")


async def shard_count(ctx: Context, shards: int | str, faces: int) -> int:
    """A shard count as asked; `auto`: a shard per node of the cluster, more where a node's share of `faces`
    passes AUTO_FACES_PER_SHARD (cluster/shards/host.py). Checked against the server's limit."""
    if shards == AUTO:
        shards = auto_shard_count(await ctx.in_thread(cluster_nodes), faces)
    elif isinstance(shards, str):
        raise InvalidRequest(f"shards must be a number or {AUTO!r}, not {shards!r}")
    check_shards(ctx, shards)
    return shards


async def create(
    ctx: Context,
    caller: Caller,
    name: str,
    shards: int | str,
    max_false_match_rate: float,
    index: str = AUTO,
    model: str | None = None,
    replicas: int | None = None,
    promise: float | None = DEFAULT_MAX_FALSE_CANDIDATES,
    recipe: str | None = None,
    keep_photos: bool = True,
) -> CollectionInfo:
    replicas = replicas or ctx.settings.serving.replicas
    fields = {"max_false_match_rate": max_false_match_rate, "model_id": model, "shards": shards, "index_spec": index}
    fields.update(max_false_candidates_per_search=promise, keep_photos=keep_photos)
    async with audited(ctx, caller, "create-collection", name, **fields, recipe=recipe, replicas=replicas) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE)
        chosen = resolve(recipe, model)
        entry.update(model_id=chosen.model_id, recipe=chosen.name)
        check_replicas(replicas)
        count = await shard_count(ctx, shards, 0)
        entry.update(shard_count=count)
        pinned = pinned_by(ctx, chosen)
        floor = Rates(pinned["calibration"]).floor(max_false_match_rate)  # refuses rates it cannot support
        manifest = Manifest(
            name=name,
            **pinned,
            shard_count=count,
            replicas=replicas,
            max_false_match_rate=max_false_match_rate,
            max_false_candidates_per_search=check_promise(promise),
            index_spec=index,
            keep_photos=keep_photos,
        )
        entry.update(calibration_sha256=manifest.calibration_sha256, floor_similarity=round(floor, 6))
        return info(await ctx.in_thread(ctx.collections.create, manifest))


def pinned_by(ctx: Context, chosen: Recipe) -> dict[str, Any]:
    """What a recipe pins in a manifest: its model files by sha256, the vectors' width, its calibration."""
    pinned: dict[str, Any] = {**ctx.registry.pin(chosen.model_id), "recipe": chosen.name, "fused_model_sha256": None}
    if chosen.fused_with is not None:  # the joined vector's width, and the second model's file pinned too
        pinned |= {"dim": chosen.dim, "fused_model_sha256": ctx.registry.pin(chosen.fused_with)["model_sha256"]}
    calibration = ctx.models.calibration(chosen)
    return pinned | {"calibration": calibration, "calibration_sha256": calibration_sha256(calibration)}


def names(ctx: Context, caller: Caller) -> list[str]:
    authorize(caller, Action.COLLECTIONS_READ)
    return [n for n in ctx.collections.names() if caller.may(Action.COLLECTIONS_READ, n)]


async def describe(ctx: Context, caller: Caller, name: str) -> CollectionDescription:
    """The manifest with its counts, floor and calibration: a read that is audited; its store reads off the loop."""
    async with audited(ctx, caller, "describe-collection", name):
        authorize(caller, Action.COLLECTIONS_READ, name)
        return await ctx.in_thread(_described, ctx, name)


def _described(ctx: Context, name: str) -> CollectionDescription:
    manifest = ctx.manifest(name, fresh=True)
    floor = ctx.models.floor_similarity(manifest)
    pinned = manifest.calibration is not None
    reasons = ctx.collections.errors(manifest).column("reason").to_pylist()
    return CollectionDescription.model_validate(
        {
            **manifest.public(),
            "user_count": len(ctx.people(name).state().users),
            "live_face_count": live_face_count(ctx.collections, manifest),
            "threshold_floor_similarity": round(floor, 6),
            "calibration": calibration_summary(ctx.models.rates(manifest).calibration, pinned=pinned),
            "errors_by_reason": {r: reasons.count(r) for r in sorted(set(reasons))},
        }
    )


async def rebuild(
    ctx: Context,
    caller: Caller,
    name: str,
    shards: int | str | None = None,
    index: str | None = None,
    retrain: bool = False,
) -> CollectionInfo:
    """Rebuild the snapshots (another index spec, fresh training) or reshard, while searches go on (see
    ShardSet.sync for how the new snapshots or the new shard set take over)."""
    async with audited(ctx, caller, "rebuild-collection", name, shards=shards, index_spec=index) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        check_shards(ctx, shards if isinstance(shards, int) else None)
        old = await ctx.read_manifest(name, fresh=True)
        count = None
        if shards is not None:
            live = await ctx.in_thread(live_face_count, ctx.collections, old) if shards == AUTO else 0
            count = await shard_count(ctx, shards, old.face_count + live)
        entry.update(shard_count=count)
        new = await ctx.publish_task(lambda p: p.rebuild(old, count, index, retrain))
        await ctx.shards(name).sync(old, new, ready=ctx.remember)
        entry.update(version=new.version, built_spec=new.built_spec, faces=new.face_count)
    return info(new)


async def set_replicas(ctx: Context, caller: Caller, name: str, replicas: int) -> CollectionInfo:
    """Keep this many copies of every shard, on different shard hosts (different nodes where there are enough):
    the new layout's hosts have loaded before this answers, the old layout's are stopped. No snapshot is rebuilt."""
    async with audited(ctx, caller, "set-replicas", name, replicas=replicas) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        check_replicas(replicas)
        old, new = await ctx.in_thread(lambda: Publisher(ctx.collections).amend(name, _replicas(replicas)))
        await ctx.shards(name).sync(old, new, ready=ctx.remember)
        entry.update(version=new.version, old_replicas=old.replicas)
    return info(new)


def _replicas(count: int) -> Callable[[Manifest], None]:
    def change(manifest: Manifest) -> None:
        manifest.replicas = count

    return change


async def calibrate(ctx: Context, caller: Caller, name: str, calibration: dict[str, Any]) -> CalibrationChange:
    """Pin another calibration to one collection: its floor similarity and every per-match rate follow it. The
    only way a floor moves; audited with the old and the new floor."""
    async with audited(ctx, caller, "calibrate-collection", name) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        current = await ctx.read_manifest(name, fresh=True)
        checked = check_calibration(calibration, current.model_id, current.face_recipe.name)
        sha256 = calibration_sha256(checked)
        new_floor = Rates(checked).floor(current.max_false_match_rate)  # refuses one too small for the floor
        old, new = await ctx.in_thread(lambda: Publisher(ctx.collections).recalibrate(name, checked, sha256))
        old_floor = ctx.models.floor_similarity(old)
        change = CalibrationChange(
            collection=name,
            version=new.version,
            max_false_match_rate=new.max_false_match_rate,
            old_floor_similarity=round(old_floor, 6),
            new_floor_similarity=round(new_floor, 6),
            old_calibration_sha256=old.calibration_sha256 or calibration_sha256(ctx.models.rates(old).calibration),
            new_calibration_sha256=sha256,
            dataset=checked.get("dataset"),
        )
        entry.update(change.model_dump(exclude={"collection"}))
    ctx.remember(new)
    return change


async def set_promise(ctx: Context, caller: Caller, name: str, promise: float) -> PromiseChange:
    """Set the per-search promise of one collection: the only way it moves. Audited with the old and the new one,
    and what the new one implies now (a promise too strict for the collection's size is set all the same: its
    searches are then refused, clearly, until it is loosened or the collection shrinks)."""
    async with audited(ctx, caller, "promise-collection", name, max_false_candidates_per_search=promise) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        check_promise(promise)
        old, new = await ctx.in_thread(lambda: Publisher(ctx.collections).amend(name, _promise(promise)))
        rates = ctx.models.rates(new)
        faces = await ctx.faces_searched(new)
        try:
            similarity: float | None = round(rates.search_threshold(promise, faces), 6)
        except PromiseNotSupported:
            similarity = None
        change = PromiseChange(
            collection=name,
            version=new.version,
            old_max_false_candidates_per_search=old.max_false_candidates_per_search,
            new_max_false_candidates_per_search=promise,
            faces_now=faces,
            similarity_now=similarity,
            largest_collection=int(promise / rates.finest_rate()),
        )
        entry.update(change.model_dump(exclude={"collection", "new_max_false_candidates_per_search"}))
    ctx.remember(new)
    return change


def _promise(promise: float) -> Callable[[Manifest], None]:
    def change(manifest: Manifest) -> None:
        manifest.max_false_candidates_per_search = promise

    return change


async def delete(ctx: Context, caller: Caller, name: str) -> int:
    async with audited(ctx, caller, "delete-collection", name) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        entry["deleted_faces"] = (await ctx.in_thread(ctx.collections.get, name)).face_count
        removed = await ctx.in_thread(ctx.collections.delete, name)
    ctx.forget(name)
    await ctx.shards(name).drop()
    return removed


def calibration_summary(calibration: dict[str, Any], *, pinned: bool) -> dict[str, Any]:
    """What describe shows of a calibration: where it comes from and what it measured, not its table."""
    return {
        "pinned": pinned,
        "sha256": calibration_sha256(calibration),
        "dataset": calibration.get("dataset"),
        "created_at": calibration.get("created_at"),
        "impostor_comparisons": calibration["impostor_comparisons"],
        "genuine_comparisons": calibration.get("genuine_comparisons"),
        "similarity_at_fmr": calibration.get("similarity_at_fmr"),
        "fnmr_at_fmr": calibration.get("fnmr_at_fmr"),
    }
