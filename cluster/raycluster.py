"""Starting or joining Ray, and the actor options that pin embedders to GPUs where the cluster has them."""

from __future__ import annotations

import os
from typing import Any

import ray

from cluster.audit import AuditLog
from cluster.raycluster_env import prepare_ray_environment
from cluster.settings import Settings
from cluster.storage import LocalStore, ObjectStore, open_store

NAMESPACE = "facegrid"
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


def audit_actor(settings: Settings) -> Any:
    """The cluster's single audit writer, so that every search lands in one hash chain.

    No task retries: an append whose answer was lost could be written twice; the caller fails closed instead.
    """
    remote = ray.remote(AuditWriter).options(
        name="audit", namespace=NAMESPACE, get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=0
    )
    return remote.remote(settings)


def append_audit(settings: Settings, store: ObjectStore, record: dict[str, Any]) -> dict[str, Any]:
    """Append to the chain: in-process on a local folder (its lock serialises processes), else via the actor."""
    if isinstance(store, LocalStore):
        return AuditLog(store).append(record)
    ensure_ray()
    if "audit" not in _handles:
        _handles["audit"] = audit_actor(settings)
    result: dict[str, Any] = ray.get(_handles["audit"].append.remote(record))
    return result


_handles: dict[str, Any] = {}


class AuditWriter:
    """Ray wrapper of AuditLog over the settings' store: a restart resumes from the stored head."""

    def __init__(self, settings: Settings) -> None:
        self.log = AuditLog(open_store(settings.store, settings))

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        return self.log.append(entry)
