"""The FastAPI application: routes, JSON errors with stable codes, request counting."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.errors import FacegridError
from cluster.pipeline.errors import ImageError, Reason
from cluster.settings import Settings, get_settings
from cluster.storage import StorageAuthError, StorageError
from serving.routes import audit, collections, faces, health, images
from serving.service import FaceService

IMAGE_STATUS = {Reason.IMAGE_TOO_LARGE: 413}


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


def _error(status: int, code: str, message: str, **details: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **details}}, status_code=status)


def create_app(settings: Settings | None = None, service: FaceService | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or FaceService(settings or get_settings())
        yield
        app.state.service.executor.shutdown(wait=False)
        app.state.service.fanout_executor.shutdown(wait=False)

    app = FastAPI(title="facegrid", version="0.1.0", lifespan=lifespan)
    app.state.request_counts = Counter()
    for router in (collections.router, faces.router, images.router, audit.router, health.router):
        app.include_router(router)

    app.add_middleware(RequestCounter, counts=app.state.request_counts)

    @app.exception_handler(FacegridError)
    async def facegrid_error(_: Request, exc: FacegridError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, **exc.details)

    @app.exception_handler(ImageError)
    async def image_error(_: Request, exc: ImageError) -> JSONResponse:
        return _error(IMAGE_STATUS.get(exc.reason, 422), str(exc.reason), exc.message)

    @app.exception_handler(StorageAuthError)
    async def storage_auth(_: Request, exc: StorageAuthError) -> JSONResponse:
        return _error(502, "STORAGE_AUTH_FAILED", str(exc))

    @app.exception_handler(StorageError)
    async def storage_error(_: Request, exc: StorageError) -> JSONResponse:
        return _error(502, "STORAGE_ERROR", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors()]
        return _error(422, "INVALID_REQUEST", "; ".join(fields))

    return app
