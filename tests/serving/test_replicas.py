"""Two API processes on one Ray cluster: rebuilds and reshards (4 -> 6 -> 4 -> auto, a retrain, a change of index) are
done through one while the other answers searches throughout: no query fails, none comes back partial or wrong,
no handle goes stale, and no face is lost or duplicated."""

from __future__ import annotations

import os
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
from cluster.keys.access import KeyStore, Role
from cluster.settings import Settings
from cluster.shards.set import ShardSet
from cluster.storage import LocalStore
from jobs.bench.search import BENCH_MAX_FALSE_MATCH_RATE
from jobs.processes import serve_process, stop_process
from tests.factories import PER_IDENTITY, records

pytestmark = pytest.mark.slow

IDENTITIES = 800
FACES = IDENTITIES * PER_IDENTITY
PROBES = 40


def _gallery(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows r belong to identity r // PER_IDENTITY (ids r + 1), as in the benchmark; probes are new samples."""
    centres = rng.standard_normal((IDENTITIES, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def samples(of: np.ndarray) -> np.ndarray:
        vectors = of + rng.standard_normal(of.shape).astype(np.float32) * (0.27 / np.sqrt(128))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    probe_identity = rng.choice(IDENTITIES, PROBES, replace=False)
    return samples(np.repeat(centres, PER_IDENTITY, axis=0)), samples(centres[probe_identity]), probe_identity


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("rebuild-store")
    settings = Settings(model_dir=model_dir, store=str(root), shard_cache=root / "cache")
    collections = Collections(LocalStore(root))
    manifest = collections.create(
        Manifest(
            name="bench",
            model_id="dlib-resnet-v1",
            model_sha256="synthetic",
            shard_count=4,
            index_spec="IVF32,SQ8",
            max_false_match_rate=BENCH_MAX_FALSE_MATCH_RATE,
        )
    )
    vectors, probes, probe_identity = _gallery(np.random.default_rng(7))
    files = []
    for n, start in enumerate(range(0, FACES, 1000)):
        key = f"collections/bench/faces/part-{n}.parquet"
        collections.store.put_parquet(key, records(vectors[start : start + 1000], start))
        files.append(key)
    Publisher(collections).publish(manifest, files)
    token = KeyStore(collections.store).create(Role.ADMIN, label="test")[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "FACEGRID_STORE": str(root),
        "FACEGRID_MODEL_DIR": str(model_dir),
        "FACEGRID_SHARD_CACHE": str(root / "cache"),
        "FACEGRID_SERVING__RETIRE_AFTER_S": "3",
        # Both servers share the cluster's shard actors here (the race harness runs servers holding their own).
        "FACEGRID_SERVING__LOCAL_SHARDS": "false",
    }
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(serve_process(env, root / f"server-{name}.log"))
        ray.init(address=cluster.address, namespace="facegrid", log_to_driver=False)
        yield {
            "urls": [url for _, url in servers],
            "token": token,
            "probes": probes,
            "identity": probe_identity,
            "settings": settings,
            "collections": collections,
        }
    finally:
        for process, _ in servers:
            stop_process(process)
        ray.shutdown()
        cluster.shutdown()


def test_a_second_replica_answers_through_rebuilds_and_reshards(world: dict[str, Any]) -> None:
    admin_url, search_url = world["urls"]
    headers = {"X-API-Key": world["token"]}
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def search_until_stopped() -> None:
        with httpx.Client(base_url=search_url, headers=headers, timeout=60) as client:
            while not stop.is_set():
                for probe, identity in zip(world["probes"], world["identity"], strict=True):
                    body = {"vector": probe.tolist(), "purpose": "system-test", "case_id": "R-1", "max_results": 10}
                    response = client.post("/v1/collections/bench/search-vector", json=body)
                    if response.status_code != 200 or response.json()["partial"]:
                        failures.append(f"{response.status_code}: {response.text[:300]}")
                        continue
                    ids = [int(m["face_id"], 16) for m in response.json()["matches"]]
                    mates = sum((i - 1) // PER_IDENTITY == identity for i in ids)
                    if mates != PER_IDENTITY:
                        failures.append(f"identity {identity}: {mates} of {PER_IDENTITY} mates in the top 10")
                    answered[0] += 1

    searcher = threading.Thread(target=search_until_stopped)
    searcher.start()
    steps = [
        ({"retrain": True}, 4, "IVF32,SQ8"),
        ({"shards": 6}, 6, "IVF32,SQ8"),
        ({"shards": 4, "index_spec": "HNSW16"}, 4, "HNSW16"),
        ({"index_spec": "Flat"}, 4, "Flat"),
        ({"shards": "auto"}, 1, "Flat"),  # one node, 4,000 faces: one shard
    ]
    seen = []
    try:
        with httpx.Client(base_url=admin_url, headers=headers, timeout=600) as admin:
            for body, shard_count, spec in steps:
                before = answered[0]
                response = admin.post("/v1/collections/bench/rebuild", json=body)
                assert response.status_code == 200, response.text
                manifest = response.json()
                assert (manifest["shard_count"], manifest["built_spec"], manifest["face_count"]) == (
                    shard_count,
                    spec,
                    FACES,
                )
                while answered[0] < before + PROBES and searcher.is_alive():
                    stop.wait(0.1)  # searches ran during and after the swap
                seen.append(answered[0] - before)
    finally:
        stop.set()
        searcher.join(60)
    print(f"searches answered per step: {seen}; failures: {len(failures)}")
    assert not failures, failures[:3]
    manifest = world["collections"].get("bench")
    infos = ShardSet(world["settings"], "bench").ask_all(manifest, "info")
    shards = [shard for info in infos for shard in info["shards"].values()]
    assert sorted(s["shard"] for s in shards) == [0]  # one host: every shard once, of the current set
    assert sum(s["faces"] for s in shards) == FACES
