"""Test data and one-call helpers: synthetic vectors and records, index runs through the real use case."""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.indexing.embedder import IndexRequest
from cluster.keys.access import local_operator
from cluster.settings import Settings
from jobs.bench.synthetic import face_records
from serving.usecases import indexing
from serving.usecases.context import Context

PER_IDENTITY = 5


def clustered_vectors(count: int, dim: int, seed: int = 0, noise: float = 0.27) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic identity clusters of unit vectors (index mechanics, not benchmark figures); vectors and owners."""
    rng = np.random.default_rng(seed)
    identities = max(1, count // PER_IDENTITY)
    centres = rng.standard_normal((identities, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.arange(count) % identities
    vectors = centres[owner] + rng.standard_normal((count, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), owner


def records(vectors: np.ndarray, start: int = 0) -> pa.Table:
    """Face records for these vectors, faiss ids start + 1 onwards."""
    return face_records(vectors, start, PER_IDENTITY)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (bogus) data chunk: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def index(where: Settings | Context, collection: str, source: str, **asked: Any) -> dict[str, Any]:
    """Run an index job through the application layer, as the CLI does, as the local operator."""
    ctx = where if isinstance(where, Context) else Context(where)
    request = IndexRequest.model_validate({"collection": collection, "source": source, **asked})
    try:
        return asyncio.run(indexing.index(ctx, local_operator(), request))
    finally:
        if ctx is not where:
            ctx.close()
