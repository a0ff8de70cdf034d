"""The audit log for auditors, and the public transparency report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from serving.deps import COMMON, ERROR_MEANINGS, CallerDep, Ctx, errors
from serving.schemas import AuditPage, ErrorEnvelope
from serving.usecases import audit

router = APIRouter(prefix="/v1", tags=["accountability"])


@router.get("/audit", responses=errors())
async def audit_records(
    ctx: Ctx,
    caller: CallerDep,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> AuditPage:
    return await audit.records(ctx, caller, start, end, limit)


PUBLIC_ERRORS = {s: {"model": ErrorEnvelope, "description": ERROR_MEANINGS[s]} for s in COMMON if s not in (401, 403)}


@router.get("/transparency", responses=PUBLIC_ERRORS)  # type: ignore[arg-type]
async def transparency(ctx: Ctx) -> dict[str, Any]:
    """Public: counts only, never case ids or faces."""
    return await audit.transparency(ctx)
