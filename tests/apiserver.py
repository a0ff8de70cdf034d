"""Run the real API app on 127.0.0.1 in a thread, for tests that talk HTTP to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from serving.app import create_app
from serving.service import FaceService


@contextmanager
def api_server(service: FaceService) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(create_app(service=service), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
