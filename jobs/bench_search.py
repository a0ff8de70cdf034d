"""Benchmark: single-vector searches through the HTTP API and the shard fan-out, against one in-process FAISS search."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import pyarrow as pa

from cluster.access import Role
from cluster.audit import verify
from cluster.collection import FACE_SCHEMA, Collections, Manifest, shard_of
from cluster.models.registry import EMBEDDER_ID, ModelRegistry
from cluster.raycluster import ensure_ray
from cluster.settings import Settings
from cluster.storage import LocalStore
from serving.service import FaceService
from serving.threaded import serve_in_thread

# Spread of a person's samples around their centre: two samples of one identity then have cosine about 0.93, as
# two lfw-dev photos of one person do on average with our model.
WITHIN_IDENTITY_NOISE = 0.27
SAMPLES_PER_IDENTITY = 5
ROWS_PER_FILE = 50_000


def synthetic_faces(count: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in identity clusters; returns (vectors, identity of each)."""
    rng = np.random.default_rng(seed)
    identities = max(1, count // SAMPLES_PER_IDENTITY)
    centres = rng.standard_normal((identities, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.arange(count) % identities
    noise = rng.standard_normal((count, dim)).astype(np.float32) * (WITHIN_IDENTITY_NOISE / np.sqrt(dim))
    vectors = centres[owner] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), owner


def _records(vectors: np.ndarray, owner: np.ndarray, start: int, shard_count: int) -> pa.Table:
    now = datetime.now(UTC)
    ids = np.arange(start, start + len(vectors), dtype=np.int64) + 1
    return pa.Table.from_pylist(
        [
            {
                "face_id": f"{i:016x}",
                "faiss_id": int(i),
                "external_image_id": f"synthetic/{o}/{i}",
                "source_key": f"synthetic://{o}/{i}",
                "source_etag": "",
                "face_index": 0,
                "bbox": [0.0, 0.0, 0.0, 0.0],
                "landmarks": [0.0] * 10,
                "confidence": 1.0,
                "quality": "{}",
                "embedding": v.tolist(),
                "shard": shard_of(int(i), shard_count),
                "job_id": "bench",
                "indexed_at": now,
            }
            for i, o, v in zip(ids, owner, vectors, strict=True)
        ],
        FACE_SCHEMA,
    )


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


@contextmanager
def _client(service: FaceService, headers: dict[str, str]) -> Iterator[httpx.Client]:
    with serve_in_thread(service) as url, httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        yield client


def _http_latencies(variants: list[tuple[FaceService, dict[str, str]]], probes: np.ndarray) -> list[list[float]]:
    """Sequential single-vector searches through real servers on 127.0.0.1, alternating between the variants query
    by query so that they share the machine's ups and downs; the first 20 queries only warm up."""
    body = {"purpose": "system-test", "case_id": "BENCH", "max_results": 10, "threshold": 0.99}
    times: list[list[float]] = [[] for _ in variants]
    with ExitStack() as stack:
        clients = [stack.enter_context(_client(service, headers)) for service, headers in variants]
        for i, probe in enumerate(np.concatenate([probes[:20], probes])):
            for client, samples in zip(clients, times, strict=True):
                began = time.perf_counter()
                response = client.post("/v1/collections/bench/search-vector", json={**body, "vector": probe.tolist()})
                elapsed = time.perf_counter() - began
                response.raise_for_status()
                if response.json()["partial"]:
                    raise RuntimeError("a shard did not answer during the benchmark")
                if i >= 20:
                    samples.append(elapsed)
    return times


def build_collection(root: Path, settings: Settings, faces: int, shards: int) -> tuple[np.ndarray, float]:
    """A collection of synthetic faces written and published through the normal Parquet + snapshot path."""
    registry = ModelRegistry(settings.model_dir)
    registry.ensure(EMBEDDER_ID)
    card = registry.card(EMBEDDER_ID) or {}
    collections = Collections(LocalStore(root))
    manifest = collections.create(
        Manifest(
            name="bench",
            model_id=EMBEDDER_ID,
            model_sha256=card["sha256"],
            shard_count=shards,
            max_false_match_rate=0.1,
        )
    )
    vectors, owner = synthetic_faces(faces, manifest.dim)
    started = time.perf_counter()
    files = []
    for start in range(0, faces, ROWS_PER_FILE):
        part = slice(start, start + ROWS_PER_FILE)
        key = f"collections/bench/faces/bench-{start // ROWS_PER_FILE:05d}.parquet"
        collections.store.put_parquet(key, _records(vectors[part], owner[part], start, shards))
        files.append(key)
    collections.publish(manifest, files)
    return vectors, time.perf_counter() - started


def run_search_benchmark(
    settings: Settings, faces: int, shards: int, queries: int, store_dir: Path | None
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="facegrid-bench-", dir=store_dir))
    try:
        settings = settings.model_copy(update={"store": str(root)})
        vectors, build_s = build_collection(root, settings, faces, shards)
        probes = synthetic_faces(queries, vectors.shape[1], seed=1)[0]

        faiss.omp_set_num_threads(1)
        baseline = faiss.IndexFlatIP(vectors.shape[1])
        baseline.add(vectors)
        baseline_times = []
        for probe in probes:
            began = time.perf_counter()
            baseline.search(probe[None], 10)
            baseline_times.append(time.perf_counter() - began)

        ensure_ray()
        accountable = FaceService(settings)
        token = accountable.keys.create(Role.SEARCHER, label="bench")[1]
        with_accountability, without = _http_latencies(
            [(accountable, {"X-API-Key": token}), (FaceService(settings, accountable=False), {})], probes
        )
        audit_ok = verify(LocalStore(root))
        p50, p99 = _percentiles(with_accountability)
        bare_p50, bare_p99 = _percentiles(without)
        baseline_p50, baseline_p99 = _percentiles(baseline_times)
        return {
            "faces": faces,
            "shards": shards,
            "queries": queries,
            "p50_ms": p50,
            "p99_ms": p99,
            "p50_ms_without_auth_audit": bare_p50,
            "p99_ms_without_auth_audit": bare_p99,
            "auth_audit_overhead_p50_pct": round(100 * (p50 - bare_p50) / bare_p50, 1),
            "audit_records_verified": audit_ok.get("records"),
            "baseline_p50_ms": baseline_p50,
            "baseline_p99_ms": baseline_p99,
            "target_p50_ms": round(2 * baseline_p50 + 5, 3),
            "meets_target": p50 <= 2 * baseline_p50 + 5,
            "build_s": round(build_s, 2),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
