"""Every named series is exported after a small index job and a few searches: the actors' through Ray's metrics
agent (what the Ray dashboard's metrics view and a Prometheus scrape read), the API's on /metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import ray

from cluster.keys.access import Role, local_operator
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from jobs.s3local import free_port
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context
from tests.conftest import lfw_photos
from tests.factories import index

pytestmark = pytest.mark.slow

RAY_SERIES = (
    "ray_facegrid_index_photos_total",
    "ray_facegrid_index_faces_total",
    "ray_facegrid_index_errors_total",
    "ray_facegrid_index_stage_seconds_total",
    "ray_facegrid_shard_searches_total",
    "ray_facegrid_shard_search_seconds_bucket",
    "ray_facegrid_shard_queue_depth",
    "ray_facegrid_shard_faces",
)
API_SERIES = (
    "facegrid_requests_total",
    "facegrid_request_seconds_bucket",
    "facegrid_partial_answers_total",
    "facegrid_shard_up",
    "facegrid_audit_append_seconds_bucket",
    "facegrid_refusals_total",
)


def _refusals(exposition: str, code: str = "PURPOSE_REQUIRED") -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "facegrid_refusals_total" and sample.labels.get("code") == code:
                return float(sample.value)
    return 0.0


def test_actor_and_api_series_are_exported(lfw_images: Path, model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="facegrid",
        log_to_driver=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 500},
    )
    try:
        source = tmp_path / "photos"
        source.mkdir()
        for photo in lfw_photos(lfw_images, people=3):
            (source / photo.name).write_bytes(photo.read_bytes())
        (source / "broken.jpg").write_bytes(b"not a photo")  # an error by reason
        ctx = Context(Settings(model_dir=model_dir, store=str(tmp_path / "store")))
        asyncio.run(collections.create(ctx, local_operator(), "seen", 2, 1e-5))
        index(ctx, "seen", str(source), quality_filter=QualityFilter.NONE)
        token = ctx.keys.create(Role.SEARCHER)[1]
        probe = next(source.glob("*_0001.jpg")).read_bytes()
        with serve_in_thread(ctx) as url, httpx.Client(base_url=url, headers={"X-API-Key": token}) as client:
            search = {"purpose": "system-test", "case_id": "METRICS-1"}
            for _ in range(3):
                answer = client.post("/v1/collections/seen/search", files={"image": ("p.jpg", probe)}, data=search)
                assert answer.status_code == 200, answer.text
            before = _refusals(client.get("/metrics").text)
            refused = client.post("/v1/collections/seen/search", files={"image": ("p.jpg", probe)}, data={})
            assert refused.status_code == 400
            exported = client.get("/metrics").text
        for series in API_SERIES:
            assert series in exported, series
        assert _refusals(exported) == before + 1  # the registry is the process's: other tests count there too
        deadline, found = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            found = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            if all(series in found for series in RAY_SERIES):
                break
            time.sleep(0.5)
        missing = [s for s in RAY_SERIES if s not in found]
        assert not missing, missing
        assert 'reason="UNSUPPORTED_FORMAT"' in found or 'reason="CORRUPT_IMAGE"' in found
        ctx.close()
    finally:
        ray.shutdown()
