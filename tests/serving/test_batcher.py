"""Micro-batching: a lone query goes at once; concurrent ones share fan-outs and each gets its own answer."""

from __future__ import annotations

import asyncio
import time

import faiss
import numpy as np
import pytest

from cluster.collections.index_spec import SearchKnobs
from serving.batcher import MicroBatcher
from serving.fanout import FanOutResult, merge

DIM = 16


class Shards:
    """Two in-process FAISS shards behind the batcher's `run`, as the fan-out would call them (Ray left out)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.vectors = rng.standard_normal((1000, DIM)).astype(np.float32)
        self.indexes = []
        for shard in range(2):
            index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
            ids = np.arange(shard, 1000, 2)
            index.add_with_ids(self.vectors[ids], ids)
            self.indexes.append(index)
        self.calls: list[tuple[int, SearchKnobs]] = []

    async def run(self, queries: np.ndarray, k: int, knobs: SearchKnobs) -> FanOutResult:
        self.calls.append((len(queries), knobs))
        await asyncio.sleep(0.02)  # a fan-out's round trip, during which later queries gather
        answers = {}
        for shard, index in enumerate(self.indexes):
            scores, ids = index.search(queries, k)
            answers[shard] = (scores, ids, [[{"id": int(i)} for i in row] for row in ids])
        return FanOutResult(merge(answers, len(queries), k), [])


def test_a_lone_query_goes_at_once() -> None:
    shards = Shards()
    batcher = MicroBatcher(shards.run)
    result = asyncio.run(batcher.search(shards.vectors[:1], 5))
    assert shards.calls == [(1, SearchKnobs())]
    assert result.hits[0][0].faiss_id == 0 and len(result.hits[0]) == 5


def test_concurrent_queries_share_fan_outs_and_get_their_own_answers() -> None:
    shards = Shards()
    batcher = MicroBatcher(shards.run, in_flight=1, max_batch=64)

    async def many() -> list[FanOutResult]:
        return await asyncio.gather(*(batcher.search(shards.vectors[i : i + 1], 3 + i % 5) for i in range(40)))

    results = asyncio.run(many())
    print(f"40 queries in {len(shards.calls)} fan-outs: {[n for n, _ in shards.calls]}")
    assert len(shards.calls) < 10 and sum(n for n, _ in shards.calls) == 40
    exact = faiss.IndexFlatIP(DIM)
    exact.add(shards.vectors)
    for i, result in enumerate(results):
        want = exact.search(shards.vectors[i : i + 1], 3 + i % 5)[1][0].tolist()
        assert [h.faiss_id for h in result.hits[0]] == want  # own query, own k


def test_knobs_are_never_mixed_in_a_batch() -> None:
    shards = Shards()
    batcher = MicroBatcher(shards.run, in_flight=1)
    knobs = [SearchKnobs(), SearchKnobs(nprobe=8)]

    async def mixed() -> None:
        await asyncio.gather(*(batcher.search(shards.vectors[i : i + 1], 3, knobs[i % 2]) for i in range(20)))

    asyncio.run(mixed())
    assert len({k for _, k in shards.calls}) == 2 and len(shards.calls) >= 2


def test_a_failed_fan_out_fails_its_queries_only() -> None:
    calls = []

    async def flaky(queries: np.ndarray, k: int, knobs: SearchKnobs) -> FanOutResult:
        calls.append(len(queries))
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise RuntimeError("shard set went away")
        return FanOutResult([[] for _ in queries], [])

    async def run() -> list[FanOutResult | BaseException]:
        batcher = MicroBatcher(flaky)
        first = asyncio.ensure_future(batcher.search(np.zeros((1, DIM), np.float32), 3))
        await asyncio.sleep(0)
        later = [batcher.search(np.zeros((1, DIM), np.float32), 3) for _ in range(3)]
        return await asyncio.gather(first, *later, return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[0], RuntimeError)
    assert all(isinstance(r, FanOutResult) for r in results[1:])


class GatedShards(Shards):
    """Shards whose fan-outs wait for the test to open a gate: batches depend on order, not on timing."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    async def run(self, queries: np.ndarray, k: int, knobs: SearchKnobs) -> FanOutResult:
        if self.gate is not None:
            await self.gate.wait()
        return await super().run(queries, k, knobs)


def test_a_window_gathers_more_under_load_only() -> None:
    shards = GatedShards()
    window_s = 1.0  # long, so that a loaded machine cannot miss it: the late queries come microseconds after
    batcher = MicroBatcher(shards.run, in_flight=1, window_s=window_s)

    async def waves() -> float:
        began = time.perf_counter()
        await batcher.search(shards.vectors[:1], 3)  # alone: goes at once, no window
        alone_s = time.perf_counter() - began
        shards.gate = asyncio.Event()
        first = asyncio.ensure_future(batcher.search(shards.vectors[:1], 3))
        await asyncio.sleep(0)  # its fan-out starts and waits at the gate
        early = [asyncio.ensure_future(batcher.search(shards.vectors[i : i + 1], 3)) for i in range(5)]
        await asyncio.sleep(0)
        shards.gate.set()
        await first  # the fan-out ahead has returned: the window opens now
        late = [asyncio.ensure_future(batcher.search(shards.vectors[i : i + 1], 3)) for i in range(5)]
        await asyncio.gather(*early, *late)
        return alone_s

    alone_s = asyncio.run(waves())
    assert [n for n, _ in shards.calls] == [1, 1, 10] and alone_s < window_s


def test_a_cancelled_fan_out_fails_its_queries_and_the_next_ones_go() -> None:
    shards = Shards()
    stuck = asyncio.Event()

    async def hangs_once(queries: np.ndarray, k: int, knobs: SearchKnobs) -> FanOutResult:
        if not stuck.is_set():
            stuck.set()
            await asyncio.sleep(3600)
        return await shards.run(queries, k, knobs)

    async def run() -> FanOutResult:
        batcher = MicroBatcher(hangs_once, in_flight=1)
        first = asyncio.create_task(batcher.search(shards.vectors[:1], 5))
        await stuck.wait()
        for task in list(batcher._tasks):
            task.cancel()
        with pytest.raises(RuntimeError, match="the fan-out ended"):
            await asyncio.wait_for(first, 2)
        return await asyncio.wait_for(batcher.search(shards.vectors[:1], 5), 2)

    assert asyncio.run(run()).hits[0][0].faiss_id == 0
