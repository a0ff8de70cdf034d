"""Console pages for collections, the audit log (auditors and admins) and the public transparency report."""

from __future__ import annotations

import contextlib
import csv
import io
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from cluster.audit.export import formula_safe
from cluster.collections.versions import Versions
from cluster.errors import AuditUnavailable
from cluster.keys.access import Action, Caller
from cluster.pipeline.quality import QualityFilter
from serving.console.web import (
    SECURITY_HEADERS,
    SHOWN_RECORDS,
    ConsoleCaller,
    page,
    problem,
)
from serving.deps import Ctx, read_upload
from serving.usecases import audit, collections, indexing, ingest, versions
from serving.usecases.context import Context
from serving.usecases.failures import failure

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/collections")
async def collections_page(ctx: Ctx, caller: ConsoleCaller, request: Request) -> Response:
    try:
        described = [await collections.describe(ctx, caller, n) for n in collections.names(ctx, caller)]
    except Exception as exc:
        return problem(request, caller, exc, "collections.html", collections=[])
    return page(request, "collections.html", caller, collections=described)


async def _collection_page(ctx: Context, request: Request, caller: Caller, name: str, **extra: Any) -> Response:
    try:
        described = await collections.describe(ctx, caller, name)
    except Exception as exc:
        return problem(request, caller, exc, "collections.html", collections=[])
    jobs = await indexing.recent_jobs(ctx, caller, name)
    may_add = caller.may(Action.FACES_WRITE, name)
    if caller.may(Action.COLLECTIONS_WRITE, name):  # admins: the upgrade beside the live version, the one before
        held = Versions(ctx.store, name)
        shadow, previous = await ctx.in_thread(held.shadow), await ctx.in_thread(held.previous)
        extra["upgrade"] = shadow.summary if shadow is not None else None
        extra["previous"] = previous
    return page(request, "collection.html", caller, c=described, jobs=jobs, may_add=may_add, **extra)


@router.post("/collections/{name}/compare")
async def compare_versions(
    ctx: Ctx, caller: ConsoleCaller, request: Request, name: str, sample: Annotated[int, Form()] = 200
) -> Response:
    """The live version and the upgrade's, searched alike (an audited act, as over the API)."""
    try:
        report = await versions.compare(ctx, caller, name, sample)
    except Exception as exc:
        return await _collection_page(ctx, request, caller, name, error=_error(exc))
    return await _collection_page(ctx, request, caller, name, comparison=report)


@router.get("/collections/{name}")
async def collection_page(ctx: Ctx, caller: ConsoleCaller, request: Request, name: str) -> Response:
    return await _collection_page(ctx, request, caller, name)


@router.post("/collections/{name}/faces")
async def add_photo(
    ctx: Ctx,
    caller: ConsoleCaller,
    request: Request,
    name: str,
    image: Annotated[UploadFile, File()],
    external_image_id: Annotated[str, Form()] = "",
) -> Response:
    try:
        blob = await read_upload(image, ctx.settings.serving.max_upload_bytes)
        added = await ingest.add_faces(
            ctx, caller, name, blob, external_image_id.strip() or None, None, QualityFilter.LOW
        )
    except Exception as exc:
        return await _collection_page(ctx, request, caller, name, error=_error(exc))
    return await _collection_page(ctx, request, caller, name, added=added)


def _error(exc: Exception) -> dict[str, str]:
    described = failure(exc)
    return {"code": described.code, "message": described.message}


def _audit_query(request: Request) -> dict[str, str]:
    keys_ = ("start", "end", "key", "purpose", "case_id", "action", "outcome")
    return {k: request.query_params[k] for k in keys_ if request.query_params.get(k)}


@router.get("/audit")
async def audit_page(ctx: Ctx, caller: ConsoleCaller, request: Request) -> Response:
    """The verifier's own result first (shown whatever else fails), then the filtered records (an audited read)."""
    q = _audit_query(request)
    context: dict[str, Any] = {"q": q, "query": urlencode(q), "shown": [], "total": 0, "verified": None, "head": None}
    try:
        context["verified"] = await ctx.in_thread(audit.check, ctx, caller)
        with contextlib.suppress(AuditUnavailable):  # a damaged HEAD: the verifier's result says where
            context["head"] = await ctx.in_thread(audit.checkpoint, ctx, caller)
        matching = await audit.filtered(ctx, caller, q, "console")
        context.update(shown=list(reversed(matching))[:SHOWN_RECORDS], total=len(matching))
    except Exception as exc:
        return problem(request, caller, exc, "audit.html", **context)
    return page(request, "audit.html", caller, **context)


@router.get("/audit/export.csv")
async def audit_export(ctx: Ctx, caller: ConsoleCaller, request: Request) -> Response:
    """The filtered records as CSV (formula-safe); the export is itself audited."""
    try:
        matching = await audit.filtered(ctx, caller, _audit_query(request), "console")
    except Exception as exc:
        described = failure(exc)
        return Response(described.message, status_code=described.status, headers=SECURITY_HEADERS)
    out = io.StringIO()
    columns = ["seq", "time", "action", "outcome", "code", "key_id", "role", "collection", "purpose", "case_id"]
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: formula_safe(v) for k, v in record.items()} for record in matching)
    headers = {**SECURITY_HEADERS, "Content-Disposition": "attachment; filename=audit.csv"}
    return Response(out.getvalue(), media_type="text/csv", headers=headers)


@router.get("/transparency")
async def transparency_page(ctx: Ctx, request: Request) -> Response:
    report = await audit.transparency(ctx)
    counts = [
        ("searches", report["searches"]),
        ("refused searches", report["refused_searches"]),
        ("failed searches", report["failed_searches"]),
        ("reviews recorded", report["reviews"]),
        ("searches fully reviewed", report["searches_reviewed"]),
        ("top candidates decided", report["top_candidates_decided"]),
        ("top candidates rejected by reviewers", _share(report)),
        ("faces deleted", report["faces_deleted"]),
        ("index jobs", report["index_jobs"]),
    ]
    charts = [
        _chart("Searches by purpose", report["searches_by_purpose"]),
        _chart("Searches by month", report["searches_by_month"]),
        _chart("Review decisions", report["decisions"]),
    ]
    return page(request, "transparency.html", None, r=report, counts=counts, charts=charts)


def _share(report: dict[str, Any]) -> str:
    decided, rejected = report["top_candidates_decided"], report["top_candidates_rejected"]
    return f"{rejected} of {decided}" + (f" ({100 * rejected / decided:.0f}%)" if decided else "")


def _chart(title: str, values: dict[str, int]) -> dict[str, Any]:
    top = max(values.values(), default=0) or 1
    bars = [{"label": k, "value": v, "width": round(300 * v / top)} for k, v in values.items()]
    return {"title": title, "bars": bars}
