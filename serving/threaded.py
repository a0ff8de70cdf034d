"""Run the API on 127.0.0.1 in a background thread of this process: for benchmarks and tests that talk HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from serving.app import create_app
from serving.usecases.context import Context


@contextmanager
def serve_in_thread(context: Context) -> Iterator[str]:
    """Yields the base URL; the server stops when the block ends."""
    server = uvicorn.Server(uvicorn.Config(create_app(context=context), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API server failed to start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
