"""Every role on every route, allowed or denied, with its status code; refusals are audited and reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.audit.log import read_records
from cluster.audit.verify import verify
from cluster.keys.access import Role, local_operator
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context
from tests.conftest import lfw_photos

ROLES = ("admin", "indexer", "searcher", "auditor")
SEARCH = {"purpose": "system-test", "case_id": "MATRIX-1"}
Request = Callable[[httpx.Client, str], httpx.Response]


@pytest.fixture(scope="module")
def world(
    model_dir: Path, lfw_images: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> Iterator[dict[str, Any]]:
    settings = Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("access-store")))
    service = Context(settings)
    for name in ("alpha", "beta"):
        asyncio.run(collections.create(service, local_operator(), name, 2, 1e-4))
    tokens = {role: service.keys.create(role)[1] for role in ROLES}
    tokens["searcher-alpha-only"] = service.keys.create(Role.SEARCHER, ["alpha"])[1]
    revoked, tokens["revoked"] = service.keys.create(Role.ADMIN)
    service.keys.revoke(revoked.key_id)
    with serve_in_thread(service) as url:
        yield {"service": service, "url": url, "tokens": tokens, "photo": lfw_photos(lfw_images, 1)[0].read_bytes()}


def _routes(photo: bytes) -> dict[str, tuple[Request, set[str]]]:
    image = {"image": ("p.jpg", photo)}
    vector = {"vector": [1.0] + [0.0] * 127, **SEARCH}
    return {
        "GET /v1/collections": (lambda c, r: c.get("/v1/collections"), set(ROLES)),
        "POST /v1/collections": (lambda c, r: c.post("/v1/collections", json={"name": f"new-{r}"}), {"admin"}),
        "GET /v1/collections/{c}": (lambda c, r: c.get("/v1/collections/alpha"), set(ROLES)),
        "DELETE /v1/collections/{c}": (lambda c, r: c.delete(f"/v1/collections/new-{r}"), {"admin"}),
        "POST /v1/collections/{c}/search": (
            lambda c, r: c.post("/v1/collections/alpha/search", files=image, data=SEARCH),
            {"admin", "searcher"},
        ),
        "POST /v1/collections/{c}/search-vector": (
            lambda c, r: c.post("/v1/collections/alpha/search-vector", json=vector),
            {"admin", "searcher"},
        ),
        "GET /v1/collections/{c}/faces": (lambda c, r: c.get("/v1/collections/alpha/faces"), {"admin", "indexer"}),
        "DELETE /v1/collections/{c}/faces": (
            lambda c, r: c.request("DELETE", "/v1/collections/alpha/faces", json={"face_ids": ["0" * 16]}),
            {"admin", "indexer"},
        ),
        "POST /v1/compare": (
            lambda c, r: c.post(
                "/v1/compare", files={"source": ("a.jpg", photo), "target": ("b.jpg", photo)}, data=SEARCH
            ),
            {"admin", "searcher"},
        ),
        "POST /v1/detect": (lambda c, r: c.post("/v1/detect", files=image), {"admin", "indexer", "searcher"}),
        "GET /v1/audit": (lambda c, r: c.get("/v1/audit"), {"admin", "auditor"}),
        "GET /v1/transparency": (lambda c, r: c.get("/v1/transparency"), {*ROLES, "anonymous"}),
        "GET /healthz": (lambda c, r: c.get("/healthz"), {*ROLES, "anonymous"}),
    }


def test_role_route_matrix(world: dict[str, Any]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for route, (send, allowed) in _routes(world["photo"]).items():
        for role in (*ROLES, "anonymous", "revoked"):
            headers = {"X-API-Key": world["tokens"][role]} if role in world["tokens"] else {}
            with httpx.Client(base_url=world["url"], headers=headers, timeout=60) as client:
                status = send(client, role).status_code
            seen[(route, role)] = status
            if role in allowed or "anonymous" in allowed:  # public routes ignore keys, even revoked ones
                assert 200 <= status < 300, (route, role, status)
            elif role in ("anonymous", "revoked"):
                assert status == 401, (route, role, status)
            else:
                assert status == 403, (route, role, status)
    print("\n".join(f"{route:40s} {role:10s} {status}" for (route, role), status in seen.items()))


def test_grants_are_per_collection(world: dict[str, Any]) -> None:
    headers = {"X-API-Key": world["tokens"]["searcher-alpha-only"]}
    with httpx.Client(base_url=world["url"], headers=headers, timeout=60) as client:
        files = {"image": ("p.jpg", world["photo"])}
        assert client.post("/v1/collections/alpha/search", files=files, data=SEARCH).status_code == 200
        assert client.post("/v1/collections/beta/search", files=files, data=SEARCH).status_code == 403
        assert client.get("/v1/collections").json()["collections"] == ["alpha"]


def test_refusals_are_audited(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    headers = {"Authorization": f"Bearer {world['tokens']['searcher']}"}
    files = {"image": ("p.jpg", world["photo"])}
    with httpx.Client(base_url=world["url"], headers=headers, timeout=60) as client:
        no_purpose = client.post("/v1/collections/alpha/search", files=files, data={"case_id": "C-9"})
        no_case = client.post("/v1/collections/alpha/search", files=files, data={"purpose": "system-test"})
        curiosity = client.post("/v1/collections/alpha/search", files=files, data={**SEARCH, "purpose": "curiosity"})
        loose = client.post("/v1/collections/alpha/search", files=files, data={**SEARCH, "threshold": 0.1})
        report = client.get("/v1/transparency").json()
    for response in (no_purpose, no_case, curiosity):
        assert response.status_code == 400 and response.json()["error"]["code"] == "PURPOSE_REQUIRED"
    assert loose.status_code == 403 and loose.json()["error"]["code"] == "THRESHOLD_BELOW_FLOOR"
    floor = service.models.floor_similarity(service.collections.get("alpha"))
    assert f"{floor:.4f}" in loose.json()["error"]["message"] and loose.json()["error"]["floor"] == round(floor, 6)
    records = read_records(service.store)
    refused = [r for r in records if r.get("outcome") == "refused" and r["action"] != "authenticate"]
    assert {r["code"] for r in refused} >= {"PURPOSE_REQUIRED", "THRESHOLD_BELOW_FLOOR", "FORBIDDEN"}
    assert all(r["key_id"] and r["role"] and r["client"] == "127.0.0.1" for r in refused)
    unknown = [r for r in records if r["action"] == "authenticate"]  # the matrix's anonymous and revoked calls
    assert unknown and all(r["outcome"] == "refused" and r["key_id"] is None for r in unknown)
    assert report["refused_searches"] >= 4 and report["searches"] >= 1
    assert "system-test" in report["searches_by_purpose"] and "case_id" not in str(report)
    assert verify(service.store)["ok"]


def test_search_record_holds_what_the_issue_lists(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    headers = {"X-API-Key": world["tokens"]["searcher"]}
    with httpx.Client(base_url=world["url"], headers=headers, timeout=60) as client:
        data = {**SEARCH, "case_id": "RECORD-1"}
        answer = client.post("/v1/collections/alpha/search", files={"image": ("p.jpg", world["photo"])}, data=data)
    assert answer.status_code == 200, answer.text
    ok = [r for r in read_records(service.store) if r.get("action") == "search" and r.get("outcome") == "ok"]
    record = ok[-1]
    assert record["case_id"] == "RECORD-1"
    for field in (
        "time",
        "key_id",
        "role",
        "collection",
        "purpose",
        "case_id",
        "probe_sha256",
        "threshold_requested",
        "threshold_applied",
        "results",
        "client",
        "prev_hash",
        "hash",
    ):
        assert field in record, field


def test_non_finite_thresholds_and_bad_index_specs_are_refused(world: dict[str, Any]) -> None:
    service: Context = world["service"]
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    files = {"image": ("p.jpg", world["photo"])}
    vector = {"vector": [1.0] + [0.0] * 127, **SEARCH}
    with httpx.Client(base_url=world["url"], headers=headers, timeout=60) as client:
        for value in ("nan", "inf", "-inf", "1e309", "2"):
            probe = client.post("/v1/collections/alpha/search", files=files, data={**SEARCH, "threshold": value})
            assert probe.status_code == 400 and probe.json()["error"]["code"] == "INVALID_REQUEST", (value, probe.text)
        raw = '{"vector": [1.0' + ", 0.0" * 127 + '], "purpose": "system-test", "case_id": "C", "threshold": NaN}'
        by_vector = client.post(
            "/v1/collections/alpha/search-vector", content=raw, headers={"Content-Type": "application/json"}
        )
        assert by_vector.status_code == 400, by_vector.text
        assert client.post("/v1/collections/alpha/search-vector", json={**vector, "threshold": 5}).status_code == 400
        for spec in ("HNSW0", "IVF0,SQ8", "IVF4,PQ7", "IVF99999999,SQ8"):
            created = client.post("/v1/collections", json={"name": "bad-spec", "index_spec": spec})
            assert created.status_code == 400 and created.json()["error"]["code"] == "INVALID_REQUEST", spec
            rebuilt = client.post("/v1/collections/alpha/rebuild", json={"index_spec": spec})
            assert rebuilt.status_code == 400, (spec, rebuilt.text)
        huge = {**SEARCH, "case_id": "C" * 500_000}  # a megabyte is refused (413) before it is read
        long_case = client.post("/v1/collections/alpha/search-vector", json={**vector, **huge})
        assert long_case.status_code == 400 and "at most 128" in long_case.json()["error"]["message"]
        long_purpose = client.post("/v1/collections/alpha/search-vector", json={**vector, "purpose": "P" * 100_000})
        assert long_purpose.status_code == 400 and len(long_purpose.text) < 2_000
        assert client.get("/healthz").json()["status"] == "ok"
    assert max(len(str(r.get("case_id"))) + len(str(r.get("purpose"))) for r in read_records(service.store)) < 400
    # The audit stays strict JSON: no NaN or Infinity tokens, whatever was asked.
    for record in read_records(service.store):
        json.dumps(record, allow_nan=False)
