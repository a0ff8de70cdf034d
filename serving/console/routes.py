"""The web console under /ui: server-rendered pages (Jinja2) over the same use cases as /v1, with a key kept in a
session cookie (HttpOnly, SameSite=Strict, gone when the browser closes or on sign-out). No external asset: a
Content-Security-Policy of 'self' is sent with every page."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cluster.access import Action, Caller, authorize
from cluster.audit import head, read_records, verify
from cluster.errors import InvalidRequest
from cluster.pipeline.quality import QualityFilter
from serving.deps import Ctx, read_upload
from serving.render import LEADS_NOTICE, image_size
from serving.usecases import audit, collections, images, ingest, keys, people, review, search
from serving.usecases.audited import LAST_RECORD, audited
from serving.usecases.context import Context
from serving.usecases.failures import failure
from serving.usecases.policy import SearchRequest

HERE = Path(__file__).parent
COOKIE = "facegrid_console"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
SHOWN_RECORDS = 500

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")


class SignIn(Exception):
    """No valid key in this browser session: go to the sign-in page."""


def page(request: Request, name: str, caller: Caller | None, http_status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {"caller": caller, "title": name.split(".")[0], **context}, status_code=http_status
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def problem(request: Request, caller: Caller | None, exc: Exception, name: str, **context: Any) -> HTMLResponse:
    """A user's error on the page it came from, with its stable code and the status the API would give."""
    described = failure(exc)
    error = {"code": described.code, "message": described.message}
    return page(request, name, caller, http_status=described.status, error=error, **context)


async def signed_in(ctx: Context, request: Request) -> Caller:
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignIn()
    client = request.client.host if request.client else ""
    try:
        return await keys.authenticate(ctx, token, f"console@{client}", request.method, request.url.path)
    except Exception as exc:
        raise SignIn() from exc


def _redirect(to: str) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("")
async def home(ctx: Ctx, request: Request) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    return _redirect("/ui/search" if caller.may(Action.SEARCH) else "/ui/collections")


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    return page(request, "signin.html", None)


@router.post("/signin")
async def signin(ctx: Ctx, request: Request, token: Annotated[str, Form()]) -> Response:
    client = request.client.host if request.client else ""
    try:
        caller = await keys.authenticate(ctx, token.strip(), f"console@{client}", "POST", "/ui/signin")
    except Exception as exc:
        return problem(request, None, exc, "signin.html")
    response = _redirect("/ui/search" if caller.may(Action.SEARCH) else "/ui/collections")
    # No max-age: a session cookie, gone with the browser session.
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/ui")
    return response


@router.post("/signout")
async def signout() -> Response:
    response = _redirect("/ui/signin")
    response.delete_cookie(COOKIE, path="/ui")
    return response


def _searchable(ctx: Context, caller: Caller) -> list[str]:
    return [n for n in collections.names(ctx, caller) if caller.may(Action.SEARCH, n)]


@router.get("/search")
async def search_page(ctx: Ctx, request: Request) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    return page(
        request, "search.html", caller, collections=_searchable(ctx, caller), purposes=ctx.settings.serving.purposes
    )


@router.post("/search")
async def run_search(
    ctx: Ctx,
    request: Request,
    collection: Annotated[str, Form()],
    purpose: Annotated[str, Form()],
    case_id: Annotated[str, Form()],
    image: Annotated[UploadFile | None, File()] = None,
    probe: Annotated[str, Form(description="The probe again, base64, after a face was picked")] = "",
    kind: Annotated[str, Form()] = "",
    threshold: Annotated[str, Form()] = "",
    by: Annotated[str, Form(description="faces, or people (users)")] = "faces",
    face_index: Annotated[str, Form()] = "",
) -> Response:
    """Upload, then (for a photo of several faces) pick one; only the picked face is searched. The probe is
    never stored: the pick page carries it back in the form."""
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    form = {"collections": _searchable(ctx, caller), "purposes": ctx.settings.serving.purposes}
    limit = ctx.settings.serving.max_upload_bytes
    try:
        if image is not None and image.filename:
            blob, kind = await read_upload(image, limit), (image.content_type or "image/jpeg").split(";")[0]
        elif probe:
            blob = base64.b64decode(probe, validate=True)
        else:
            raise InvalidRequest("choose a probe photo")
        if len(blob) > limit:
            raise InvalidRequest(f"the probe is over {limit} bytes")
        asked = float(threshold) if threshold.strip() else None
        if asked is not None and not math.isfinite(asked):
            raise InvalidRequest("threshold must be a number")
        fields = {"collection": collection, "purpose": purpose, "case_id": case_id, "threshold": threshold, "by": by}
        shown = {"data": f"data:{kind or 'image/jpeg'};base64,{base64.b64encode(blob).decode()}"}
        size = image_size(blob) or (1, 1)
        if not face_index:
            found = (await images.detect(ctx, caller, blob)).faces
            if len(found) > 1:
                boxes = [_box_percent(f.bbox, size) for f in found]
                picked = {**fields, "probe": base64.b64encode(blob).decode(), "kind": kind}
                return page(request, "pick.html", caller, probe={**shown, "boxes": boxes}, fields=picked)
        chosen = int(face_index) if face_index else None
        asked_for = SearchRequest(purpose, case_id, asked, max_results=10, face_index=chosen)
        LAST_RECORD.set(None)
        if by == "people":
            people_answer = await people.search(ctx, caller, collection, asked_for, image=blob, max_users=10)
        else:
            answer = await search.search(ctx, caller, collection, blob, asked_for)
    except (ValueError, binascii.Error) as exc:
        return problem(request, caller, InvalidRequest(str(exc)), "search.html", **form)
    except Exception as exc:
        return problem(request, caller, exc, "search.html", **form)
    seq = (LAST_RECORD.get() or {}).get("seq", 0)
    common = {"collection": collection, "seq": seq, "purpose": purpose, "case_id": case_id, "notice": LEADS_NOTICE,
              "decided": {}, "decisions": review.DECISIONS}  # fmt: skip
    if by == "people":
        searched = people_answer.searched_face
        probe_view = {**shown, "boxes": [_box_percent(searched.bbox, size)] if searched else []}
        return page(request, "people.html", caller, probe=probe_view, answer=people_answer,
                    threshold=people_answer.threshold, **common)  # fmt: skip
    groups = [{"candidates": answer.matches}]
    probe_view = {**shown, "boxes": [_box_percent(answer.searched_face.bbox, size)]}
    return page(request, "results.html", caller, probe=probe_view, groups=groups, threshold=answer.threshold,
                review_status=_status(groups, {}), **common)  # fmt: skip


def _box_percent(bbox: list[float], size: tuple[int, int]) -> dict[str, float]:
    x1, y1, x2, y2 = bbox
    w, h = size
    return {"left": 100 * x1 / w, "top": 100 * y1 / h, "width": 100 * (x2 - x1) / w, "height": 100 * (y2 - y1) / h}


def _status(groups: list[dict[str, Any]], decided: dict[str, Any]) -> str:
    total = sum(len(g["candidates"]) for g in groups)
    done = sum(1 for g in groups for m in g["candidates"] if _face_id(m) in decided)
    if total == 0:
        return "nothing to review"
    return "reviewed" if done == total else f"unreviewed ({done} of {total} decided)"


def _face_id(match: Any) -> str:
    return match["face_id"] if isinstance(match, dict) else match.face_id


@router.get("/searches/{seq}")
async def past_search(ctx: Ctx, request: Request, seq: int) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    try:
        record = await ctx.in_thread(review.search_record, ctx, caller, seq)
        decided = review.decisions(seq, await ctx.in_thread(read_records, ctx.store))
        manifest = ctx.manifest(record["collection"])
    except Exception as exc:
        return problem(request, caller, exc, "search.html", collections=_searchable(ctx, caller), purposes=[])
    rates = ctx.models.rates(manifest)
    groups = []
    for face in record.get("results") or []:
        rows = []
        for m in face:
            rate, bound = rates.at(m["similarity"])
            rows.append({**m, "estimated_false_match_rate": float(rate), "false_match_rate_is_bound": bool(bound),
                         "expected_false_matches_in_collection": float(rate) * manifest.face_count,
                         "external_image_id": None, "source": None})  # fmt: skip
        groups.append({"candidates": rows})
    floor = ctx.models.floor_similarity(manifest)
    threshold = {"applied": record.get("threshold_applied") or floor, "floor": floor,
                 "max_false_match_rate": manifest.max_false_match_rate}  # fmt: skip
    return page(
        request,
        "results.html",
        caller,
        collection=record["collection"],
        seq=seq,
        purpose=record.get("purpose"),
        case_id=record.get("case_id"),
        threshold=threshold,
        notice=LEADS_NOTICE,
        probe=None,
        groups=groups,
        decided=decided,
        decisions=review.DECISIONS,
        review_status=_status(groups, decided),
    )


@router.post("/review")
async def record_review(
    ctx: Ctx,
    request: Request,
    seq: Annotated[int, Form()],
    face_id: Annotated[str, Form()],
    decision: Annotated[str, Form()],
    note: Annotated[str, Form()] = "",
) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    try:
        await review.decide(ctx, caller, seq, face_id, decision, note.strip() or None)
    except Exception as exc:
        return problem(request, caller, exc, "search.html", collections=[], purposes=[])
    return _redirect(f"/ui/searches/{seq}")


@router.get("/crops/{collection}/{face_id}")
async def face_crop(ctx: Ctx, request: Request, collection: str, face_id: str, search: int) -> Response:
    """A returned face's crop, for the caller it was returned to; never kept by a shared cache."""
    try:
        caller = await signed_in(ctx, request)
        jpeg = await review.crop(ctx, caller, collection, face_id, search)
    except SignIn:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    except Exception as exc:
        described = failure(exc)
        return Response(described.message, status_code=described.status, headers=SECURITY_HEADERS)
    return Response(jpeg, media_type="image/jpeg", headers={**SECURITY_HEADERS, "Cache-Control": "private, no-store"})


@router.get("/collections")
async def collections_page(ctx: Ctx, request: Request) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    try:
        described = [collections.describe(ctx, caller, n) for n in collections.names(ctx, caller)]
    except Exception as exc:
        return problem(request, caller, exc, "collections.html", collections=[])
    return page(request, "collections.html", caller, collections=described)


def _jobs(ctx: Context, name: str) -> list[dict[str, Any]]:
    jobs = [r for r in read_records(ctx.store) if r.get("action") == "index" and r.get("collection") == name][-10:]
    for job in jobs:
        job["summary"] = (
            ", ".join(f"{k} {job[k]}" for k in ("objects", "faces", "errors") if k in job) or job.get("code") or ""
        )
    return list(reversed(jobs))


async def _collection_page(ctx: Context, request: Request, caller: Caller, name: str, **extra: Any) -> Response:
    try:
        described = collections.describe(ctx, caller, name)
    except Exception as exc:
        return problem(request, caller, exc, "collections.html", collections=[])
    jobs = await ctx.in_thread(_jobs, ctx, name)
    may_add = caller.may(Action.FACES_WRITE, name)
    return page(request, "collection.html", caller, c=described, jobs=jobs, may_add=may_add, **extra)


@router.get("/collections/{name}")
async def collection_page(ctx: Ctx, request: Request, name: str) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    return await _collection_page(ctx, request, caller, name)


@router.post("/collections/{name}/faces")
async def add_photo(
    ctx: Ctx,
    request: Request,
    name: str,
    image: Annotated[UploadFile, File()],
    external_image_id: Annotated[str, Form()] = "",
) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
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


def _filtered(ctx: Context, q: dict[str, str]) -> list[dict[str, Any]]:
    def when(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None

    found = read_records(ctx.store, when(q.get("start")), when(q.get("end")))
    fields = {"key": "key_id", "purpose": "purpose", "case_id": "case_id", "action": "action", "outcome": "outcome"}
    return [r for r in found if all(str(r.get(f)) == q[k] for k, f in fields.items() if k in q)]


@router.get("/audit")
async def audit_page(ctx: Ctx, request: Request) -> Response:
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return _redirect("/ui/signin")
    q = _audit_query(request)
    context: dict[str, Any] = {"q": q, "query": urlencode(q), "shown": [], "total": 0}
    context.update(verified={"ok": True, "records": 0}, head={"seq": 0, "hash": "", "time": None})
    try:
        authorize(caller, Action.AUDIT_READ)
        matching = await ctx.in_thread(_filtered, ctx, q)
        context.update(
            shown=list(reversed(matching))[:SHOWN_RECORDS],
            total=len(matching),
            verified=await ctx.in_thread(verify, ctx.store),
            head=await ctx.in_thread(head, ctx.store),
        )
    except Exception as exc:
        return problem(request, caller, exc, "audit.html", **context)
    return page(request, "audit.html", caller, **context)


@router.get("/audit/export.csv")
async def audit_export(ctx: Ctx, request: Request) -> Response:
    """The filtered records as CSV; the export is itself audited."""
    try:
        caller = await signed_in(ctx, request)
    except SignIn:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    q = _audit_query(request)
    try:
        fields = {"from": q.get("start"), "to": q.get("end"), "out": "console"}
        async with audited(ctx, caller, "export", None, **fields) as entry:
            authorize(caller, Action.AUDIT_READ)
            matching = await ctx.in_thread(_filtered, ctx, q)
            entry["records"] = len(matching)
    except Exception as exc:
        described = failure(exc)
        return Response(described.message, status_code=described.status, headers=SECURITY_HEADERS)
    out = io.StringIO()
    columns = ["seq", "time", "action", "outcome", "code", "key_id", "role", "collection", "purpose", "case_id"]
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(matching)
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
