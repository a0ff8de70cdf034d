"""Benchmarks of the serving path under load: an S3 store against a local folder (the audit's group commit), and a
searcher's latency while anonymous clients hammer the transparency report."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cluster.audit.log import AuditLog
from cluster.audit.verify import verify
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.keys.access import Role
from cluster.raycluster import ensure_ray
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from cluster.storage import S3Store, open_store
from jobs import s3local
from jobs.bench.search import BENCH_MAX_FALSE_MATCH_RATE, BODY, concurrent_load
from jobs.bench.stages import percentiles_ms
from jobs.bench.synthetic import face_records
from serving.metrics import AUDIT_APPEND
from serving.threaded import serve_in_thread
from serving.usecases.context import Context

S3_KEYS = ("facegrid-bench", "facegrid-bench-secret-123")
PER_IDENTITY = 5


def _gallery(faces: int, probes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identity clusters of unit vectors (128-d), and probes that are new samples of indexed identities."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((faces // PER_IDENTITY, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def samples(of: np.ndarray) -> np.ndarray:
        out = of + rng.standard_normal(of.shape).astype(np.float32) * (0.27 / np.sqrt(128))
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    return samples(np.repeat(centres, PER_IDENTITY, axis=0)), samples(centres[rng.choice(len(centres), probes)])


def _collection(settings: Settings, name: str, vectors: np.ndarray, shards: int) -> Manifest:
    collections = Collections(open_store(settings.store, settings))
    manifest = collections.create(
        Manifest(
            name=name,
            model_id="dlib-resnet-v1",
            model_sha256="synthetic",
            shard_count=shards,
            index_spec="Flat",
            max_false_match_rate=BENCH_MAX_FALSE_MATCH_RATE,
        )
    )
    key = f"collections/{name}/faces/all.parquet"
    collections.store.put_parquet(key, face_records(vectors, 0, PER_IDENTITY))
    return Publisher(collections).publish(manifest, [key])


@contextmanager
def _served(settings: Settings) -> Iterator[tuple[str, dict[str, str], Context]]:
    ctx = Context(settings)
    token = ctx.keys.create(Role.SEARCHER, label="bench")[1]
    try:
        with serve_in_thread(ctx) as url:
            yield url, {"X-API-Key": token}, ctx
    finally:
        ctx.close()


def run_store_benchmark(
    settings: Settings, faces: int, shards: int, clients: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """The same collection, searched by `clients` clients through the API with auth and audit, on a local folder
    and on a real S3 server (rclone on 127.0.0.1) one after the other: qps side by side."""
    vectors, probes = _gallery(faces, 500)
    root = Path(tempfile.mkdtemp(prefix="facegrid-bench-stores-"))
    ensure_ray()
    try:
        (root / "s3" / "store").mkdir(parents=True)
        with s3local.s3_server(root / "s3", *S3_KEYS) as endpoint:
            stores = {
                "local": settings.model_copy(update={"store": str(root / "local")}),
                "s3": settings.model_copy(
                    update={
                        "store": "s3://store",
                        "s3_endpoint": endpoint,
                        "s3_access_key": S3_KEYS[0],
                        "s3_secret_key": S3_KEYS[1],
                    }
                ),
            }
            out: dict[str, Any] = {"faces": faces, "shards": shards, "clients": clients}
            for kind, where in stores.items():
                say(f"{kind}: building {faces:,} faces in {shards} shards")
                manifest = _collection(where, f"bench-{kind}", vectors, shards)
                with _served(where) as (url, headers, ctx):
                    body = {**BODY, "vector": probes[0].tolist()}
                    httpx.post(f"{url}/v1/collections/{manifest.name}/search-vector", json=body, headers=headers)
                    say(f"{kind}: {clients} clients")
                    before = _audit_appends()
                    load = concurrent_load(url, headers, BODY, probes, clients, manifest.name)
                    after = _audit_appends()
                    verified = verify(ctx.store)
                    ShardSet(where, manifest.name).retire(manifest)
                appended, spent = after[0] - before[0], after[1] - before[1]
                out[kind] = {**load, "audit_verified": verified["ok"], "audit_records": verified.get("records")}
                out[kind]["audit_append_mean_ms"] = round(1000 * spent / appended, 2) if appended else None
                if isinstance(ctx.store, S3Store):
                    out[kind]["audit_segments"] = sum(1 for i in ctx.store.list("audit/") if i.key.endswith(".jsonl"))
            out["s3_to_local_qps"] = round(out["s3"]["qps"] / out["local"]["qps"], 3)
            return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _audit_appends() -> tuple[float, float]:
    """Audit appends so far in this process, and the seconds they took (the API's own histogram)."""
    [histogram] = AUDIT_APPEND.collect()
    samples = {sample.name: sample.value for sample in histogram.samples}
    return samples["facegrid_audit_append_seconds_count"], samples["facegrid_audit_append_seconds_sum"]


async def _hammer_async(url: str, clients: int, seconds: float) -> dict[str, int]:
    statuses: Counter[str] = Counter()
    stop = time.perf_counter() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while time.perf_counter() < stop:
                statuses[str((await http.get("/v1/transparency")).status_code)] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return dict(statuses)


def _hammer(url: str, clients: int, seconds: float) -> dict[str, int]:
    return asyncio.run(_hammer_async(url, clients, seconds))


def _searcher_p50(url: str, headers: dict[str, str], collection: str, probes: np.ndarray) -> tuple[float, float]:
    times = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for probe in probes:
            began = time.perf_counter()
            answer = client.post(f"/v1/collections/{collection}/search-vector", json={**BODY, "vector": probe.tolist()})
            answer.raise_for_status()
            times.append(time.perf_counter() - began)
    return percentiles_ms(times)


def run_transparency_benchmark(
    settings: Settings, records: int, hammers: int, searches: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """One searcher's latency idle, then while `hammers` anonymous clients ask for the transparency report as
    fast as they can, with the public rate limit on (the default) and off (the incremental report alone)."""
    vectors, probes = _gallery(5000, searches)
    root = Path(tempfile.mkdtemp(prefix="facegrid-bench-transparency-"))
    ensure_ray()
    try:
        local = settings.model_copy(update={"store": str(root)})
        manifest = _collection(local, "hammered", vectors, 2)
        log, filler = AuditLog(open_store(local.store, local)), {"action": "search", "outcome": "ok", "purpose": "x"}
        for start in range(0, records, 1000):
            log.append_many([filler] * min(1000, records - start))
        say(f"{records:,} audit records; {searches} searches idle, then under {hammers} clients")
        out: dict[str, Any] = {"audit_records_at_start": records, "hammering_clients": hammers, "searches": searches}
        spawn = multiprocessing.get_context("spawn")
        for limited in (True, False):
            serving = local.serving.model_copy(update={} if limited else {"public_rate_per_s": 0.0})
            with _served(local.model_copy(update={"serving": serving})) as (url, headers, _):
                _searcher_p50(url, headers, manifest.name, probes[:100])  # shards loaded, connections warm
                began = time.perf_counter()
                idle = _searcher_p50(url, headers, manifest.name, probes)
                lasting = 3 * (time.perf_counter() - began) + 2.0  # outlasts the searches under load
                with spawn.Pool(1) as pool:
                    pool.apply(_hammer, (url, 1, 0.0))  # the process has started and imported what it needs
                    hammer = pool.apply_async(_hammer, (url, hammers, lasting))
                    time.sleep(1.0)  # the hammering is under way
                    loaded = _searcher_p50(url, headers, manifest.name, probes)
                    counts = hammer.get()
            label = "rate_limited" if limited else "unlimited"
            out[label] = {
                "idle_p50_ms": idle[0],
                "hammered_p50_ms": loaded[0],
                "hammered_p99_ms": loaded[1],
                "p50_ratio": round(loaded[0] / idle[0], 2),
                "transparency_answers_by_status": counts,
            }
            ShardSet(local, manifest.name).retire(manifest)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
