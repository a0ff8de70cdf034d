"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import Ctx, errors
from serving.metrics import exposition

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=errors(public=True))
def readyz(ctx: Ctx) -> dict[str, Any]:
    ctx.collections.names()  # the store answers
    return {"status": "ready", "store": ctx.store.uri}


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus exposition of this API process (the cluster's actors export theirs through Ray's agents)."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
