"""The index job's actor pool: a dead embedder's partition goes to another, every partition is done once, and the
job fails only when no embedder is left."""

from __future__ import annotations

import os

import pytest
import ray

from cluster.indexing.embedder import Partition, PartitionResult
from cluster.indexing.job import run_partitions
from cluster.raycluster import embedder_options


class StandIn:
    """An embedder stand-in (our pool is under test, not the pipeline); `dies` ends its process on first call."""

    def __init__(self, dies: bool) -> None:
        self.dies = dies

    def __call__(self, partition: Partition) -> PartitionResult:
        if self.dies:
            os._exit(1)
        return PartitionResult(partition.part, images=len(partition.objects))


def _actors(*dying: bool) -> list[object]:
    options = {**embedder_options(0), "num_cpus": 0.1, "scheduling_strategy": "DEFAULT"}
    remote = ray.remote(StandIn).options(**options)
    return [remote.remote(d) for d in dying]


def test_a_dead_embedders_partition_goes_to_another(local_ray: None) -> None:
    parts = iter([Partition(n, []) for n in range(12)])
    done = [r.part for r in run_partitions(_actors(True, False, True, False), parts)]
    assert sorted(done) == list(range(12))


def test_the_job_fails_when_no_embedder_is_left(local_ray: None) -> None:
    with pytest.raises(ray.exceptions.RayActorError):
        list(run_partitions(_actors(True, True), iter([Partition(n, []) for n in range(3)])))
