"""Index jobs: a source into a collection (created with the request's model and shard count if it is new)."""

from __future__ import annotations

from typing import Any

from cluster.access import Action, Caller, authorize
from cluster.embedder import IndexRequest
from cluster.errors import CollectionNotFound, IndexIncomplete
from cluster.indexing import Progress, run_index_job
from cluster.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.raycluster import ensure_ray
from serving.usecases import collections
from serving.usecases.audited import audited
from serving.usecases.context import Context

SUMMARY_FIELDS = ("job_id", "images", "faces", "errors", "unread_objects", "version")


async def index(
    ctx: Context,
    caller: Caller,
    request: IndexRequest,
    on_plan: Any = None,
    on_partition: Progress | None = None,
) -> dict[str, Any]:
    """Run the index job here (its partitions on the Ray cluster) and publish; audited however it ends."""
    async with audited(ctx, caller, "index", request.collection, source=request.source) as entry:
        authorize(caller, Action.COLLECTIONS_WRITE, request.collection)
        try:
            ctx.collections.get(request.collection)
        except CollectionNotFound:
            await collections.create(
                ctx, caller, request.collection, request.shards, DEFAULT_MAX_FALSE_MATCH_RATE, model=request.model
            )
        ensure_ray()  # from this thread: Ray sets its signal handlers only when joined from the main thread
        # Minutes of work driving actors: on a thread of its own, not the service's pool.
        summary = await ctx.in_own_thread(run_index_job, ctx.settings, request, on_plan, on_partition)
        entry.update({k: summary[k] for k in SUMMARY_FIELDS})
        if summary["unread_objects"]:
            raise IndexIncomplete(
                f"{summary['unread_objects']} of {summary['images']} objects could not be read from {request.source}"
                f"; the {summary['faces']} faces read are published. Run the same command again when the source"
                f" answers (`facegrid index {request.collection} {request.source}`): it reads only what is missing",
                summary=summary,
            )
    return summary
