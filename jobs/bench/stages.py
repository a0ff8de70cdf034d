"""Where a single search's time goes (issue: the query path at the limit): the server's own stage timers, the
shards' compute, and one in-process index built with the shards' own recipe over the same vectors."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cluster.collections.index_spec import SearchKnobs, faiss_threads
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.collections.snapshot import Placement, ShardSnapshot
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from serving.stages import RECORDER

# Stages in the order a request meets them (serving/stages.py marks them); `ray` holds the shards' compute.
ORDER = (
    "http_in",
    "auth",
    "policy",
    "queued",
    "fan_out",
    "ray",
    "shard_compute",
    "merge",
    "matches",
    "render",
    "audit",
    "serialize",
    "http_out",
)


def time_each(work: Callable[[np.ndarray], Any], probes: np.ndarray) -> list[float]:
    """Seconds `work` took on each probe, one at a time (as a (1, dim) query)."""
    times = []
    for probe in probes:
        began = time.perf_counter()
        work(probe[None])
        times.append(time.perf_counter() - began)
    return times


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of durations in seconds, in milliseconds."""
    ms = np.array(samples) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def same_recipe_baseline(
    collections: Collections, manifest: Manifest, probes: np.ndarray, k: int, knobs: dict[str, int]
) -> dict[str, Any]:
    """One in-process index with the shards' recipe (their built spec, default knobs and exact re-rank) over all
    the collection's faces, one thread, one query at a time: what search costs without the service around it."""
    one = collections.create(
        manifest.model_copy(
            update={"name": f"{manifest.name}-one", "shard_count": 1, "shards": {}, "version": 0, "face_files": []}
        ).model_copy(update={"index_spec": manifest.built_spec or "Flat", "trained": None})
    )
    one = Publisher(collections).publish(one, manifest.face_files)
    try:
        with tempfile.TemporaryDirectory() as cache, faiss_threads(1):
            spec = one.built_spec or "Flat"
            snapshot = ShardSnapshot.load(collections.store, one.shards["0"], spec, Path(cache), Placement())
            asked = SearchKnobs(**knobs)
            times = time_each(lambda q: snapshot.search(q, k, asked), probes)
            snapshot.release()
    finally:
        collections.delete(one.name)
    p50, p99 = percentiles_ms(times)
    return {"baseline_same_recipe_spec": spec, "baseline_same_recipe_p50_ms": p50, "baseline_same_recipe_p99_ms": p99}


def start_recording(settings: Settings, manifest: Manifest) -> None:
    """From now on the server records each request's stages and the shards their compute (both cleared)."""
    RECORDER.requests.clear()
    RECORDER.enabled = True
    ShardSet(settings, manifest.name).ask_all(manifest, "timings")


def stop_recording(settings: Settings, manifest: Manifest) -> dict[str, Any]:
    """p50 per stage over the recorded requests, shard compute (the slowest host of each call, all its shards)
    split out of Ray."""
    RECORDER.enabled = False
    shards = ShardSet(settings, manifest.name).ask_all(manifest, "timings")
    requests = [r for r in RECORDER.requests if "ray" in r]
    calls = min((len(s) for s in shards), default=0)
    slowest = np.max(np.array([s[:calls] for s in shards]), axis=0) if calls else np.zeros(0)
    for n, request in enumerate(requests[:calls]):
        compute = float(min(slowest[n], request["ray"]))
        request["shard_compute"], request["ray"] = compute, request["ray"] - compute
    stages = {
        stage: round(1000 * float(np.percentile([r.get(stage, 0.0) for r in requests], 50)), 3)
        for stage in ORDER
        if requests
    }
    total = [sum(v for v in r.values()) for r in requests]
    return {
        "stages_p50_ms": stages,
        "stages_requests": len(requests),
        "stages_total_p50_ms": round(1000 * float(np.percentile(total, 50)), 3) if total else None,
    }
