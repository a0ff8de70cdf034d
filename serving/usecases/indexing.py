"""Index jobs: a source into a collection (created with the request's model and shard count if it is new)."""

from __future__ import annotations

from typing import Any

from cluster.audit.log import read_records
from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.errors import CollectionNotFound, IndexIncomplete
from cluster.indexing.embedder import IndexRequest
from cluster.indexing.job import Progress, run_index_job
from cluster.keys.access import Action, Caller, authorize
from cluster.raycluster import ensure_ray
from serving.usecases import collections
from serving.usecases.audited import audited
from serving.usecases.context import Context

SUMMARY_FIELDS = ("job_id", "images", "faces", "errors", "unread_objects", "version")


async def recent_jobs(ctx: Context, caller: Caller, collection: str, count: int = 10) -> list[dict[str, Any]]:
    """The collection's last index jobs as the audit log recorded them, newest first, each with a one-line
    summary (counts, or the error code of one that failed)."""
    authorize(caller, Action.COLLECTIONS_READ, collection)

    def read() -> list[dict[str, Any]]:
        return [r for r in read_records(ctx.store) if r.get("action") == "index" and r.get("collection") == collection]

    jobs = (await ctx.in_thread(read))[-count:]
    for job in jobs:
        counts = ", ".join(f"{k} {job[k]}" for k in ("images", "faces", "errors") if k in job)
        job["summary"] = counts or job.get("code") or ""
    return list(reversed(jobs))


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
                ctx,
                caller,
                request.collection,
                request.shards,
                DEFAULT_MAX_FALSE_MATCH_RATE,
                model=request.model,
                recipe=request.recipe,
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
