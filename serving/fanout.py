"""Fan a query out to every shard actor concurrently, with a per-shard timeout, and merge the top-k with a heap."""

from __future__ import annotations

import asyncio
import heapq
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("facegrid.fanout")


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

    @property
    def partial(self) -> bool:
        return bool(self.missing_shards)


async def _ask(shard: int, handle: Any, queries: np.ndarray, k: int, timeout: float) -> tuple[int, Any]:
    try:
        return shard, await asyncio.wait_for(handle.search.remote(queries, k), timeout)
    except Exception as exc:
        # A slow or dead shard is reported by number in the answer, never silently dropped.
        log.warning("shard %d did not answer: %r", shard, exc)
        return shard, None


ShardAnswer = tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]


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


async def fan_out(handles: dict[int, Any], queries: np.ndarray, k: int, timeout: float) -> FanOutResult:
    answers = await asyncio.gather(*(_ask(s, h, queries, k, timeout) for s, h in handles.items()))
    per_shard = {shard: answer for shard, answer in answers if answer is not None}
    missing = sorted(shard for shard, answer in answers if answer is None)
    return FanOutResult(merge(per_shard, len(queries), k), missing)
