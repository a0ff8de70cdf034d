"""Several shards of one shard set in one Ray actor, searched on the actor's own threads.

A Ray actor call costs about 1.3 ms on two loaded cores whatever it carries; one actor per shard made a search
of four shards pay four calls (about 7 ms of a 1M-face search whose FAISS work is 4 ms). A host answers every
shard a fan-out asks of it in one call, searching them in parallel (FAISS releases the GIL).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from cluster.collections.index_spec import SearchKnobs
from cluster.collections.snapshot import resident_bytes
from cluster.settings import Settings
from cluster.shards.shard import FaceShard

# Per query: similarities, ids, records (arrays or lists; a host sends lists of its kept hits).
ShardAnswer = tuple[Any, Any, list[list[dict[str, Any]]]]
RECENT_CALLS = 100_000
# Where `auto` gives a node more than one shard: a shard of 5M faces builds in about a minute and a half here and
# loads in seconds; one larger makes every erasure's rebuild and every reload of it long.
AUTO_FACES_PER_SHARD = 5_000_000


def auto_shard_count(nodes: int, faces: int) -> int:
    """The `auto` layout: one shard a node, searched with every core of it (a node's shards split its FAISS work:
    four shards of 250k visit four times the lists of one of 1M), more where a node's share of the faces passes
    AUTO_FACES_PER_SHARD."""
    nodes = max(1, nodes)
    return nodes * max(1, math.ceil(faces / (nodes * AUTO_FACES_PER_SHARD)))


def layout(shard_count: int, replicas: int, nodes: int) -> list[list[int]]:
    """The shards each host of a set holds: as many hosts as nodes (at most one per shard, at least one per
    replica), replica r of shard i on host (i + r) mod hosts, so that a shard's replicas are on different hosts."""
    hosts = max(replicas, min(shard_count, max(1, nodes)))
    held: list[list[int]] = [[] for _ in range(hosts)]
    for shard in range(shard_count):
        for replica in range(replicas):
            held[(shard + replica) % hosts].append(shard)
    return held


def best_of(ranked: dict[int, tuple[np.ndarray, np.ndarray]], k: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per query, the k best hits over every shard's (similarities, ids), higher similarity first, then lower id
    (the fan-out's order); each shard keeps its own of them, the rest of its row -1."""
    order = list(ranked)
    scores = np.concatenate([ranked[s][0] for s in order], axis=1)
    ids = np.concatenate([ranked[s][1] for s in order], axis=1)
    owner = np.concatenate([np.full(ranked[s][1].shape, n) for n, s in enumerate(order)], axis=1)
    key = np.where(ids >= 0, scores, -np.inf)
    top = np.lexsort((ids, -key), axis=-1)[:, :k]
    top_scores, top_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    top_owner = np.take_along_axis(owner, top, 1)
    out = {}
    for n, shard in enumerate(order):
        mine = (top_owner == n) & (top_ids >= 0)
        out[shard] = (np.where(mine, top_scores, -np.inf).astype(np.float32), np.where(mine, top_ids, -1))
    return out


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
        # A batch of queries is searched with every core the host's shards leave free (FAISS splits it by query);
        # a single query keeps `shard_threads` (two spinning threads for one query's lists were slower).
        for shard in self.shards.values():
            shard.batch_threads = max(shard.threads, threads // max(1, len(shards)))
        self.recent: deque[float] = deque(maxlen=RECENT_CALLS)  # seconds each search call took, for benchmarks

    def search(
        self, shards: list[int], queries: np.ndarray, k: int, knobs: SearchKnobs | None = None
    ) -> dict[int, ShardAnswer]:
        """The top-k per query over these shards, searched in parallel, as each shard's part of it (-1 elsewhere)
        with the records of those hits only: the fan-out merges what the hosts send, and a record is read and
        sent only for a hit that can be in the answer."""
        began = time.perf_counter()
        try:
            held = [self.shards[s] for s in shards]
            if len(held) == 1:
                ranked = {shards[0]: held[0].ranked(queries, k, knobs)}
            else:
                running = [self.pool.submit(shard.ranked, queries, k, knobs) for shard in held]
                ranked = {s: future.result() for s, future in zip(shards, running, strict=True)}
            return {s: self._with_records(s, scores, ids) for s, (scores, ids) in best_of(ranked, k).items()}
        finally:
            self.recent.append(time.perf_counter() - began)

    def _with_records(self, shard: int, scores: np.ndarray, ids: np.ndarray) -> ShardAnswer:
        """Per query, this shard's kept hits only, as plain lists: Ray pickles them in less time than arrays."""
        found = self.shards[shard].records(ids[ids >= 0].tolist()) if (ids >= 0).any() else {}
        out_scores, out_ids, out_records = [], [], []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
            kept = [(s, i) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            out_scores.append([s for s, _ in kept])
            out_ids.append([i for _, i in kept])
            out_records.append([found.get(i, {}) for _, i in kept])
        return out_scores, out_ids, out_records

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

    def behind(self, version: int) -> bool:
        """Whether a shard held here has not yet caught up with this manifest version (it follows within a poll)."""
        return any(shard.seen < version and not shard.retired for shard in self.shards.values())

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()
        self.pool.shutdown(wait=False)

    def timings(self) -> list[float]:
        """Seconds each recent search call took inside this host (the stage breakdown's shard compute); cleared."""
        out = list(self.recent)
        self.recent.clear()
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
