"""Amazon Rekognition's own protocol beside /v1: JSON 1.1 on `POST /`, the operation named by `X-Amz-Target`,
signed with SigV4. A second wire format over the same use cases: the same roles, purposes, case ids, floor and
audit as /v1 (the record's id comes back in `x-facegrid-audit-seq`)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cluster.keys.access import NotAuthenticated
from cluster.keys.credentials import Resolved
from serving.deps import Ctx
from serving.rekognition import shapes, signing
from serving.rekognition.errors import aws_error, exception_for
from serving.rekognition.operations import OPERATIONS, Who
from serving.usecases.audited import LAST_RECORD, audited, clipped, record
from serving.usecases.context import Context
from serving.usecases.search import THRESHOLD_APPLIED

log = logging.getLogger("facegrid.rekognition")
router = APIRouter(tags=["rekognition"])
TARGET_PREFIX = "RekognitionService."
CONTENT_TYPE = "application/x-amz-json-1.1"
REPLAYS = signing.ReplayGuard()


async def _body(request: Request, limit: int) -> bytes | None:
    """The raw body (it is signed), or None when it is over the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _who(ctx: Context, request: Request, body: bytes, operation: str) -> Who:
    """The caller behind the signature; a refusal is recorded as an `authenticate` act, as on /v1."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    client = request.client.host if request.client else ""
    try:
        resolved: Resolved = await ctx.in_thread(
            signing.verify, request.method, str(request.url), headers, body, ctx.credentials.resolve
        )
        if REPLAYS.guarded(operation):
            REPLAYS.check(headers)
        key = next((k for k in ctx.keys.keys(max_age_s=1.0) if k.key_id == resolved.key_id), None)
        if key is None or key.revoked_at:
            raise NotAuthenticated(f"the facegrid key behind access key {resolved.access_key_id} is revoked or gone")
    except Exception as exc:
        claimed = headers.get("authorization", "").partition("Credential=")[2].partition("/")[0][:32] or None
        fields = {"method": "POST", "route": f"rekognition:{operation}", "claimed_key": claimed, "from": client}
        async with audited(ctx, None, "authenticate", None, **fields):
            raise exc from None
    caller = key.caller(f"rekognition:{resolved.access_key_id}@{client}")
    return Who(caller=caller, purpose=resolved.purpose, case_id=resolved.case_id)


@router.post("/", include_in_schema=False)
async def rekognition(request: Request, ctx: Ctx) -> Response:
    request_id = str(uuid.uuid4())
    target = request.headers.get("x-amz-target", "")
    name = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
    if name not in OPERATIONS:
        return aws_error("UnknownOperationException", f"operation {target[:80]!r} is not served here", request_id)
    limit = ctx.settings.serving.max_upload_bytes * 2 + 65_536  # base64 of two images, and the rest
    body = await _body(request, limit)
    if body is None:
        return aws_error("ImageTooLargeException", f"the request is over {limit} bytes", request_id)
    LAST_RECORD.set(None)
    who: Who | None = None
    try:
        who = await _who(ctx, request, body, name)
        try:
            params: Any = json.loads(body or b"{}")
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the decoder goes
            raise shapes.InvalidParameter(f"the body is not JSON of a sane depth: {type(exc).__name__}") from exc
        answer = await OPERATIONS[name](ctx, who, shapes.checked(name, params))
    except Exception as exc:
        if who is not None and isinstance(exc, shapes.InvalidParameter) and LAST_RECORD.get() is None:
            # Refused at the parameter checks, before the operation's own record: recorded as /v1's are.
            entry = {"action": "invalid-request", "collection": None, "route": f"rekognition:{name}"}
            try:
                problem = {**entry, "problem": clipped(str(exc), 1000)}
                await record(ctx, who.caller, problem, "refused", "INVALID_REQUEST")
            except Exception as unrecorded:  # the log cannot take it: that is the answer (fail closed)
                exc = unrecorded
        aws_name, message = exception_for(exc, in_session=who is not None and who.case_id is not None)
        if aws_name == "InternalServerError":
            log.error("unexpected error in %s", name, exc_info=exc)
        return aws_error(aws_name, message, request_id, LAST_RECORD.get())
    if REPLAYS.guarded(name):
        REPLAYS.answered_now({k.lower(): v for k, v in request.headers.items()})
    response = Response(json.dumps(answer), media_type=CONTENT_TYPE, headers={"x-amzn-requestid": request_id})
    _echo_audit(response, LAST_RECORD.get())
    _echo_threshold(response, THRESHOLD_APPLIED.get())
    return response


def _echo_threshold(response: Response, limits: dict[str, Any] | None) -> None:
    """A search's FaceMatchThreshold stays a per-comparison similarity; what the search applied (the strictest of
    it, the floor and the collection's per-search promise) has no field in Rekognition's shapes: headers say it."""
    if limits is None:
        return
    response.headers["x-facegrid-threshold-applied"] = str(limits["applied"])
    if limits.get("max_false_candidates_per_search") is not None:
        response.headers["x-facegrid-max-false-candidates-per-search"] = str(limits["max_false_candidates_per_search"])
        response.headers["x-facegrid-faces-searched"] = str(limits["faces_searched"])
        response.headers["x-facegrid-expected-false-candidates"] = str(limits["expected_false_candidates"])


def _echo_audit(response: Response, record: dict[str, Any] | None) -> None:
    if record is not None:
        response.headers["x-facegrid-audit-seq"] = str(record["seq"])
        response.headers["x-facegrid-audit-hash"] = record["hash"]
