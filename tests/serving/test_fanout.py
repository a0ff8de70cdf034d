"""Fan-out: the heap merge equals brute force on synthetic data, and a slow shard is named, not dropped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faiss
import numpy as np
import ray

from serving.fanout import fan_out, merge

DIM = 32


def _data(n: int = 4000, queries: int = 25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n + queries, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def _shard_indexes(vectors: np.ndarray, shards: int) -> list[faiss.Index]:
    indexes = []
    for s in range(shards):
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        ids = np.arange(len(vectors), dtype=np.int64)[np.arange(len(vectors)) % shards == s]
        index.add_with_ids(vectors[ids], ids)
        indexes.append(index)
    return indexes


def test_heap_merge_equals_brute_force() -> None:
    vectors, queries = _data()
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    _, want = exact.search(queries, 10)
    per_shard = {}
    for s, index in enumerate(_shard_indexes(vectors, 4)):
        scores, ids = index.search(queries, 10)
        per_shard[s] = (scores, ids, [[{} for _ in row] for row in ids])
    merged = merge(per_shard, len(queries), 10)
    assert [[h.faiss_id for h in hits] for hits in merged] == want.tolist()


class FakeShard:
    """A stand-in actor over a FAISS index, optionally slow: exercises our fan-out, not our shard class."""

    def __init__(self, index_bytes: np.ndarray, delay: float) -> None:
        self.index = faiss.deserialize_index(index_bytes)
        self.delay = delay

    def search(
        self, queries: np.ndarray, k: int, knobs: object = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
        time.sleep(self.delay)
        scores, ids = self.index.search(queries, k)
        return scores, ids, [[{} for _ in row] for row in ids]


def test_slow_shard_is_reported_missing(local_ray: None) -> None:
    vectors, queries = _data()
    remote = ray.remote(num_cpus=0.1)(FakeShard)
    handles = {
        s: remote.remote(faiss.serialize_index(index), 5.0 if s == 2 else 0.0)
        for s, index in enumerate(_shard_indexes(vectors, 4))
    }
    ray.get([h.search.remote(queries[:1], 1) for s, h in handles.items() if s != 2])  # started
    result = asyncio.run(fan_out({s: [h] for s, h in handles.items()}, queries, 10, timeout=1.0))
    assert result.partial and result.missing_shards == [2]
    kept = np.arange(len(vectors))[np.arange(len(vectors)) % 4 != 2]
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors[kept])
    _, want = exact.search(queries, 10)
    assert [[h.faiss_id for h in hits] for hits in result.hits] == kept[want].tolist()
