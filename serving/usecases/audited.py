"""The one audit path: every audited action runs inside `audited`, which records it in every outcome."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from cluster.audit.log import AuditLog
from cluster.audit.writer import append_audit, audit_actor
from cluster.errors import AuditUnavailable
from cluster.keys.access import Caller
from cluster.storage import LocalStore
from serving import stages
from serving.metrics import AUDIT_APPEND, REFUSALS
from serving.usecases.failures import failure, unwrap

if TYPE_CHECKING:
    from serving.usecases.context import Context


def clipped(text: str | None, limit: int) -> str | None:
    """Text as given up to `limit` characters; longer text cut there and its length said."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def as_json_number(value: float | None) -> float | str | None:
    """NaN and infinity as text, so that the audit stays strict JSON."""
    return value if value is None or math.isfinite(value) else str(value)


# How long a server takes its audit writer's report of a damaged log as the answer before asking again.
DAMAGE_RECHECK_S = 1.0

# The seq and hash of the record this request's task appended last: interfaces may echo it to the caller.
LAST_RECORD: ContextVar[dict[str, Any] | None] = ContextVar("last_audit_record", default=None)


async def record(ctx: Context, caller: Caller | None, entry: dict[str, Any], outcome: str, code: str | None) -> None:
    """Append one record: who (None: no valid key), what, and how it ended. No record is built anywhere else."""
    if not ctx.accountable:
        return
    who: dict[str, str | None] = {"key_id": None, "role": None, "client": None}
    if caller is not None:
        who = {"key_id": caller.key_id, "role": str(caller.role), "client": caller.client}
    full = {**who, **entry, "outcome": outcome, "code": code}
    if outcome == "refused":
        REFUSALS.labels(str(code)).inc()
    began = time.perf_counter()
    try:
        if isinstance(ctx.store, LocalStore):
            # A local append takes about 0.3 ms, less than handing it to a thread would.
            LAST_RECORD.set(append_audit(ctx.settings, ctx.store, full))
        else:
            # Awaited on the event loop, never on a worker thread: appends from many requests reach the writer at
            # once and are committed together (two threads used to serialise them).
            LAST_RECORD.set(await ctx.audit.append(full))
    except Exception as exc:
        if isinstance(unwrap(exc), AuditUnavailable):
            ctx.audit_damage = (str(unwrap(exc)), time.monotonic())  # later actions are refused before they run
        raise
    AUDIT_APPEND.observe(time.perf_counter() - began)
    stages.mark("audit")


async def _appendable(ctx: Context) -> None:
    """Refuse an action before it runs when its record could not be written (fail closed, nothing unrecorded).
    On a folder that is a read of HEAD and a stat (about 20 us); on an object store, once the writer reported
    damage, the writer is asked again at most once a second (a repair elsewhere reopens this server too)."""
    if isinstance(ctx.store, LocalStore):
        AuditLog(ctx.store).check_appendable()
    elif ctx.audit_damage is not None:
        message, since = ctx.audit_damage
        if time.monotonic() - since < DAMAGE_RECHECK_S:
            raise AuditUnavailable(message)
        try:
            await audit_actor(ctx.settings).check_appendable.remote()
        except Exception as exc:
            ctx.audit_damage = (message, time.monotonic())
            raise unwrap(exc) from None
        ctx.audit_damage = None


@asynccontextmanager
async def audited(
    ctx: Context, caller: Caller | None, action: str, collection: str | None = None, **fields: Any
) -> AsyncIterator[dict[str, Any]]:
    """Run an action and record it whatever happens: `ok`, `refused` (the system said no) or `error` with the
    code the caller got. The body adds its results to the yielded entry. If the record cannot be written the
    action fails (closed): nothing audited happens unrecorded."""
    entry = {"action": action, "collection": collection, **fields}
    if ctx.accountable:
        await _appendable(ctx)
    try:
        yield entry
    except BaseException as exc:
        if not isinstance(exc, Exception | asyncio.CancelledError):
            raise
        described = failure(exc)
        await record(ctx, caller, entry, described.outcome, described.code)
        raise
    await record(ctx, caller, entry, "ok", None)
