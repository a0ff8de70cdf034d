"""The audit log for auditors, and the public transparency report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from serving.deps import CallerDep, Ctx, errors
from serving.schemas import AuditPage, TransparencyReport
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


@router.get("/transparency", responses=errors(public=True))
async def transparency(ctx: Ctx) -> TransparencyReport:
    """Public: counts only, never case ids or faces."""
    return TransparencyReport.model_validate(await audit.transparency(ctx))
