"""Fan a query out to one replica of every shard concurrently (one call per shard host), with fail-over and a
per-shard timeout, and merge the top-k with a heap."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from cluster.collections.index_spec import SearchKnobs
from cluster.shards import local
from cluster.shards.host import ShardAnswer

log = logging.getLogger("facegrid.fanout")
T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    similarity: float
    faiss_id: int
    shard: int
    record: dict[str, Any]


@dataclass
class FanOutResult:
    hits: list[list[Hit]]  # per query, best first
    missing_shards: list[int]
    # Parts of the fan-out's time, for the stage breakdown: Ray (submit to last answer), the merge, and (set by
    # the batcher) the wait for a batch.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


class Replicas:
    """Which replica (shard host) of a shard a query goes to: one this query already asks for another shard,
    so that a host answers all it holds in one call; else the one with the fewest calls in flight from this
    process (the first of them in turn); never one already tried for that shard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: Counter[int] = Counter()
        self._turn = itertools.count()

    def pick(self, replicas: list[Any], tried: set[int], chosen: dict[int, Any]) -> Any | None:
        with self._lock:
            left = [r for r in replicas if id(r) not in tried]
            if not left:
                return None
            joined = next((r for r in left if id(r) in chosen), None)
            if joined is not None:
                return joined
            start = next(self._turn) % len(left)
            rotated = left[start:] + left[:start]
            picked = min(rotated, key=lambda r: self._in_flight[id(r)])
            self._in_flight[id(picked)] += 1
            return picked

    def done(self, replica: Any) -> None:
        with self._lock:
            self._in_flight[id(replica)] -= 1
            if self._in_flight[id(replica)] <= 0:
                del self._in_flight[id(replica)]


REPLICAS = Replicas()


def _collect(
    handles: dict[int, list[Any]], queries: np.ndarray, k: int, timeout: float, knobs: SearchKnobs, hedge: float
) -> dict[int, Any]:
    """Ask one replica of every shard at once, one call per host for all the shards it is asked for, and wait at
    most `timeout` for all. The shards of a host that fails are asked at once of other replicas; those not
    answered after `hedge` seconds are asked of another replica too (the first answer wins); a shard none of
    whose replicas answered in time is left out.

    Blocking ray.wait/ray.get from a worker thread: on a loaded two-core machine it answered 4 actors in about
    7 ms where awaiting each ObjectRef on the event loop took about 9 ms.
    """
    deadline = time.monotonic() + timeout
    asked: dict[Any, tuple[Any, list[int]]] = {}  # ref -> (host, its shards asked)
    tried: dict[int, set[int]] = {shard: set() for shard in handles}
    last_ask: dict[int, float] = {}

    def ask(shards: list[int]) -> None:
        chosen: dict[int, Any] = {}
        groups: dict[int, list[int]] = {}
        for shard in shards:
            host = REPLICAS.pick(handles[shard], tried[shard], chosen)
            if host is None:
                continue
            chosen[id(host)] = host
            groups.setdefault(id(host), []).append(shard)
            tried[shard].add(id(host))
            last_ask[shard] = time.monotonic()
        for key, group in groups.items():
            asked[chosen[key].search.remote(group, queries, k, knobs)] = (chosen[key], group)

    def pending(shard: int) -> bool:
        return any(shard in group for _, group in asked.values())

    ask(list(handles))
    answers: dict[int, Any] = {}
    try:
        while asked and len(answers) < len(handles):
            now = time.monotonic()
            if now >= deadline:
                break
            waiting = [last_ask[s] + hedge for s in handles if s not in answers and len(tried[s]) < len(handles[s])]
            wake = min([deadline, *waiting])
            # Every call still holding an unanswered shard: one wait when all is well. Where two calls ask for one
            # shard (a hedge), either may be the one that matters: wake at the first. A host that failed is then
            # replaced at the next wake, at the latest its shards' hedge time.
            open_groups = [[s for s in group if s not in answers] for _, group in asked.values()]
            open_groups = [group for group in open_groups if group]
            overlapping = sum(map(len, open_groups)) > len({s for group in open_groups for s in group})
            useful = 1 if overlapping else max(1, len(open_groups))
            ready, _ = local.wait(list(asked), min(useful, len(asked)), max(0.0, wake - now))
            failed: list[int] = []
            for ref in ready:
                host, group = asked.pop(ref)
                REPLICAS.done(host)
                try:
                    answer = local.result(ref)
                except Exception as exc:
                    log.warning("a replica of shards %s failed: %r", group, exc)
                    failed.extend(s for s in group if s not in answers)
                    continue
                for shard in group:
                    answers.setdefault(shard, answer[shard])
            ask([s for s in failed if s not in answers and not pending(s)])
            now = time.monotonic()
            # Late: another replica joins in, where there is one.
            ask([s for s in handles if s not in answers and now >= last_ask.get(s, now) + hedge])
    finally:
        for host, _ in asked.values():
            REPLICAS.done(host)
    for shard in sorted(set(handles) - set(answers)):
        # A shard no replica answered is reported by number in the answer, never silently dropped.
        log.warning("shard %d did not answer within %.1f s", shard, timeout)
    return answers


def merge(per_shard: dict[int, ShardAnswer], n_queries: int, k: int) -> list[list[Hit]]:
    merged = []
    for q in range(n_queries):
        candidates = (
            Hit(float(score), int(fid), shard, record)
            for shard, (scores, ids, records) in per_shard.items()
            for score, fid, record in zip(scores[q], ids[q], records[q], strict=True)
            if fid >= 0
        )
        merged.append(heapq.nlargest(k, candidates, key=lambda h: (h.similarity, -h.faiss_id)))
    return merged


async def fan_out(
    handles: dict[int, list[Any]],
    queries: np.ndarray,
    k: int,
    timeout: float,
    executor: Executor | None = None,
    knobs: SearchKnobs | None = None,
    hedge: float | None = None,
) -> FanOutResult:
    """`handles`: every replica of every shard. `hedge`: seconds before a late replica is joined by another
    (default: a quarter of the timeout)."""
    loop = asyncio.get_running_loop()
    hedge = timeout / 4 if hedge is None else hedge
    per_shard, ray_s = await loop.run_in_executor(
        executor, _timed, _collect, handles, queries, k, timeout, knobs or SearchKnobs(), hedge
    )
    missing = sorted(set(handles) - set(per_shard))
    began = time.perf_counter()
    merged = merge(per_shard, len(queries), k)
    return FanOutResult(merged, missing, {"ray": ray_s, "merge": time.perf_counter() - began})


def _timed(work: Callable[..., T], *args: Any) -> tuple[T, float]:
    began = time.perf_counter()
    return work(*args), time.perf_counter() - began
