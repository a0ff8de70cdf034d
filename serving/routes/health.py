"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from serving.deps import Ctx, errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=errors(public=True))
def readyz(ctx: Ctx) -> dict[str, Any]:
    ctx.collections.names()  # the store answers
    return {"status": "ready", "store": ctx.store.uri}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    counts: dict[tuple[str, str, int], int] = request.app.state.request_counts
    lines = ["# TYPE facegrid_requests_total counter"]
    for (method, route, status), n in sorted(counts.items()):
        lines.append(f'facegrid_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
