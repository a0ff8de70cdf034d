"""The audit writer's handle: good only in the Ray session it came from, and one writer per store."""

from __future__ import annotations

from pathlib import Path

import ray

from cluster.audit.log import records_from
from cluster.audit.writer import audit_actor
from cluster.settings import Settings
from cluster.storage import LocalStore


def _local_ray() -> None:
    ray.init(address="local", num_cpus=1, include_dashboard=False, namespace="facegrid", log_to_driver=False)


def _cases(store: Path) -> list[str]:
    return [record["case_id"] for record in records_from(LocalStore(store), 1)]


def test_a_process_that_starts_a_new_ray_gets_a_writer_of_that_ray(tmp_path: Path) -> None:
    """CI's red run: every new local Ray numbers its first driver 01000000, so a handle cached by job id alone
    outlived its cluster and the next module's first audited request failed 500."""
    settings = Settings(store=str(tmp_path / "store"))
    for _ in range(2):
        _local_ray()
        try:
            ray.get(audit_actor(settings).append.remote({"action": "search", "case_id": "C-1"}), timeout=60)
        finally:
            ray.shutdown()
    assert _cases(tmp_path / "store") == ["C-1", "C-1"]


def test_two_stores_on_one_cluster_keep_two_chains(tmp_path: Path) -> None:
    first, second = Settings(store=str(tmp_path / "first")), Settings(store=str(tmp_path / "second"))
    _local_ray()
    try:
        ray.get(audit_actor(first).append.remote({"action": "search", "case_id": "A"}), timeout=60)
        ray.get(audit_actor(second).append.remote({"action": "search", "case_id": "B"}), timeout=60)
        ray.get(audit_actor(first).append.remote({"action": "search", "case_id": "A2"}), timeout=60)
    finally:
        ray.shutdown()
    assert _cases(tmp_path / "first") == ["A", "A2"]
    assert _cases(tmp_path / "second") == ["B"]
