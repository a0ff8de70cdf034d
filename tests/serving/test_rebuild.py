"""Search keeps answering through a retrain, a reshard up, a reshard down and a change of index: no query fails,
none comes back partial or wrong, and no face is lost or duplicated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray

import serving.service
from cluster.access import Role
from cluster.collection import Collections, Manifest
from cluster.raycluster import live_shards
from cluster.settings import Settings
from cluster.storage import LocalStore
from jobs.bench_search import BENCH_MAX_FALSE_MATCH_RATE, SAMPLES_PER_IDENTITY, _table
from serving.service import FaceService
from serving.threaded import serve_in_thread

IDENTITIES = 800
FACES = IDENTITIES * SAMPLES_PER_IDENTITY
PROBES = 40


def _gallery(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows r belong to identity r // SAMPLES_PER_IDENTITY (ids r + 1), as in the benchmark; probes are new samples."""
    centres = rng.standard_normal((IDENTITIES, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def samples(of: np.ndarray) -> np.ndarray:
        vectors = of + rng.standard_normal(of.shape).astype(np.float32) * (0.27 / np.sqrt(128))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    probe_identity = rng.choice(IDENTITIES, PROBES, replace=False)
    return samples(np.repeat(centres, SAMPLES_PER_IDENTITY, axis=0)), samples(centres[probe_identity]), probe_identity


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
        collections.store.put_parquet(key, _table(vectors[start : start + 1000], start, manifest.shard_count))
        files.append(key)
    collections.publish(manifest, files)
    ray.init(num_cpus=2, include_dashboard=False, namespace="facegrid", log_to_driver=False)
    try:
        service = FaceService(settings)
        token = service.keys.create(Role.ADMIN, label="test")[1]
        with serve_in_thread(service) as url:
            yield {"service": service, "url": url, "token": token, "probes": probes, "identity": probe_identity}
    finally:
        ray.shutdown()


def test_search_answers_through_rebuilds_and_reshards(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving.service, "RETIRE_AFTER_S", 2.0)
    headers = {"X-API-Key": world["token"]}
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def search_until_stopped() -> None:
        with httpx.Client(base_url=world["url"], headers=headers, timeout=60) as client:
            while not stop.is_set():
                for probe, identity in zip(world["probes"], world["identity"], strict=True):
                    body = {"vector": probe.tolist(), "purpose": "system-test", "case_id": "R-1", "max_results": 10}
                    response = client.post("/v1/collections/bench/search-vector", json=body)
                    if response.status_code != 200 or response.json()["partial"]:
                        failures.append(f"{response.status_code}: {response.text[:300]}")
                        continue
                    ids = [int(m["face_id"], 16) for m in response.json()["matches"]]
                    mates = sum((i - 1) // SAMPLES_PER_IDENTITY == identity for i in ids)
                    if mates != SAMPLES_PER_IDENTITY:
                        failures.append(f"identity {identity}: {mates} of {SAMPLES_PER_IDENTITY} mates in the top 10")
                    answered[0] += 1

    searcher = threading.Thread(target=search_until_stopped)
    searcher.start()
    steps = [
        ({"retrain": True}, 4, "IVF32,SQ8"),
        ({"shards": 6}, 6, "IVF32,SQ8"),
        ({"shards": 3, "index_spec": "HNSW16"}, 3, "HNSW16"),
        ({"index_spec": "Flat"}, 3, "Flat"),
    ]
    seen = []
    try:
        with httpx.Client(base_url=world["url"], headers=headers, timeout=600) as admin:
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
    service: FaceService = world["service"]
    counts = ray.get([h.count.remote() for h in service._shards["bench"].values()])
    assert len(counts) == 3 and sum(counts) == FACES  # every face once, in the last shard set
    for retired in (4, 6):
        assert not live_shards("bench", retired), f"the {retired}-shard set was not retired"
