"""The audit log for auditors, and the public transparency report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from serving.deps import CallerDep, Service

router = APIRouter(prefix="/v1", tags=["accountability"])


@router.get("/audit")
async def audit_records(
    service: Service,
    caller: CallerDep,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    return await service.audit_records(caller, start, end, limit)


@router.get("/transparency")
async def transparency(service: Service) -> dict[str, Any]:
    """Public: counts only, never case ids or faces."""
    return await service.transparency()
