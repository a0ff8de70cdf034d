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


class FakeHost:
    """A stand-in shard host over FAISS indexes, optionally slow or failing: exercises our fan-out, not our
    shard classes. Counts the calls it was asked."""

    def __init__(self, indexes: dict[int, np.ndarray], delay: float = 0.0, fails: bool = False) -> None:
        self.indexes = {s: faiss.deserialize_index(blob) for s, blob in indexes.items()}
        self.delay, self.fails, self.calls = delay, fails, 0

    def search(
        self, shards: list[int], queries: np.ndarray, k: int, knobs: object = None
    ) -> dict[int, tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]]:
        self.calls += 1
        time.sleep(self.delay)
        if self.fails:
            raise RuntimeError("this host is broken on purpose")
        out = {}
        for shard in shards:
            scores, ids = self.indexes[shard].search(queries, k)
            out[shard] = (scores, ids, [[{} for _ in row] for row in ids])
        return out

    def asked(self) -> int:
        return self.calls


def _exact(vectors: np.ndarray, queries: np.ndarray, keep: np.ndarray) -> list[list[int]]:
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors[keep])
    _, want = exact.search(queries, 10)
    return keep[want].tolist()


def _found(result: Any) -> list[list[int]]:
    return [[h.faiss_id for h in hits] for hits in result.hits]


def test_slow_shard_is_reported_missing(local_ray: None) -> None:
    vectors, queries = _data()
    remote = ray.remote(num_cpus=0.1)(FakeHost)
    handles = {
        s: remote.remote({s: faiss.serialize_index(index)}, 5.0 if s == 2 else 0.0)
        for s, index in enumerate(_shard_indexes(vectors, 4))
    }
    ray.get([h.search.remote([s], queries[:1], 1) for s, h in handles.items() if s != 2])  # started
    result = asyncio.run(fan_out({s: [h] for s, h in handles.items()}, queries, 10, timeout=1.0))
    assert result.partial and result.missing_shards == [2]
    kept = np.arange(len(vectors))[np.arange(len(vectors)) % 4 != 2]
    assert _found(result) == _exact(vectors, queries, kept)


def test_replicas_fail_over_and_hosts_answer_their_shards_in_one_call(local_ray: None) -> None:
    """Two hosts each hold all four shards: a search asks one of them once. When the one asked fails, or is
    slower than the hedge, the other answers in time: nothing is missing and the answer is exact."""
    vectors, queries = _data()
    blobs = {s: faiss.serialize_index(index) for s, index in enumerate(_shard_indexes(vectors, 4))}
    remote = ray.remote(num_cpus=0.1, max_concurrency=4)(FakeHost)
    everything = np.arange(len(vectors))
    alone = remote.remote(blobs)
    for _ in range(4):
        result = asyncio.run(fan_out({s: [alone] for s in blobs}, queries, 10, timeout=5.0))
        assert not result.partial and _found(result) == _exact(vectors, queries, everything)
    assert ray.get(alone.asked.remote()) == 4  # one call per host per search, never one per shard
    for trouble in ({"fails": True}, {"delay": 3.0}):
        bad, good = remote.remote(blobs, **trouble), remote.remote(blobs)
        ray.get([bad.asked.remote(), good.asked.remote()])  # started: the timing is the fan-out's alone
        handles = {s: [bad, good] for s in blobs}
        for _ in range(4):  # the picker turns between equally idle replicas: the bad one is asked first in some
            began = time.monotonic()
            result = asyncio.run(fan_out(handles, queries, 10, timeout=2.0, hedge=0.2))
            assert not result.partial and _found(result) == _exact(vectors, queries, everything)
            assert time.monotonic() - began < 2.0
        calls = ray.get([bad.asked.remote(), good.asked.remote()])
        assert calls[1] >= 4 and sum(calls) < 16, (trouble, calls)  # per shard would be 16 calls at least
        ray.kill(bad)
        ray.kill(good)
    # Every replica of a shard failing: that shard alone is missing.
    broken, working = remote.remote(blobs, fails=True), remote.remote(blobs)
    ray.get([broken.asked.remote(), working.asked.remote()])
    result = asyncio.run(fan_out({0: [broken], 1: [working]}, queries, 10, timeout=2.0))
    assert result.missing_shards == [0]
