"""The API process's Prometheus series (GET /metrics), through prometheus_client: requests and their latency by
route, partial answers, shard health as each search saw it, audit append latency, refusals by code."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import stages

# A registry of our own: the process-wide default would also collect whatever other libraries register there.
REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "facegrid_requests", "Requests answered, by route and status", ("method", "route", "status"), registry=REGISTRY
)
LATENCY = Histogram(
    "facegrid_request_seconds",
    "Seconds from request to answer, by route",
    ("method", "route"),
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
PARTIAL = Counter(
    "facegrid_partial_answers", "Searches answered without some shard", ("collection",), registry=REGISTRY
)
SHARD_UP = Gauge(
    "facegrid_shard_up",
    "1 if the shard answered this server's last search of it, else 0",
    ("collection", "shard"),
    registry=REGISTRY,
)
AUDIT_APPEND = Histogram(
    "facegrid_audit_append_seconds",
    "Seconds an audit record took to be stored",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    registry=REGISTRY,
)
REFUSALS = Counter("facegrid_refusals", "Requests the system refused, by code", ("code",), registry=REGISTRY)


def shards_seen(collection: str, shards: Iterable[int], missing: Iterable[int]) -> None:
    gone = set(missing)
    for shard in shards:
        SHARD_UP.labels(collection, str(shard)).set(0 if shard in gone else 1)
    partial = PARTIAL.labels(collection)  # shown from the first search on, at 0 until one is partial
    if gone:
        partial.inc()


def exposition() -> bytes:
    return generate_latest(REGISTRY)


class RequestMetrics:
    """Counts and times requests by method, route and status; plain ASGI, which costs less per request than
    Starlette's BaseHTTPMiddleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        began = time.perf_counter()
        stages.begin()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status[0])).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - began)
            if status[0] == 429:
                REFUSALS.labels("TOO_MANY_REQUESTS").inc()
            stages.finish("http_out")
