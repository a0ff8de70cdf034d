"""The FastAPI application: routes, errors in one envelope with stable codes, request counting."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayError
from starlette.exceptions import HTTPException

from cluster.errors import FacegridError
from cluster.pipeline.errors import ImageError
from cluster.settings import Settings, get_settings
from cluster.storage import StorageError
from serving import openapi
from serving.console import records as console_records
from serving.console import routes as console
from serving.console.web import SignIn, to_sign_in
from serving.console.web import static as console_static
from serving.limits import BodyLimit, PublicRateLimit
from serving.metrics import RequestMetrics
from serving.routes import audit, collections, faces, health, images, keys, rekognition, users
from serving.usecases.audited import clipped, record
from serving.usecases.context import Context
from serving.usecases.failures import failure

log = logging.getLogger("facegrid.api")
BODY_SLACK_BYTES = 1_000_000
VALUE_RULES = frozenset(
    {
        "finite_number",
        "string_too_long",
        "too_long",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }
)


def _value_refusal(errors: Sequence[Any]) -> bool:
    """Every error a rule on a value; a union's literal member not matched counts with its sibling's value error
    (a shard count of 0 is out of range, not of the wrong shape, though it is not "auto" either)."""
    valued = {tuple(e["loc"][:-1]) for e in errors if e["type"] in VALUE_RULES}
    return all(
        e["type"] in VALUE_RULES or (e["type"] == "literal_error" and tuple(e["loc"][:-1]) in valued) for e in errors
    )


# Routes whose refusals count as refused searches in the transparency report, by the action they audit.
AUDITED_ROUTES = {
    "/v1/collections/{collection}/search": "search",
    "/v1/collections/{collection}/search-vector": "search-vector",
    "/v1/collections/{collection}/faces/{face_id}/search": "search-face",
    "/v1/collections/{collection}/users/search": "search-users",
    "/v1/compare": "compare",
}
HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "REQUEST_TOO_LARGE", 429: "TOO_MANY_REQUESTS"}


def envelope(status: int, code: str, message: str, **details: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **details}}, status_code=status)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the schema documents for the path template that `path` names. As OpenAPI matches, a template
    with fewer parameters comes first: `.../users/search` is that path's, not `.../users/{user_id}`'s."""
    matching: dict[int, set[str]] = {}
    for template, operations in app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            matching.setdefault(template.count("{"), set()).update(method.upper() for method in operations)
    return sorted(matching[min(matching)]) if matching else []


def create_app(settings: Settings | None = None, context: Context | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.context = context or Context(settings or get_settings())
        yield
        app.state.context.close()

    app = FastAPI(title="facegrid", version="0.2.0", lifespan=lifespan)
    routers = (
        collections.router,
        faces.router,
        users.router,
        images.router,
        keys.router,
        audit.router,
        health.router,
        rekognition.router,
        console.router,
        console_records.router,
    )
    for router in routers:
        app.include_router(router)
    app.mount("/ui/static", console_static, name="console-static")
    app.add_exception_handler(SignIn, to_sign_in)

    serving = (context.settings if context else settings or get_settings()).serving
    openapi.install(app, serving, accountable=context.accountable if context else True)
    app.add_middleware(PublicRateLimit, rate=serving.public_rate_per_s, burst=serving.public_burst)
    # A multipart body holds up to two uploads (compare) and its form fields.
    app.add_middleware(
        BodyLimit, limit=2 * serving.max_upload_bytes + BODY_SLACK_BYTES, json_limit=serving.max_json_bytes
    )
    app.add_middleware(RequestMetrics)

    async def any_error(_: Request, exc: Exception) -> JSONResponse:
        described = failure(exc)
        if described.code == "INTERNAL_ERROR":
            log.error("unexpected error", exc_info=exc)
        response = envelope(described.status, described.code, described.message, **described.details)
        if described.status == 429:
            response.headers["Retry-After"] = str(max(1, round(float(str(described.details["retry_after_s"])))))
        return response

    # The errors a request can cause or meet, each by name (so that Starlette answers them without treating them
    # as crashes), and anything else last, as a 500 in the same envelope.
    for expected in (FacegridError, ImageError, StorageError, RayError, TimeoutError, Exception):
        app.add_exception_handler(expected, any_error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes, wrong methods, bodies Starlette cannot parse (malformed multipart, oversized fields).
        code = HTTP_CODES.get(exc.status_code, "INVALID_REQUEST")
        response = envelope(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        allowed = allowed_methods(request.app, request.url.path) if exc.status_code == 405 else []
        if allowed:  # RFC 9110: every method the resource has (Starlette names one route's)
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors()]
        message = clipped("; ".join(fields), 1000) or ""
        caller = getattr(request.state, "caller", None)
        if caller is not None:  # an authenticated request whose fields failed: refused, and audited as such
            route = getattr(request.scope.get("route"), "path", request.url.path)
            entry = {
                "action": AUDITED_ROUTES.get(route, "invalid-request"),
                "collection": request.path_params.get("collection"),
                "method": request.method,
                "route": route,
                "problem": message,
            }
            await record(request.app.state.context, caller, entry, "refused", "INVALID_REQUEST")
        # A value the rules refuse (not finite, out of range, too long) is a 400 like our own checks'; a body of
        # the wrong shape (a field missing, a type wrong) stays FastAPI's 422.
        status = 400 if _value_refusal(exc.errors()) else 422
        return envelope(status, "INVALID_REQUEST", message)

    return app
