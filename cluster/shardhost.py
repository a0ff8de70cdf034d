"""Several shards of one shard set in one Ray actor, searched on the actor's own threads.

A Ray actor call costs about 1.3 ms on two loaded cores whatever it carries; one actor per shard made a search
of four shards pay four calls (about 7 ms of a 1M-face search whose FAISS work is 4 ms). A host answers every
shard a fan-out asks of it in one call, searching them in parallel (FAISS releases the GIL).
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from cluster.index_spec import SearchKnobs
from cluster.settings import Settings
from cluster.shard import RECENT_CALLS, FaceShard
from cluster.snapshot import resident_bytes

ShardAnswer = tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]


def layout(shard_count: int, replicas: int, nodes: int) -> list[list[int]]:
    """The shards each host of a set holds: as many hosts as nodes (at most one per shard, at least one per
    replica), replica r of shard i on host (i + r) mod hosts, so that a shard's replicas are on different hosts."""
    hosts = max(replicas, min(shard_count, max(1, nodes)))
    held: list[list[int]] = [[] for _ in range(hosts)]
    for shard in range(shard_count):
        for replica in range(replicas):
            held[(shard + replica) % hosts].append(shard)
    return held


class ShardHost:
    """The shards `shards` of set `shard_set` (of `shard_count`) of a collection; each follows the published
    state itself (FaceShard). Asked for a shard it does not hold, it raises (the fan-out tries another replica)."""

    def __init__(
        self, settings: Settings, collection: str, shards: list[int], shard_count: int, shard_set: int
    ) -> None:
        self.collection = collection
        self.shards = {i: FaceShard(settings, collection, i, shard_count, shard_set) for i in shards}
        threads = settings.serving.host_threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max(1, min(threads, len(shards))), thread_name_prefix="shard-search")
        self.recent: deque[float] = deque(maxlen=RECENT_CALLS)  # seconds each search call took, for benchmarks

    def search(
        self, shards: list[int], queries: np.ndarray, k: int, knobs: SearchKnobs | None = None
    ) -> dict[int, ShardAnswer]:
        """Top-k per query of each of these shards, searched in parallel."""
        began = time.perf_counter()
        try:
            held = [self.shards[s] for s in shards]
            if len(held) == 1:
                return {shards[0]: held[0].search(queries, k, knobs)}
            running = [self.pool.submit(shard.search, queries, k, knobs) for shard in held]
            return {s: future.result() for s, future in zip(shards, running, strict=True)}
        finally:
            self.recent.append(time.perf_counter() - began)

    def vectors(self, shard: int, faiss_ids: list[int]) -> dict[int, np.ndarray]:
        return self.shards[shard].vectors(faiss_ids)

    def records(self, shard: int, faiss_ids: list[int]) -> dict[int, dict[str, Any]]:
        return self.shards[shard].records(faiss_ids)

    def add_segment(self, key: str, etag: str, shards: list[int]) -> int:
        """A writer's new live-log segment, read at once by those of these shards held here. Returns live faces."""
        return sum(self.shards[s].add_segment(key, etag) for s in shards if s in self.shards)

    def reload(self) -> dict[int, int]:
        """Every shard held loads what the manifest names; the version each holds."""
        return {i: shard.reload() for i, shard in self.shards.items()}

    def timings(self) -> list[float]:
        """Seconds each recent search call took inside this host (the stage breakdown's shard compute); cleared."""
        out = list(self.recent)
        self.recent.clear()
        for shard in self.shards.values():
            shard.timings()
        return out

    def count(self) -> int:
        return sum(shard.count() for shard in self.shards.values())

    def info(self) -> dict[str, Any]:
        shards = {i: shard.info() for i, shard in self.shards.items()}
        for described in shards.values():
            del described["resident_bytes"], described["node_id"]
        return {
            "collection": self.collection,
            "shards": shards,
            "faces": self.count(),
            "resident_bytes": resident_bytes(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }
