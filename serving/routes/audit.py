"""The audit log for auditors, and the public transparency report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serving.deps import CallerDep, Ctx, errors
from serving.schemas_admin import AuditCheck, AuditPage, AuditRepair, TransparencyReport
from serving.usecases import audit

# A date or a time (a time without an offset is UTC), or empty for no bound (as forms send it); anything else is
# refused, never read as a number of seconds.
WHEN = {
    "anyOf": [
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "maxLength": 0},
    ]
}
router = APIRouter(prefix="/v1", tags=["accountability"])


@router.get("/audit", responses=errors())
async def audit_records(
    ctx: Ctx,
    caller: CallerDep,
    start: Annotated[str | None, Query(alias="from", json_schema_extra=WHEN)] = None,
    end: Annotated[str | None, Query(alias="to", json_schema_extra=WHEN)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> AuditPage:
    return await audit.records(ctx, caller, start, end, limit)


@router.get("/audit/verify", responses=errors())
def audit_verify(ctx: Ctx, caller: CallerDep) -> AuditCheck:
    """Auditors: the verifier's own result over the whole chain (the place of the first damage, if any). Answers
    while the log cannot be appended to, which is when it matters."""
    return AuditCheck.model_validate(audit.check(ctx, caller))


@router.post("/audit/repair", responses=errors())
async def audit_repair(ctx: Ctx, caller: CallerDep) -> AuditRepair:
    """Admins: cut a damaged log back to its last verified record and go on from there; the damaged part is kept
    under audit-damaged/ for inspection, and the repair is audited as the next record."""
    return AuditRepair.model_validate(await audit.repair(ctx, caller))


@router.get("/transparency", responses=errors(public=True))
async def transparency(ctx: Ctx) -> TransparencyReport:
    """Public: counts only, never case ids or faces."""
    return TransparencyReport.model_validate(await audit.transparency(ctx))
