"""The FastAPI application: routes, errors in one envelope with stable codes, request counting."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.errors import FacegridError
from cluster.pipeline.errors import ImageError
from cluster.settings import Settings, get_settings
from cluster.storage import StorageError
from serving.console import records as console_records
from serving.console import routes as console
from serving.console.web import SignIn, to_sign_in
from serving.console.web import static as console_static
from serving.routes import audit, collections, faces, health, images, keys, rekognition, users
from serving.usecases.context import Context
from serving.usecases.failures import failure

log = logging.getLogger("facegrid.api")
HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "REQUEST_TOO_LARGE"}


class RequestCounter:
    """Counts requests by method, route and status for /metrics; plain ASGI, which costs less per request than
    Starlette's BaseHTTPMiddleware."""

    def __init__(self, app: ASGIApp, counts: Counter[tuple[str, str, int]]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.counts[(scope["method"], route, status[0])] += 1


def envelope(status: int, code: str, message: str, **details: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **details}}, status_code=status)


def create_app(settings: Settings | None = None, context: Context | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.context = context or Context(settings or get_settings())
        yield
        app.state.context.close()

    app = FastAPI(title="facegrid", version="0.2.0", lifespan=lifespan)
    app.state.request_counts = Counter()
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

    app.add_middleware(RequestCounter, counts=app.state.request_counts)

    async def any_error(_: Request, exc: Exception) -> JSONResponse:
        described = failure(exc)
        if described.code == "INTERNAL_ERROR":
            log.error("unexpected error", exc_info=exc)
        return envelope(described.status, described.code, described.message, **described.details)

    # The errors a request can cause or meet, each by name (so that Starlette answers them without treating them
    # as crashes), and anything else last, as a 500 in the same envelope.
    for expected in (FacegridError, ImageError, StorageError, RayError, TimeoutError, Exception):
        app.add_exception_handler(expected, any_error)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes, wrong methods, bodies Starlette cannot parse (malformed multipart, oversized fields).
        code = HTTP_CODES.get(exc.status_code, "INVALID_REQUEST")
        return envelope(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors()]
        return envelope(422, "INVALID_REQUEST", "; ".join(fields))

    return app
