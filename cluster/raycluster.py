"""Starting or joining Ray, and the actor options that pin embedders to GPUs where the cluster has them."""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

from cluster.raycluster_env import prepare_ray_environment

NAMESPACE = "facegrid"
# Without a GPU an embedder is CPU-bound: half a core as a reservation, one ONNX Runtime thread each.
EMBEDDER_CPUS = 0.5


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at `address` or RAY_ADDRESS (ray://... or a head's GCS address), else start a local one.
    Thread-safe: a server's first Ray calls may come from two request threads at once (an upload's photo lock and
    an erasure), and a second `ray.init` while the first connects fails with an AssertionError."""
    if ray.is_initialized():
        return
    with _starting:
        if not ray.is_initialized():
            _init(address)


_starting = threading.Lock()


def _init(address: str | None) -> None:
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("http"):
        address = None  # a dashboard address is for job submission; this process runs embedded
    prepare_ray_environment(address)
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    else:
        ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def embedder_options(gpus: int) -> dict[str, Any]:
    """One GPU per embedder where the cluster has GPUs; a fraction of a CPU otherwise. Spread over the nodes: a
    lost node takes few of them. Not restarted: the index job gives a dead one's partition to another
    (cluster/indexing/job.run_partitions); a restart after a node loss can wait for resources that are gone."""
    common: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
    if gpus > 0:
        return {**common, "num_gpus": 1, "num_cpus": 1}
    return {**common, "num_cpus": EMBEDDER_CPUS}


def embedder_count(gpus: int) -> int:
    if gpus > 0:
        return gpus
    return max(1, int(ray.cluster_resources().get("CPU", 1) // 1))
