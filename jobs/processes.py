"""`facegrid serve` as a child process: started on 127.0.0.1 in a process group of its own, stopped with all it
started (its embedded Ray too). Used by the race harness and the tests of live servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jobs.s3local import free_port


def serve_process(env: dict[str, str], log: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """`facegrid serve` in a process group of its own (with its embedded Ray, if it starts one); its URL once
    /healthz answers. Stop it with `stop_process`."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API process exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError(f"the API process did not start: {log.read_text()[-2000:]}")


def stop_process(process: subprocess.Popen[bytes], hard: bool = False) -> None:
    """The process and everything it started (an embedded Ray's processes too): SIGKILL when `hard`, a crash."""
    try:
        os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
        process.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
