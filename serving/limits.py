"""Limits applied before any route runs: request body size, and per-client rates on the routes that need no key."""

from __future__ import annotations

import json
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC_PATHS = ("/v1/transparency", "/healthz", "/readyz", "/ui/transparency")
# Buckets kept at most; past that the fullest (idle longest) are forgotten, so that spoofed addresses cannot grow it.
MAX_CLIENTS = 10_000


class PublicRateLimit:
    """A token bucket per client address, `rate` tokens a second up to `burst`; plain ASGI (no per-request
    middleware object), and only on PUBLIC_PATHS: keyed routes are limited by what their keys may do."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.rate = rate
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)

    def _take(self, client: str) -> float:
        """0 when the request may go; else the seconds until a token is there."""
        now = time.monotonic()
        tokens, when = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if len(self.buckets) >= MAX_CLIENTS and client not in self.buckets:
            self.buckets = dict(sorted(self.buckets.items(), key=lambda kv: kv[1][1])[MAX_CLIENTS // 2 :])
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PUBLIC_PATHS or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else ""
        wait = self._take(client)
        if not wait:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        message = f"too many requests; retry after {retry} s"
        await _refuse(send, 429, "TOO_MANY_REQUESTS", message, ((b"retry-after", str(retry).encode()),))


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a request body over `limit` bytes (413) before it is parsed: by its Content-Length, or, sent in
    chunks, as soon as the count passes the limit. Multipart parsing and JSON decoding never see more. A JSON
    body of /v1 has `json_limit` (Rekognition's JSON carries base64 images: it has the upload limit)."""

    def __init__(self, app: ASGIApp, limit: int, json_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.json_limit = json_limit or limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        json_v1 = scope["path"].startswith("/v1/") and headers.get(b"content-type", b"").startswith(b"application/j")
        limit = self.json_limit if json_v1 else self.limit
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, 413, "REQUEST_TOO_LARGE", f"request bodies are at most {limit} bytes here")
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await _refuse(send, 413, "REQUEST_TOO_LARGE", f"request bodies are at most {limit} bytes here")


Headers = tuple[tuple[bytes, bytes], ...]


async def _refuse(send: Send, status: int, code: str, message: str, extra: Headers = ()) -> None:
    """An error envelope sent from below the application (before any route runs)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
