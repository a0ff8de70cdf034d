"""A real three-node Ray cluster on this machine (Ray's own multi-node harness): shard replicas on different nodes,
a node removed while a client searches (no failed, no partial and no wrong answer), and a node removed during an
index job (the job succeeds with exactly a clean run's faces)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.collections.manifest import Collections, Manifest
from cluster.collections.publish import Publisher
from cluster.indexing.embedder import IndexRequest
from cluster.indexing.job import run_index_job
from cluster.keys.access import KeyStore, Role, local_operator
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from cluster.storage import LocalStore
from jobs.bench.search import BENCH_MAX_FALSE_MATCH_RATE
from serving.threaded import serve_in_thread
from serving.usecases import collections as collection_cases
from serving.usecases.context import Context
from tests.conftest import lfw_folder
from tests.factories import clustered_vectors, records

pytestmark = pytest.mark.slow

FACES = 3000
SEARCHES = 240
# Node death is noticed within about a second (Ray's default is 5 missed checks 3 s apart).
FAST_HEALTH = {"health_check_period_ms": 300, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": FAST_HEALTH},
    )
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="facegrid", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert workers


def _node_of(actor: Any) -> str:
    return str(ray.get(actor.info.remote())["node_id"])


def test_two_replicas_answer_every_search_through_a_node_loss(cluster: Cluster, tmp_path: Path) -> None:
    settings = Settings(store=str(tmp_path / "store"), shard_cache=tmp_path / "cache")
    store = LocalStore(tmp_path / "store")
    collections = Collections(store)
    manifest = collections.create(
        Manifest(
            name="spread",
            model_id="dlib-resnet-v1",
            model_sha256="synthetic",
            shard_count=4,
            replicas=2,
            index_spec="Flat",
            max_false_match_rate=BENCH_MAX_FALSE_MATCH_RATE,
        )
    )
    vectors, _ = clustered_vectors(FACES, 128, seed=3)
    store.put_parquet("collections/spread/faces/all.parquet", records(vectors))
    manifest = Publisher(collections).publish(manifest, ["collections/spread/faces/all.parquet"])
    token = KeyStore(store).create(Role.SEARCHER, label="multinode")[1]
    rng = np.random.default_rng(5)
    probes = vectors[rng.choice(FACES, SEARCHES, replace=False)] + rng.normal(0, 0.02, (SEARCHES, 128))
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    ctx = Context(settings)
    with serve_in_thread(ctx) as url:
        replicas = asyncio.run(ShardSet(settings, "spread").handles(manifest))  # placed before anyone searches
        placed = {shard: {_node_of(r) for r in held} for shard, held in replicas.items()}
        assert all(len(nodes) == 2 for nodes in placed.values()), placed  # a shard's replicas on different nodes
        victim = next(n for n in cluster.worker_nodes if any(n.node_id in nodes for nodes in placed.values()))
        answers: list[tuple[int, httpx.Response]] = []
        halfway = threading.Event()

        def search() -> None:
            with httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=60) as client:
                for n, probe in enumerate(probes):
                    body = {"vector": probe.tolist(), "purpose": "system-test", "case_id": "NODE-1", "max_results": 10}
                    answers.append((n, client.post("/v1/collections/spread/search-vector", json=body)))
                    if n == SEARCHES // 3:
                        halfway.set()

        searcher = threading.Thread(target=search)
        searcher.start()
        assert halfway.wait(120)
        cluster.remove_node(victim, allow_graceful=False)
        searcher.join(600)
    failed = [(n, a.status_code, a.text[:200]) for n, a in answers if a.status_code != 200]
    partial = [n for n, a in answers if a.status_code == 200 and a.json()["partial"]]
    wrong = []
    for n, answer in answers:
        if answer.status_code != 200:
            continue
        applied = answer.json()["threshold"]["applied"]
        similarities = vectors @ probes[n]
        exact = [i for i in np.argsort(-similarities)[:10] if similarities[i] >= applied]
        if [int(m["face_id"], 16) - 1 for m in answer.json()["matches"]] != [int(i) for i in exact]:
            wrong.append(n)
    print(
        f"{len(answers)} searches through a node loss: {len(failed)} failed, {len(partial)} partial, {len(wrong)} wrong"
    )
    assert len(answers) == SEARCHES >= 200
    assert not failed and not partial and not wrong, (failed[:3], partial[:3], wrong[:3])
    cluster.add_node(num_cpus=2)  # back to three nodes for the next test
    cluster.wait_for_nodes()


def _lose_a_node(cluster: Cluster, removed: list[str], faulty: bool) -> Any:
    """After the first partition, a worker node (with the embedders on it) dies."""

    def lose(_: object) -> None:
        if faulty and not removed:
            node = next(iter(cluster.worker_nodes))
            removed.append(node.node_id)
            cluster.remove_node(node, allow_graceful=False)

    return lose


def test_an_index_job_survives_a_node_loss(cluster: Cluster, lfw_images: Path, model_dir: Path, tmp_path: Path) -> None:
    source = lfw_folder(lfw_images, tmp_path / "photos", people=16, per_person=2)
    ran: dict[str, dict[str, Any]] = {}
    for run in ("clean", "faulty"):
        settings = Settings(model_dir=model_dir, store=str(tmp_path / run))
        ctx = Context(settings)
        asyncio.run(collection_cases.create(ctx, local_operator(), "job", 2, 1e-5))
        request = IndexRequest(collection="job", source=str(source), partition_size=4)
        removed: list[str] = []
        summary = run_index_job(settings, request, on_partition=_lose_a_node(cluster, removed, run == "faulty"))
        faces = ctx.collections.faces(ctx.collections.get("job"), ["face_id"]).column("face_id").to_pylist()
        ran[run] = {"summary": summary, "faces": sorted(faces)}
        assert run == "clean" or removed
    clean, faulty = ran["clean"], ran["faulty"]
    assert faulty["summary"]["images"] == clean["summary"]["images"] == 32
    assert faulty["faces"] == clean["faces"] and len(faulty["faces"]) == len(set(faulty["faces"])) >= 30
