"""The web console under /ui: server-rendered pages (Jinja2) over the same use cases as /v1. A session cookie
(HttpOnly, SameSite=Strict, Secure over TLS) holds an opaque id; every form that posts carries its session's token
and must come from our own origin (web.py). No external asset: a
Content-Security-Policy of 'self' is sent with every page. This module: sign-in, search, review, crops."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from cluster.errors import InvalidRequest
from cluster.keys.access import Action, Caller
from serving.console.sessions import Sessions
from serving.console.web import (
    SECURITY_HEADERS,
    ConsoleCaller,
    check_form,
    cookie_name,
    page,
    problem,
    redirect,
    set_cookie,
)
from serving.deps import Ctx, read_upload
from serving.render import LEADS_NOTICE, image_size
from serving.usecases import collections, images, keys, people, review, search
from serving.usecases.audited import LAST_RECORD
from serving.usecases.context import Context
from serving.usecases.failures import failure
from serving.usecases.policy import SearchRequest

log = logging.getLogger("facegrid.console")
router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
async def home(ctx: Ctx, caller: ConsoleCaller, request: Request) -> Response:
    return redirect("/ui/search" if caller.may(Action.SEARCH) else "/ui/collections")


SIGNIN_COOKIE = "facegrid_signin"


@router.get("/signin")
async def signin_page(ctx: Ctx, request: Request) -> Response:
    """The form carries a token that a cookie of this browser matches: a sign-in posted from elsewhere (which
    would sign the victim into the attacker's key) has neither."""
    token = secrets.token_urlsafe(32)
    request.state.csrf = token
    response = page(request, "signin.html", None)
    set_cookie(ctx, response, SIGNIN_COOKIE, token, "/ui/signin", max_age=3600)
    return response


@router.post("/signin")
async def signin(ctx: Ctx, request: Request, token: Annotated[str, Form()]) -> Response:
    await check_form(request, ctx, None, request.cookies.get(SIGNIN_COOKIE))
    client = request.client.host if request.client else ""
    try:
        caller = await keys.authenticate(ctx, token.strip(), f"console@{client}", "POST", "/ui/signin")
    except Exception as exc:
        return problem(request, None, exc, "signin.html")
    session_id, _ = await ctx.in_thread(Sessions(ctx.store).start, caller.key_id)
    response = redirect("/ui/search" if caller.may(Action.SEARCH) else "/ui/collections")
    # No max-age: a session cookie, gone with the browser session. It holds an opaque id, never the key.
    set_cookie(ctx, response, cookie_name(ctx), session_id, "/ui")
    response.delete_cookie(SIGNIN_COOKIE, path="/ui/signin")
    return response


@router.post("/signout")
async def signout(ctx: Ctx, caller: ConsoleCaller, request: Request) -> Response:
    session_id = request.cookies.get(cookie_name(ctx))
    if session_id:
        await ctx.in_thread(Sessions(ctx.store).end, session_id)
    response = redirect("/ui/signin")
    response.delete_cookie(cookie_name(ctx), path="/" if ctx.settings.serving.console_tls else "/ui")
    return response


def _searchable(ctx: Context, caller: Caller) -> list[str]:
    return [n for n in collections.names(ctx, caller) if caller.may(Action.SEARCH, n)]


@router.get("/search")
async def search_page(ctx: Ctx, caller: ConsoleCaller, request: Request) -> Response:
    return page(
        request, "search.html", caller, collections=_searchable(ctx, caller), purposes=ctx.settings.serving.purposes
    )


@router.post("/search")
async def run_search(
    ctx: Ctx,
    caller: ConsoleCaller,
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
        faces = [m for u in people_answer.user_matches for m in u.matched_faces]
        gone = await ctx.in_thread(review.photos_gone, ctx, collection, faces)
        return page(request, "people.html", caller, probe=probe_view, answer=people_answer,
                    threshold=people_answer.threshold, gone=gone, **common)  # fmt: skip
    groups = [{"candidates": answer.matches}]
    probe_view = {**shown, "boxes": [_box_percent(answer.searched_face.bbox, size)]}
    gone = await ctx.in_thread(review.photos_gone, ctx, collection, answer.matches)
    return page(request, "results.html", caller, probe=probe_view, groups=groups, threshold=answer.threshold,
                review_status=_status(groups, {}), gone=gone, **common)  # fmt: skip


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
async def past_search(ctx: Ctx, caller: ConsoleCaller, request: Request, seq: int) -> Response:
    try:
        record, decided = await ctx.in_thread(review.past_search, ctx, caller, seq)
        manifest = await ctx.read_manifest(record["collection"])
    except Exception as exc:
        return problem(request, caller, exc, "search.html", collections=_searchable(ctx, caller), purposes=[])
    groups = await _past_candidates(ctx, manifest, record)
    matches = [m for group in groups for m in group["candidates"]]
    gone = await ctx.in_thread(review.photos_gone, ctx, manifest.name, matches)
    floor = ctx.models.floor_similarity(manifest)
    threshold = {"applied": record.get("threshold_applied") or floor, "floor": floor,
                 "max_false_match_rate": manifest.max_false_match_rate}  # fmt: skip
    # The promise as this search kept it (its record), not as the collection holds it now.
    promised = ("max_false_candidates_per_search", "faces_searched", "promise_similarity", "expected_false_candidates")
    threshold |= {key: record.get(key) for key in promised}
    if threshold["promise_similarity"] is None or threshold["expected_false_candidates"] is None:
        threshold["max_false_candidates_per_search"] = None  # recorded before promises, or refused
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
        gone=gone,
        decisions=review.DECISIONS,
        review_status=_status(groups, decided),
    )


async def _past_candidates(ctx: Context, manifest: Any, record: dict[str, Any]) -> list[dict[str, Any]]:
    """A past search's candidates from its audit record, with what their face records say now (an erased face
    has none) and their rates on the collection's calibration."""
    rates = ctx.models.rates(manifest)
    returned = review.returned_faces(record)
    try:
        held = await ctx.shards(manifest.name).records(manifest, returned) if returned else {}
    except Exception:
        log.warning("shards of %s did not give the records of search %s", manifest.name, record["seq"], exc_info=True)
        held = {}  # the page still shows the face ids, similarities and decisions the audit holds
    groups = []
    for face in record.get("results") or []:
        rows = []
        for match in face:
            rate, bound = rates.at(match["similarity"])
            known = held.get(match["face_id"], {})
            rows.append(
                {
                    **match,
                    "estimated_false_match_rate": float(rate),
                    "false_match_rate_is_bound": bool(bound),
                    "expected_false_matches_in_collection": float(rate) * manifest.face_count,
                    "external_image_id": known.get("external_image_id"),
                    "source": known.get("source_key"),
                }
            )
        groups.append({"candidates": rows})
    return groups


@router.post("/review")
async def record_review(
    ctx: Ctx,
    caller: ConsoleCaller,
    request: Request,
    seq: Annotated[int, Form()],
    face_id: Annotated[str, Form()],
    decision: Annotated[str, Form()],
    note: Annotated[str, Form()] = "",
) -> Response:
    try:
        await review.decide(ctx, caller, seq, face_id, decision, note.strip() or None)
    except Exception as exc:
        return problem(request, caller, exc, "search.html", collections=[], purposes=[])
    return redirect(f"/ui/searches/{seq}")


@router.get("/crops/{collection}/{face_id}")
async def face_crop(ctx: Ctx, caller: ConsoleCaller, collection: str, face_id: str, search: int) -> Response:
    """A returned face's crop, for the caller it was returned to; never kept by a shared cache."""
    try:
        jpeg = await review.crop(ctx, caller, collection, face_id, search)
    except Exception as exc:
        described = failure(exc)
        return Response(described.message, status_code=described.status, headers=SECURITY_HEADERS)
    return Response(jpeg, media_type="image/jpeg", headers={**SECURITY_HEADERS, "Cache-Control": "private, no-store"})
