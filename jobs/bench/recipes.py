"""Benchmark behind the shards' recipe and the shard hosts (issue: the query path at the limit): one shard's index
specs side by side on vectors fitted to a model's embeddings, and what a Ray actor call costs on this machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import ray

from cluster.collections.index_spec import build, faiss_threads, rerank_factor, resolve
from cluster.raycluster import ensure_ray
from jobs.bench.stages import percentiles_ms, time_each
from jobs.bench.synthetic import FaceStatistics

SAMPLES_PER_IDENTITY = 5
PROBES = 300
TOP = 10


def _p50_ms(work: Callable[[np.ndarray], Any], probes: np.ndarray) -> float:
    return percentiles_ms(time_each(work, probes))[0]


def recipes(
    statistics: FaceStatistics, faces: int, specs: list[tuple[str, list[int]]], seed: int = 0
) -> list[dict[str, Any]]:
    """Each spec over one shard of `faces` faces, one thread: single-query p50 of the index search, and mate
    recall@10 after the shards' exact re-rank of the index's shortlist, at each number of lists visited."""
    rng = np.random.default_rng(seed)
    centres = statistics.centres(faces // SAMPLES_PER_IDENTITY, rng)
    vectors = statistics.samples(np.repeat(centres, SAMPLES_PER_IDENTITY, axis=0), rng).astype(np.float32)
    identity = rng.choice(len(centres), PROBES, replace=False)
    probes = statistics.samples(centres[identity], rng).astype(np.float32)

    def mates(found: list[np.ndarray]) -> float:
        per_probe = [np.sum(row[:TOP] // SAMPLES_PER_IDENTITY == o) for row, o in zip(found, identity, strict=True)]
        return round(float(np.mean(per_probe)) / SAMPLES_PER_IDENTITY, 4)

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    out = [
        {
            "spec": "Flat (exact)",
            "p50_ms": _p50_ms(lambda q: exact.search(q, TOP), probes),
            "mate_recall_at_10": mates(list(exact.search(probes, TOP)[1])),
        }
    ]
    for spec, visits in specs:
        started = time.perf_counter()
        index = build(spec, vectors, np.arange(len(vectors), dtype=np.int64), seed=seed)
        built = round(time.perf_counter() - started, 1)
        for nprobe in visits:
            p50, found = _ivf_search(index, probes, TOP * rerank_factor(spec), nprobe)
            reranked = [
                row[np.argsort(-(vectors[row] @ q), kind="stable")] for q, row in zip(probes, found, strict=True)
            ]
            out.append(
                {
                    "spec": spec,
                    "lists_visited": nprobe,
                    "build_s": built,
                    "p50_ms": p50,
                    "mate_recall_at_10": mates(reranked),
                }
            )
    return out


def _ivf_search(index: faiss.Index, probes: np.ndarray, shortlist: int, nprobe: int) -> tuple[float, list[np.ndarray]]:
    """Single-query p50 on one thread, and each probe's shortlist (ids, -1 dropped)."""
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    with faiss_threads(1):
        p50 = _p50_ms(lambda q: index.search(q, shortlist, params=params), probes)
    found = index.search(probes, shortlist, params=params)[1]
    return p50, [row[row >= 0] for row in found]


class _Noop:
    def call(self, payload: Any) -> Any:
        return payload


def ray_calls(calls: int = 300) -> dict[str, float]:
    """p50 of one actor call with a query-sized payload, and of four to four actors at once."""
    ensure_ray()
    remote: Any = ray.remote(num_cpus=0.01)(_Noop)
    actors: list[Any] = [remote.remote() for _ in range(4)]
    try:
        ray.get([a.call.remote(0) for a in actors])
        query = np.zeros((1, 128), np.float32)
        one = _p50_ms(lambda q: ray.get(actors[0].call.remote(q)), np.repeat(query[None], calls, axis=0))
        four = _p50_ms(lambda q: ray.get([a.call.remote(q) for a in actors]), np.repeat(query[None], calls, axis=0))
    finally:
        for actor in actors:
            ray.kill(actor)
    return {"actor_call_p50_ms": one, "four_actor_calls_p50_ms": four}


def default_specs(faces: int, codes: str) -> list[tuple[str, list[int]]]:
    """The automatic spec at this size with the model's codes, and SQ8 with the old list count, each at a
    quarter, three eighths and half of its lists."""
    chosen = resolve("auto", faces, codes)
    old = resolve("auto", faces, "SQ8")
    out = []
    for spec in dict.fromkeys([old, chosen]):
        nlist = int(spec.split(",")[0][3:]) if spec.startswith("IVF") else 0
        if nlist:
            out.append((spec, [nlist // 4, 3 * nlist // 8, nlist // 2]))
    return out
