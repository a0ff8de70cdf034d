"""Benchmark: searches through the HTTP API and the shard fan-out over synthetic faces fitted to real embeddings,
against one in-process exact IndexFlatIP over the same vectors.

Identities have SAMPLES_PER_IDENTITY indexed samples (rows o*S .. o*S+S-1 belong to identity o, ids are row+1);
each probe is one more, held-out sample of an indexed identity, whose indexed samples are its mates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import multiprocessing
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import pyarrow as pa
import ray

from cluster.audit.verify import verify
from cluster.collections.index_spec import faiss_threads
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.collections.snapshot import resident_bytes, vectors_of
from cluster.keys.access import Role
from cluster.models.registry import DEFAULT_EMBEDDER, ModelRegistry
from cluster.raycluster import ensure_ray
from cluster.settings import Settings
from cluster.shards import local
from cluster.shards.host import auto_shard_count
from cluster.shards.set import ShardSet, cluster_nodes
from cluster.storage import LocalStore
from jobs.bench.promise import search_under_the_promise
from jobs.bench.stages import percentiles_ms, same_recipe_baseline, start_recording, stop_recording, time_each
from jobs.bench.synthetic import FaceStatistics, face_records
from serving.threaded import serve_in_thread
from serving.usecases.context import Context

SAMPLES_PER_IDENTITY = 5
ROWS_PER_FILE = 250_000
TOP = 10
WARMUP = 20
# The bench collection's floor: loose, so that the threshold never hides what the index found.
BENCH_MAX_FALSE_MATCH_RATE = 0.5
BASELINE_TIMED = 100
# The exact baseline is one in-memory index up to this size (10M 128-d faces); larger galleries are searched
# exactly a stored file at a time, and their single-query exact time is not measured.
EXACT_IN_MEMORY_BYTES = 6 * 2**30
LOAD_SECONDS = 10.0
BODY = {"purpose": "system-test", "case_id": "BENCH", "max_results": TOP}


@dataclass
class Gallery:
    """What the benchmark knows of its collection: probes, their identities, exact answers."""

    faces: int
    probes: np.ndarray
    probe_identity: np.ndarray
    exact_ids: np.ndarray  # (probes, TOP) from the exact baseline
    baseline_times: list[float]
    write_s: float


def write_gallery(
    collections: Collections, manifest: Manifest, stats: FaceStatistics, faces: int, queries: int, seed: int
) -> tuple[list[str], Gallery]:
    """Generate and store the faces a file at a time. The exact baseline is an in-memory IndexFlatIP filled
    alongside where it fits EXACT_IN_MEMORY_BYTES (its single-query time is then measured too); past that the files
    are read back one at a time and every probe's exact top 10 merged over them, so that memory stays bounded."""
    rng = np.random.default_rng(seed)
    identities = faces // SAMPLES_PER_IDENTITY
    probe_identity = np.sort(rng.choice(identities, min(queries, identities), replace=False))
    probe_centres = np.zeros((len(probe_identity), manifest.dim), np.float32)
    in_memory = identities * SAMPLES_PER_IDENTITY * manifest.dim * 4 <= EXACT_IN_MEMORY_BYTES
    baseline = faiss.IndexFlatIP(manifest.dim)
    files: list[str] = []
    started = time.perf_counter()
    per_file = ROWS_PER_FILE - ROWS_PER_FILE % SAMPLES_PER_IDENTITY
    for start in range(0, identities * SAMPLES_PER_IDENTITY, per_file):
        rows = min(per_file, identities * SAMPLES_PER_IDENTITY - start)
        first = start // SAMPLES_PER_IDENTITY
        centres = stats.centres(rows // SAMPLES_PER_IDENTITY, rng)
        vectors = stats.samples(np.repeat(centres, SAMPLES_PER_IDENTITY, axis=0), rng)
        chosen = (probe_identity >= first) & (probe_identity < first + len(centres))
        probe_centres[chosen] = centres[probe_identity[chosen] - first]
        key = f"collections/{manifest.name}/faces/bench-{len(files):05d}.parquet"
        collections.store.put_parquet(key, face_records(vectors, start, SAMPLES_PER_IDENTITY))
        if in_memory:
            baseline.add(vectors)
        files.append(key)
    write_s = time.perf_counter() - started
    probes = stats.samples(probe_centres, rng)

    if not in_memory:
        exact_ids = _exact_from_files(collections, manifest, files, probes)
        return files, Gallery(identities * SAMPLES_PER_IDENTITY, probes, probe_identity, exact_ids, [], write_s)
    with faiss_threads(1):  # one query on one core, as a shard answers it
        timed = time_each(lambda q: baseline.search(q, TOP), probes[:BASELINE_TIMED])
    _, rows = baseline.search(probes, TOP)  # the exact answers, on every core
    gallery = Gallery(baseline.ntotal, probes, probe_identity, rows + 1, timed, write_s)
    return files, gallery


def _exact_from_files(collections: Collections, manifest: Manifest, files: list[str], probes: np.ndarray) -> np.ndarray:
    """Every probe's exact top 10 ids over the stored faces, a file at a time (ties: the lower id, as FAISS)."""
    best = faiss.ResultHeap(len(probes), TOP, keep_max=True)
    for key in files:
        table = collections.store.get_parquet(key, ["faiss_id", "embedding"])
        vectors = vectors_of(table.column("embedding"), manifest.dim)
        similarities, rows = faiss.knn(probes, vectors, TOP, metric=faiss.METRIC_INNER_PRODUCT)
        ids = table.column("faiss_id").to_numpy()
        best.add_result(similarities, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1))
    best.finalize()
    return np.asarray(best.I)


def mate_recall(found: list[list[int]], probe_identity: np.ndarray) -> float:
    """The fraction of each probe's indexed samples found in its top 10, averaged over probes."""
    fractions = []
    for ids, identity in zip(found, probe_identity, strict=True):
        mates = sum(1 for i in ids[:TOP] if (i - 1) // SAMPLES_PER_IDENTITY == identity)
        fractions.append(mates / SAMPLES_PER_IDENTITY)
    return round(float(np.mean(fractions)), 4)


def exact_recall(found: list[list[int]], exact: np.ndarray) -> dict[str, float]:
    at1 = np.mean([bool(ids) and ids[0] == row[0] for ids, row in zip(found, exact, strict=True)])
    at10 = np.mean([len(set(ids[:TOP]) & set(row.tolist())) / TOP for ids, row in zip(found, exact, strict=True)])
    return {"recall_at_1": round(float(at1), 4), "recall_at_10": round(float(at10), 4)}


@contextmanager
def _client(service: Context, headers: dict[str, str]) -> Iterator[tuple[str, httpx.Client]]:
    with serve_in_thread(service) as url, httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        yield url, client


def _found(response: httpx.Response) -> list[int]:
    response.raise_for_status()
    body = response.json()
    if body["partial"]:
        raise RuntimeError(f"shards {body['missing_shards']} did not answer during the benchmark")
    return [int(m["face_id"], 16) for m in body["matches"]]


def sequential(
    clients: list[httpx.Client], probes: np.ndarray, body: dict[str, Any]
) -> tuple[list[list[float]], list[list[int]]]:
    """Single searches one after another, alternating between the servers query by query (they share the
    machine's ups and downs); the first WARMUP only warm up. Returns times per server and the first's answers."""
    times: list[list[float]] = [[] for _ in clients]
    answers: list[list[int]] = []
    for i, probe in enumerate(np.concatenate([probes[:WARMUP], probes])):
        for n, client in enumerate(clients):
            began = time.perf_counter()
            response = client.post("/v1/collections/bench/search-vector", json={**body, "vector": probe.tolist()})
            elapsed = time.perf_counter() - began
            found = _found(response)
            if i >= WARMUP:
                times[n].append(elapsed)
                if n == 0:
                    answers.append(found)
    return times, answers


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive connection: status and body (the server sends Content-Length)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


def _load(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    probes: list[list[float]],
    clients: int,
    seconds: float,
    collection: str = "bench",
) -> dict[str, Any]:
    """C clients on kept-alive connections, each sending its next search as soon as the last is answered.

    Runs in a process of its own and speaks bare HTTP/1.1 over asyncio streams with the requests prepared in
    advance: on a 2-core machine a full HTTP client library would take a third of the CPU from the server.
    """
    host, port = url.removeprefix("http://").split(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = []
    for probe in probes:
        payload = json.dumps({**body, "vector": probe}).encode()
        head = (
            f"POST /v1/collections/{collection}/search-vector HTTP/1.1\r\nHost: {host}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        requests.append(head.encode() + payload)

    async def client(stop: float, done: list[float], failed: list[str]) -> None:
        rng = random.Random()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop:
                began = time.perf_counter()
                status, answer = await _exchange(reader, writer, rng.choice(requests))
                if status != 200 or json.loads(answer)["partial"]:
                    failed.append(f"{status} {answer[:200]!r}")
                else:
                    done.append(time.perf_counter() - began)
        finally:
            writer.close()

    async def main() -> dict[str, Any]:
        await asyncio.gather(*(client(time.perf_counter() + 1.0, [], []) for _ in range(clients)))
        done: list[float] = []
        failed: list[str] = []
        began = time.perf_counter()
        await asyncio.gather(*(client(began + seconds, done, failed) for _ in range(clients)))
        elapsed = time.perf_counter() - began
        p50, p99 = percentiles_ms(done) if done else (0.0, 0.0)
        return {"qps": round(len(done) / elapsed, 1), "p50_ms": p50, "p99_ms": p99, "failed": len(failed)}

    return asyncio.run(main())


def concurrent_load(
    url: str, headers: dict[str, str], body: dict[str, Any], probes: np.ndarray, clients: int, collection: str = "bench"
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        asked = (url, headers, body, probes.tolist(), clients, LOAD_SECONDS, collection)
        result: dict[str, Any] = pool.apply(_load, asked)
    return result


def settled_resident_bytes() -> dict[str, int]:
    """This process's resident memory once freed memory has gone back to the system (Python's garbage, Arrow's
    pool, glibc's free lists): a build's freed gigabytes left resident made a later reading smaller than an
    earlier one."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return resident_bytes()


def shard_memory(settings: Settings, manifest: Manifest, before: dict[str, int]) -> dict[str, int]:
    """Resident memory of the shard hosts: in all, and the part that is file-backed pages (page cache of snapshot
    files read, and libraries). Summed over the actors; hosts in this process (`cluster/shards/local.py`) count as
    what this process grew by since `before` (it also holds the exact baseline and the server)."""
    hosts = ShardSet(settings, manifest.name).live(manifest)
    actors = [h for h in hosts if not isinstance(h, local.LocalHost)]
    infos = [local.result(h.info.remote()) for h in actors]
    grown = settled_resident_bytes() if len(actors) < len(hosts) else before
    kinds = ("total", "mapped_files")
    return {k: sum(int(i["resident_bytes"][k]) for i in infos) + grown[k] - before[k] for k in kinds}


def run_search_benchmark(
    settings: Settings,
    faces: int,
    shards: int | str,
    queries: int,
    store_dir: Path | None,
    statistics: FaceStatistics,
    index: str = "auto",
    clients: int = 16,
    compare_accountability: bool = False,
    knobs: dict[str, int] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    model_id: str = DEFAULT_EMBEDDER,
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    if shards == "auto":
        shards = auto_shard_count(cluster_nodes(), faces)
    shards = int(shards)
    body = {**BODY, **(knobs or {})}  # per-query nprobe / ef_search go with every search
    root = Path(tempfile.mkdtemp(prefix="facegrid-bench-", dir=store_dir))
    try:
        settings = settings.model_copy(update={"store": str(root)})
        registry = ModelRegistry(settings.model_dir)
        collections = Collections(LocalStore(root))
        manifest = collections.create(
            Manifest(
                name="bench",
                **registry.pin(model_id),
                shard_count=shards,
                index_spec=index,
                max_false_match_rate=BENCH_MAX_FALSE_MATCH_RATE,
            )
        )
        say(f"generating {faces:,} faces")
        files, gallery = write_gallery(collections, manifest, statistics, faces, queries, seed)
        say(f"building {shards} shards")
        started = time.perf_counter()
        manifest = Publisher(collections).publish(manifest, files)
        build_s = time.perf_counter() - started

        ensure_ray()
        accountable = Context(settings)
        token = accountable.keys.create(Role.SEARCHER, label="bench")[1]
        variants = [(accountable, {"X-API-Key": token})]
        if compare_accountability:
            variants.append((Context(settings, accountable=False), {}))
        with ExitStack() as stack:
            served = [stack.enter_context(_client(service, headers)) for service, headers in variants]
            say("loading shards")
            before = settled_resident_bytes()
            started = time.perf_counter()
            _found(
                served[0][1].post("/v1/collections/bench/search-vector", json={**body, "vector": [1.0] * manifest.dim})
            )
            load_s = time.perf_counter() - started
            say(f"{len(gallery.probes)} single searches")
            if not compare_accountability:  # the breakdown is of the accountable server alone
                start_recording(settings, manifest)
            times, answers = sequential([client for _, client in served], gallery.probes, body)
            breakdown = {} if compare_accountability else stop_recording(settings, manifest)
            say(f"{clients} clients for {LOAD_SECONDS:.0f} s")
            load = concurrent_load(served[0][0], variants[0][1], body, gallery.probes, clients)
            say("one search under the default per-search promise")
            promise = search_under_the_promise(accountable, served[0][1], manifest, gallery.probes[0], body)
        resident = shard_memory(settings, manifest, before)
        p50, p99 = percentiles_ms(times[0])
        baseline: dict[str, Any] = {"baseline_same_recipe_p50_ms": None}
        baseline_p50 = baseline_p99 = None
        if gallery.baseline_times:  # a gallery that fits one in-memory index (see EXACT_IN_MEMORY_BYTES)
            say("the same recipe in one in-process index")
            probes = gallery.probes[:BASELINE_TIMED]
            baseline = same_recipe_baseline(collections, manifest, probes, TOP, knobs or {})
            baseline_p50, baseline_p99 = percentiles_ms(gallery.baseline_times)
        same_p50 = baseline["baseline_same_recipe_p50_ms"]
        result: dict[str, Any] = {
            "faces": gallery.faces,
            "shards": shards,
            "local_shards": settings.serving.local_shards,
            "index": index,
            "built_spec": manifest.built_spec,
            "knobs": knobs or "defaults",
            "queries": len(gallery.probes),
            "p50_ms": p50,
            "p99_ms": p99,
            "clients": clients,
            "qps": load["qps"],
            "p50_ms_loaded": load["p50_ms"],
            "p99_ms_loaded": load["p99_ms"],
            "failed_queries": load["failed"],
            "mate_recall_at_10": mate_recall(answers, gallery.probe_identity),
            **exact_recall(answers, gallery.exact_ids),
            "bytes_per_face": round(resident["total"] / gallery.faces, 1),
            "mapped_bytes_per_face": round(resident["mapped_files"] / gallery.faces, 1),
            "shard_resident_mb": round(resident["total"] / 2**20, 1),
            "build_s": round(build_s, 1),
            "write_s": round(gallery.write_s, 1),
            "load_s": round(load_s, 1),
            "baseline_p50_ms": baseline_p50,
            "baseline_p99_ms": baseline_p99,
            "baseline_mate_recall_at_10": mate_recall(gallery.exact_ids.tolist(), gallery.probe_identity),
            **baseline,
            "overhead_p50_ms": None if same_p50 is None else round(p50 - same_p50, 3),
            **breakdown,
            "promise": promise,
            "audit_records_verified": verify(LocalStore(root)).get("records"),
        }
        if compare_accountability:
            bare_p50, bare_p99 = percentiles_ms(times[1])
            result |= {
                "p50_ms_without_auth_audit": bare_p50,
                "p99_ms_without_auth_audit": bare_p99,
                "auth_audit_overhead_p50_pct": round(100 * (p50 - bare_p50) / bare_p50, 1),
            }
        return result
    finally:
        held = Collections(LocalStore(root))
        if ray.is_initialized() and "bench" in held.names():
            ShardSet(settings, "bench").retire(held.get("bench"))
        shutil.rmtree(root, ignore_errors=True)
