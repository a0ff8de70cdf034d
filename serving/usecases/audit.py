"""The audit log for auditors: read, export, verify, report; and the public transparency report."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster.access import Action, Caller, authorize
from cluster.audit import head, read_records
from cluster.audit_export import export_records
from cluster.audit_verify import verify
from serving.schemas import AuditPage
from serving.usecases.audited import audited
from serving.usecases.context import Context


def _utc(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t and t.tzinfo is None else t


async def records(ctx: Context, caller: Caller, start: datetime | None, end: datetime | None, limit: int) -> AuditPage:
    start, end = _utc(start), _utc(end)
    async with audited(ctx, caller, "export", None, **{"from": str(start), "to": str(end), "out": None}) as entry:
        authorize(caller, Action.AUDIT_READ)
        found = await ctx.in_thread(read_records, ctx.store, start, end)
        entry["records"] = min(len(found), limit)
    return AuditPage(records=found[:limit], total=len(found), truncated=len(found) > limit)


async def export(ctx: Context, caller: Caller, out: Path, start: datetime | None, end: datetime | None) -> int:
    """Records in [start, end) to a Parquet or CSV file; the export is itself audited."""
    start, end = _utc(start), _utc(end)
    async with audited(ctx, caller, "export", None, **{"from": str(start), "to": str(end), "out": str(out)}) as entry:
        authorize(caller, Action.AUDIT_READ)
        entry["records"] = count = await ctx.in_thread(export_records, ctx.store, out, start, end)
    return count


def check(ctx: Context, caller: Caller, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    authorize(caller, Action.AUDIT_READ)
    return verify(ctx.store, checkpoint)


def checkpoint(ctx: Context, caller: Caller) -> dict[str, Any]:
    """The chain's head now (seq, hash, time): to publish where the store's writers cannot change it."""
    authorize(caller, Action.AUDIT_READ)
    return head(ctx.store)


async def report(ctx: Context, caller: Caller) -> dict[str, Any]:
    authorize(caller, Action.AUDIT_READ)
    return await transparency(ctx)


async def transparency(ctx: Context) -> dict[str, Any]:
    """Public: counts only, never case ids or faces. One refresh at a time, on a thread of its own, folding only
    the records appended since the last: callers that arrive during one share its answer, so however many ask,
    searches and audit appends never wait behind them."""
    reporting = ctx.reporting
    if reporting.pending is None:
        loop = asyncio.get_running_loop()
        reporting.pending = loop.run_in_executor(reporting.thread, reporting.report.refresh)
        reporting.pending.add_done_callback(lambda _: setattr(reporting, "pending", None))
    return await asyncio.shield(reporting.pending)
