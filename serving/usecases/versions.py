"""A collection's model upgrade, as admins drive it: build the shadow version (another recipe, same faces), compare
it with the live one, switch, roll back. Every act audited however it ends."""

from __future__ import annotations

from typing import Any

from cluster.collections.compare import compare_versions
from cluster.collections.cutover import rollback, switch
from cluster.collections.manifest import Manifest
from cluster.collections.publish import Publisher
from cluster.collections.versions import DEFAULT_KEEP_PREVIOUS_S, Shadow, Versions
from cluster.errors import InvalidRequest, NoShadowVersion, SameRecipe
from cluster.indexing.upgrade import UpgradeRequest, run_upgrade_job, upgrade_id
from cluster.keys.access import Action, Caller, authorize
from cluster.models.calibration import Rates
from cluster.models.recipes import RECIPES, Recipe, recipe, resolve
from cluster.pipeline.quality import QualityFilter
from cluster.raycluster import ensure_ray
from serving.usecases.audited import audited
from serving.usecases.collections import info, pinned_by
from serving.usecases.context import Context
from serving.usecases.images import probe_faces

# Faces of the collection a comparison searches with when not told.
DEFAULT_SAMPLE = 200
MAX_SAMPLE = 5000


def target_recipe(model: str | None, detector: str | None, recipe_name: str | None) -> Recipe:
    """The recipe an upgrade goes to: named, or the plain one of a model, or the first of this build's recipes with
    the model and detector asked for, or (nothing named) the default recipe."""
    if recipe_name is not None or detector is None:
        chosen = resolve(recipe_name, model)  # neither named: the default recipe
        if detector is not None and chosen.detector != detector:
            raise InvalidRequest(f"recipe {chosen.name} detects with {chosen.detector}, not {detector}")
        return chosen
    found = [r for r in RECIPES.values() if r.detector == detector and model in (None, r.model_id)]
    if not found:
        detectors = sorted({r.detector for r in RECIPES.values()})
        raise InvalidRequest(f"no recipe detects with {detector!r} and embeds with {model!r}; detectors: {detectors}")
    return found[0]


async def upgrade(ctx: Context, caller: Caller, request: UpgradeRequest, on_part: Any = None) -> dict[str, Any]:
    """Build (or go on building) the shadow version of the collection with another recipe; the live version
    serves throughout. Resumable: the same request again embeds only the photos not yet settled."""
    name = request.collection
    fields = request.model_dump(include={"model", "detector", "recipe", "missing"})
    async with audited(ctx, caller, "upgrade-collection", name, **fields) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        current = await ctx.read_manifest(name, fresh=True)
        chosen = target_recipe(request.model, request.detector, request.recipe)
        if chosen.name == current.face_recipe.name:
            raise SameRecipe(f"collection {name!r} already uses recipe {chosen.name}: name another to upgrade to")
        pinned = await ctx.in_thread(pinned_by, ctx, chosen)
        floor = Rates(pinned["calibration"]).floor(current.max_false_match_rate)  # refuses a floor it cannot hold
        wanted = Shadow(
            collection=name,
            upgrade_id=upgrade_id(name, chosen.name, current.version),
            recipe=chosen.name,
            target=pinned,
            from_version=current.version,
            missing=request.missing,
            by=caller.key_id,
        )
        versions = Versions(ctx.store, name)
        shadow = await ctx.in_thread(versions.begin, wanted)
        await ctx.in_thread(versions.prune, current)
        ensure_ray()  # from this thread: Ray sets its signal handlers only when joined from the main thread
        size = request.partition_size
        summary = await ctx.in_own_thread(run_upgrade_job, ctx.settings, shadow, size, on_part)
        summary["floor_similarity"] = round(floor, 6)
        entry.update({k: summary[k] for k in ("upgrade_id", "recipe", "faces", "kept", "ready")})
        entry.update({k: summary[f"{k}_count"] for k in ("found", "lost", "gone", "unsettled")})
    return summary


async def compare(
    ctx: Context,
    caller: Caller,
    name: str,
    sample: int = DEFAULT_SAMPLE,
    probes: list[tuple[str, bytes]] | None = None,
    mates_by_folder: bool = False,
) -> dict[str, Any]:
    """Search a sample of the collection's own faces (and any probe photos) against both versions: overlap of the
    top 10, faces gained and lost above each version's floor, and the floors."""
    async with audited(ctx, caller, "compare-versions", name, sample=sample, probes=len(probes or [])) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        if not 1 <= sample <= MAX_SAMPLE:
            raise InvalidRequest(f"sample must be between 1 and {MAX_SAMPLE}")
        manifest = await ctx.read_manifest(name, fresh=True)
        shadow = await ctx.in_thread(Versions(ctx.store, name).shadow)
        if shadow is None or shadow.summary is None:
            raise NoShadowVersion(f"collection {name!r} has no upgraded version: run `facegrid collections upgrade`")
        embedded = []
        for label, blob in probes or []:
            live = await probe_faces(ctx, blob, 1, manifest.face_recipe, QualityFilter.NONE, ctx.ingests)
            new = await probe_faces(ctx, blob, 1, recipe(shadow.recipe), QualityFilter.NONE, ctx.ingests)
            if live.faces and new.faces:
                embedded.append((label, live.faces[0].embedding, new.faces[0].embedding))
        floors = (
            ctx.models.floor_similarity(manifest),
            Rates(shadow.target["calibration"]).floor(manifest.max_false_match_rate),
        )
        report = await ctx.in_own_thread(
            compare_versions, ctx.store, manifest, shadow, sample, embedded, floors, mates_by_folder
        )
        entry.update({k: report["total"][k] for k in ("probes", "mean_top10_overlap", "gained", "lost")})
    return report


async def cut_over(ctx: Context, caller: Caller, name: str, keep_days: float | None = None) -> dict[str, Any]:
    """Switch the collection to its upgraded version; the version replaced is kept `keep_days` for a rollback."""
    return await _switch(ctx, caller, name, "switch-version", switch, keep_days)


async def roll_back(
    ctx: Context, caller: Caller, name: str, keep_days: float | None = None, drop_added: bool = False
) -> dict[str, Any]:
    """Switch the collection back to the version the last cut-over replaced (kept in turn for a switch back)."""

    def back(p: Publisher, name: str, keep_s: float, by: str | None) -> tuple[Manifest, Manifest]:
        return rollback(p, name, keep_s, by, drop_added)

    return await _switch(ctx, caller, name, "rollback-version", back, keep_days, drop_added=drop_added)


async def _switch(
    ctx: Context, caller: Caller, name: str, action: str, how: Any, keep_days: float | None, **fields: Any
) -> Any:
    async with audited(ctx, caller, action, name, keep_days=keep_days, **fields) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, name)
        if keep_days is not None and not 0 <= keep_days <= 3650:
            raise InvalidRequest("keep_days must be between 0 and 3650")
        keep_s = DEFAULT_KEEP_PREVIOUS_S if keep_days is None else keep_days * 86400
        by = caller.key_id
        old, new = await ctx.publish_task(lambda p: how(p, name, keep_s, by))
        await ctx.shards(name).sync(old, new, ready=ctx.remember)
        entry.update(version=new.version, recipe=new.face_recipe.name, previous_recipe=old.face_recipe.name)
    return {"collection": info(new).model_dump(exclude={"shards"}), "previous_recipe": old.face_recipe.name}
