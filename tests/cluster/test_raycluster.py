"""Embedder placement, as the cluster schedules it: one GPU per actor where the cluster has GPUs; on a CPU-only
cluster more embedders run at once than there are cores, and none is restarted (its partition goes elsewhere)."""

from __future__ import annotations

import time

import ray

from cluster.raycluster import embedder_count, embedder_options


class Probe:
    def ping(self) -> str:
        return ray.get_runtime_context().get_actor_id()


def test_gpu_cluster_pins_one_gpu_per_embedder() -> None:
    options = embedder_options(gpus=4)
    assert options["num_gpus"] == 1 and options["scheduling_strategy"] == "SPREAD"
    assert embedder_count(gpus=4) == 4


def test_a_cpu_cluster_runs_more_embedders_than_cores_and_restarts_none(local_ray: None) -> None:
    cores = int(ray.cluster_resources()["CPU"])
    options = embedder_options(gpus=0)
    actors = [ray.remote(Probe).options(**options).remote() for _ in range(2 * cores)]
    ready, waiting = ray.wait([a.ping.remote() for a in actors], num_returns=len(actors), timeout=60)
    assert len(ready) == 2 * cores and not waiting  # all scheduled at once: fractional CPUs
    ray.kill(actors[0], no_restart=False)  # a restart would be allowed here, if the options asked for one
    deadline = time.monotonic() + 30
    while True:  # the kill lands shortly; from then on it answers nothing (a restarted one would answer again)
        try:
            ray.get(actors[0].ping.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            break
        assert time.monotonic() < deadline, "a killed embedder came back: its partition would wait for it"
        time.sleep(0.2)
    for actor in actors[1:]:
        ray.kill(actor)
