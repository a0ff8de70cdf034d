"""Embedder placement, as the cluster schedules it: one GPU per actor where the cluster has GPUs; on a CPU-only
cluster more embedders run at once than there are cores, and none is restarted (its partition goes elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import ray

from cluster.audit.writer import audit_actor_name
from cluster.raycluster import NAMESPACE, embedder_count, embedder_options
from cluster.settings import Settings


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


def test_the_cluster_wide_actors_outlive_the_process_that_first_asked_for_them(local_ray: None, tmp_path: Path) -> None:
    """The lock table and the audit writer are made by whichever process asks first (a CLI index job, a publish
    task's worker): once that process ends, everyone else's handles still work (they died with it: a 503
    ActorDiedError under racing reshards on S3)."""
    store = str(tmp_path / "store")
    first = (
        "from cluster.locks import lock_table; from cluster.audit.writer import audit_actor; "
        "from cluster.settings import Settings; import ray; "
        "ray.get(lock_table().release.remote('k', 'x')); "
        f"ray.get(audit_actor(Settings(store={store!r})).check_appendable.remote())"
    )
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    subprocess.run([sys.executable, "-c", first], env=env, check=True, timeout=120, cwd=Path(__file__).parents[2])
    table = ray.get_actor("locks", namespace=NAMESPACE)
    ray.get(table.acquire.remote("k", "me", 30.0), timeout=30)
    ray.get(table.release.remote("k", "me"), timeout=30)
    writer = ray.get_actor(audit_actor_name(Settings(store=store)), namespace=NAMESPACE)
    ray.get(writer.check_appendable.remote(), timeout=30)


def test_threads_that_start_ray_at_once_start_it_once() -> None:
    """A server's first Ray calls may come from two request threads at once (found by `bench races` on S3: an
    upload's photo lock beside another request; the second `ray.init` failed with an AssertionError, a 500)."""
    script = (
        "import threading, ray\n"
        "from cluster.raycluster import ensure_ray\n"
        "errors = []\n"
        "def start():\n"
        "    try:\n"
        "        ensure_ray()\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=start) for _ in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert ray.is_initialized() and not errors, errors\n"
        "print('started once', flush=True)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    where = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=180, cwd=where, capture_output=True, text=True
    )
    # What is checked is the start; Ray, started from a thread other than the main one, once failed its own
    # shutdown under load (its core worker lost the GCS that shutdown stopped, and exited 1 a minute later).
    assert "started once" in done.stdout, done.stderr[-3000:]
