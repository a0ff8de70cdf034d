"""Starting or joining Ray, and the actor options that pin embedders to GPUs where the cluster has them."""

from __future__ import annotations

import os
from typing import Any

import ray

from cluster.raycluster_env import prepare_ray_environment
from cluster.settings import Settings
from cluster.shard import FaceShard

NAMESPACE = "facegrid"
# Shards are mostly idle memory; a quarter CPU each lets 4 shards and the API share a 2-core machine.
SHARD_CPUS = 0.25
# Without a GPU an embedder is CPU-bound: half a core as a reservation, one ONNX Runtime thread each.
EMBEDDER_CPUS = 0.5


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at `address` or RAY_ADDRESS (ray://... or a head's GCS address), else start a local one."""
    if ray.is_initialized():
        return
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
    """One GPU per embedder where the cluster has GPUs; a fraction of a CPU otherwise."""
    common: dict[str, Any] = {"max_restarts": 3, "max_task_retries": 2}
    if gpus > 0:
        return {**common, "num_gpus": 1, "num_cpus": 1}
    return {**common, "num_cpus": EMBEDDER_CPUS}


def embedder_count(gpus: int) -> int:
    if gpus > 0:
        return gpus
    return max(1, int(ray.cluster_resources().get("CPU", 1) // 1))


def shard_name(collection: str, shard: int) -> str:
    return f"shard:{collection}:{shard}"


def shard_actor(settings: Settings, collection: str, shard: int) -> Any:
    """The named shard actor, created on first use; Ray restarts it from the published snapshot if it dies."""
    remote = ray.remote(FaceShard).options(
        name=shard_name(collection, shard),
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=SHARD_CPUS,
        max_restarts=-1,
        max_task_retries=3,
    )
    return remote.remote(settings, collection, shard)


def live_shards(collection: str, shard_count: int) -> list[Any]:
    """Shard actors of a collection that already exist in this cluster (for reload after publish)."""
    found = []
    for shard in range(shard_count):
        try:
            found.append(ray.get_actor(shard_name(collection, shard), namespace=NAMESPACE))
        except ValueError:
            continue
    return found
