"""The audit log for auditors: read, export, verify, report; and the public transparency report."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster.audit.export import export_records
from cluster.audit.log import head, read_records
from cluster.audit.verify import verify
from cluster.audit.writer import repair_audit
from cluster.errors import InvalidRequest
from cluster.keys.access import Action, Caller, authorize
from serving.schemas_admin import AuditPage
from serving.usecases.audited import audited, clipped
from serving.usecases.context import Context

# The console's filters: query name -> record field.
FILTERS = {"key": "key_id", "purpose": "purpose", "case_id": "case_id", "action": "action", "outcome": "outcome"}


def _utc(t: datetime | None) -> datetime | None:
    """A time as given, its offset honoured; one without an offset is UTC."""
    return t.replace(tzinfo=UTC) if t and t.tzinfo is None else t


def parse_time(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a date or time like 2026-12-01 or 2026-12-01T09:30:00+01:00") from exc


async def filtered(ctx: Context, caller: Caller, q: dict[str, str], out: str) -> list[dict[str, Any]]:
    """Records matching the console's filters (`FILTERS`, and start/end times), audited as an export to `out`."""
    fields = {"from": q.get("start"), "to": q.get("end"), "out": out}
    async with audited(ctx, caller, "export", None, **fields) as entry:
        authorize(caller, Action.AUDIT_READ)
        start, end = parse_time(q.get("start"), "from"), parse_time(q.get("end"), "to")
        found = await ctx.in_thread(read_records, ctx.store, start, end)
        matching = [r for r in found if all(str(r.get(f)) == q[k] for k, f in FILTERS.items() if k in q)]
        entry["records"] = len(matching)
    return matching


async def records(ctx: Context, caller: Caller, since: str | None, until: str | None, limit: int) -> AuditPage:
    """Records in [since, until) (dates or times, as `parse_time` reads them), at most `limit` of them."""
    fields = {"from": clipped(since, 64), "to": clipped(until, 64), "out": None}
    async with audited(ctx, caller, "export", None, **fields) as entry:
        authorize(caller, Action.AUDIT_READ)
        start, end = parse_time(since, "from"), parse_time(until, "to")
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


async def repair(ctx: Context, caller: Caller) -> dict[str, Any]:
    """Admins: cut a damaged log back to its last verified record, the damaged part kept aside; the repair is
    recorded as the first record of the chain that goes on (cluster/audit/repair.py)."""
    if not caller.may(Action.AUDIT_REPAIR):
        async with audited(ctx, caller, "audit-repair"):  # the refusal, recorded where the log can take it
            authorize(caller, Action.AUDIT_REPAIR)
    done = await ctx.in_thread(repair_audit, ctx.settings, ctx.store)
    ctx.audit_damage = None
    async with audited(ctx, caller, "audit-repair", **done):
        pass
    return done


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
