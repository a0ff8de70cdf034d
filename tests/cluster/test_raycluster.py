"""Embedder placement: one GPU per actor where the cluster has GPUs, fractional CPUs otherwise."""

from __future__ import annotations

from cluster.raycluster import EMBEDDER_CPUS, embedder_options


def test_gpu_cluster_pins_one_gpu_per_embedder() -> None:
    options = embedder_options(gpus=4)
    assert options["num_gpus"] == 1 and options["scheduling_strategy"] == "SPREAD"


def test_cpu_cluster_uses_fractional_cpus() -> None:
    options = embedder_options(gpus=0)
    assert "num_gpus" not in options and options["num_cpus"] == EMBEDDER_CPUS < 1
    # A dead embedder's partition goes to another (run_partitions); a restart could wait for a lost node's CPUs.
    assert options["max_restarts"] == 0 and options["max_task_retries"] == 0
