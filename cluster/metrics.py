"""Figures the cluster's actors export through Ray's metrics agent (the Ray dashboard's metrics view, and
Prometheus scraping each node's metrics export port): series named ray_facegrid_*."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

# Seconds: a shard answers in about a millisecond at a few thousand faces, tens at millions; a partition of 64
# photos takes tens of seconds on a CPU.
SEARCH_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


_made: dict[str, Any] = {}


def _metrics() -> Mapping[str, Any]:
    """Made once per process, on first use; none outside Ray (a shard or an embedder run in-process by a test
    or a benchmark), where updates go nowhere."""
    if not _made:
        import ray

        if ray.is_initialized():
            _made.update(_make())
    return _made if _made else _NOWHERE


class _Nowhere:
    def inc(self, *_: Any, **__: Any) -> None: ...

    def set(self, *_: Any, **__: Any) -> None: ...

    def observe(self, *_: Any, **__: Any) -> None: ...


_NOWHERE: Mapping[str, Any] = defaultdict(_Nowhere)


def _make() -> dict[str, Any]:
    from ray.util.metrics import Counter, Gauge, Histogram

    index, shard = ("collection",), ("collection", "shard")
    return {
        "photos": Counter("facegrid_index_photos", "Photos an index job's embedders processed", tag_keys=index),
        "faces": Counter("facegrid_index_faces", "Faces an index job's embedders indexed", tag_keys=index),
        "errors": Counter(
            "facegrid_index_errors", "Photos recorded as not indexed, by reason", tag_keys=(*index, "reason")
        ),
        "stage": Counter(
            "facegrid_index_stage_seconds", "Seconds embedders spent per stage", tag_keys=(*index, "stage")
        ),
        "searches": Counter("facegrid_shard_searches", "Queries a shard answered", tag_keys=shard),
        "latency": Histogram(
            "facegrid_shard_search_seconds", "Seconds a shard took per call", SEARCH_BOUNDARIES, tag_keys=shard
        ),
        "queue": Gauge("facegrid_shard_queue_depth", "Calls running or waiting in a shard actor", tag_keys=shard),
        "held": Gauge("facegrid_shard_faces", "Faces a shard holds (snapshot and live log)", tag_keys=shard),
    }


def partition_done(
    collection: str, photos: int, faces: int, reasons: Mapping[str, int], seconds: Mapping[str, float]
) -> None:
    m, tags = _metrics(), {"collection": collection}
    m["photos"].inc(photos, tags=tags)
    if faces:
        m["faces"].inc(faces, tags=tags)
    for reason, count in reasons.items():
        m["errors"].inc(count, tags={**tags, "reason": reason})
    for stage, spent in seconds.items():
        if spent > 0:
            m["stage"].inc(spent, tags={**tags, "stage": stage})


def shard_searched(collection: str, shard: int, queries: int, seconds: float) -> None:
    m, tags = _metrics(), {"collection": collection, "shard": str(shard)}
    m["searches"].inc(queries, tags=tags)
    m["latency"].observe(seconds, tags=tags)


def shard_state(collection: str, shard: int, depth: int, faces: int) -> None:
    """Sampled: the calls running in a shard and the faces it holds."""
    m, tags = _metrics(), {"collection": collection, "shard": str(shard)}
    m["queue"].set(depth, tags=tags)
    m["held"].set(faces, tags=tags)
