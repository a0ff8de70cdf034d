"""Micro-batching: concurrent searches of one collection share fan-outs, so each shard gets one call per batch."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from cluster.collections.index_spec import SearchKnobs
from serving.fanout import FanOutResult

Run = Callable[[np.ndarray, int, SearchKnobs], Awaitable[FanOutResult]]


@dataclass
class _Waiting:
    queries: np.ndarray
    k: int
    knobs: SearchKnobs
    future: asyncio.Future[FanOutResult]
    since: float = field(default_factory=time.perf_counter)  # when it started waiting


class MicroBatcher:
    """Up to `in_flight` fan-outs run at once; queries that arrive meanwhile wait and leave together.

    A query that finds a free slot goes at once, so a single client pays nothing. Under load the batch grows to
    what arrived during one fan-out (at most `max_batch` queries, same knobs), and the per-call cost of Ray and of
    each shard is paid once per batch instead of once per query. `window_s` optionally holds a batch formed
    under load a little longer to gather company. Must be used from one event loop.
    """

    def __init__(self, run: Run, in_flight: int = 1, max_batch: int = 64, window_s: float = 0.0) -> None:
        self.run = run
        self.in_flight = max(1, in_flight)
        self.max_batch = max(1, max_batch)
        self.window_s = window_s
        self.waiting: deque[_Waiting] = deque()
        self.running = 0
        self.batches = 0
        self.queries = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def search(self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None) -> FanOutResult:
        future: asyncio.Future[FanOutResult] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiting(queries, k, knobs or SearchKnobs(), future))
        self._dispatch()
        return await future

    def _dispatch(self, after_batch: bool = False) -> None:
        while self.waiting and self.running < self.in_flight:
            busy = after_batch or self.running > 0  # queries queued behind a fan-out: the collection is loaded
            batch = self._take([])
            self.running += 1
            task = asyncio.ensure_future(self._run(batch, busy))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, batch: list[_Waiting]) -> list[_Waiting]:
        """Add waiting queries with the batch's knobs, in arrival order, up to max_batch query rows."""
        rows = sum(len(w.queries) for w in batch)
        left: deque[_Waiting] = deque()
        while self.waiting:
            item = self.waiting.popleft()
            if item.future.done():
                continue  # its client went away
            fits = not batch or (item.knobs == batch[0].knobs and rows + len(item.queries) <= self.max_batch)
            if fits:
                batch.append(item)
                rows += len(item.queries)
            else:
                left.append(item)
        self.waiting = left
        return batch

    async def _run(self, batch: list[_Waiting], busy: bool) -> None:
        try:
            if busy and self.window_s > 0:
                await asyncio.sleep(self.window_s)
                batch = self._take(batch)
            if not batch:
                return
            self.batches += 1
            self.queries += len(batch)
            began = time.perf_counter()
            queries = np.concatenate([w.queries for w in batch])
            try:
                result = await self.run(queries, max(w.k for w in batch), batch[0].knobs)
            except BaseException as exc:
                # A cancelled fan-out fails its batch too: a query left waiting would wait for ever.
                failed = exc if isinstance(exc, Exception) else RuntimeError(f"the fan-out ended: {exc!r}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(failed)
                if not isinstance(exc, Exception):
                    raise
                return
            start = 0
            for item in batch:
                hits = [h[: item.k] for h in result.hits[start : start + len(item.queries)]]
                start += len(item.queries)
                if not item.future.done():
                    seconds = {**result.seconds, "queued": began - item.since}
                    item.future.set_result(FanOutResult(hits, list(result.missing_shards), seconds))
        finally:
            self.running -= 1
            self._dispatch(after_batch=True)
