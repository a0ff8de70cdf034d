"""One audit path: each audited action, through HTTP and through the CLI, leaves records of one shape; a search
that fails inside the fan-out, a failed index job and a request with a revoked key are recorded too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from typer.testing import CliRunner

from cluster.audit.log import read_records
from cluster.audit.verify import verify
from cluster.keys.access import Role, local_operator
from cluster.models.registry import DLIB_ID
from cluster.settings import Settings
from cluster.shards.set import _key
from jobs.cli.main import app
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context
from tests.conftest import lfw_photos
from tests.factories import index

SEARCH = {"purpose": "system-test", "case_id": "SHAPE-1"}
# What differs between two records of one action by design: the chain, the time, the caller, the results.
VARYING = {"seq", "time", "prev_hash", "hash"}


class BrokenShard:
    """A shard actor whose searches fail, as one whose process lost its snapshot would."""

    def search(self, shards: list[int], queries: np.ndarray, k: int, knobs: object = None) -> Any:
        raise RuntimeError("this shard is broken on purpose")


@pytest.fixture(scope="module")
def world(
    model_dir: Path, lfw_images: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> Iterator[dict[str, Any]]:
    store = tmp_path_factory.mktemp("audited-store")
    settings = Settings(model_dir=model_dir, store=str(store))
    ctx = Context(settings)
    admin = ctx.keys.create(Role.ADMIN, label="shape")[1]
    photos = [p.read_bytes() for p in lfw_photos(lfw_images, 2)]
    env = {"FACEGRID_MODEL_DIR": str(model_dir), "FACEGRID_STORE": str(store)}
    with serve_in_thread(ctx) as url, httpx.Client(base_url=url, headers={"X-API-Key": admin}, timeout=120) as http:
        yield {"ctx": ctx, "http": http, "env": env, "photos": photos, "dir": tmp_path_factory.mktemp("shape")}


def _cli(world: dict[str, Any], *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"], env=world["env"])
    return result


def _last(ctx: Context, action: str, client: str | None) -> dict[str, Any]:
    found = [r for r in read_records(ctx.store) if r["action"] == action and (client is None or r["client"] == client)]
    assert found, f"no {action} record from {client}"
    return found[-1]


def _shape(record: dict[str, Any]) -> set[str]:
    return set(record) - VARYING


def test_each_action_has_one_shape_through_http_and_the_cli(world: dict[str, Any]) -> None:
    ctx, http, folder = world["ctx"], world["http"], world["dir"]
    photo, other = world["photos"]
    (folder / "a.jpg").write_bytes(photo)
    (folder / "b.jpg").write_bytes(other)
    search_form = {**SEARCH, "max_results": "5"}
    both: list[tuple[str, Any, tuple[str, ...]]] = [
        (
            "create-collection",
            lambda: http.post("/v1/collections", json={"name": "h1", "shards": 2}),
            ("collections", "create", "c1", "--shards", "2"),
        ),
        (
            "rebuild-collection",
            lambda: http.post("/v1/collections/h1/rebuild", json={}),
            ("collections", "rebuild", "c1"),
        ),
        (
            "search",
            lambda: http.post("/v1/collections/h1/search", files={"image": ("a.jpg", photo)}, data=search_form),
            ("search", "c1", str(folder / "a.jpg"), "--purpose", "system-test", "--case-id", "SHAPE-1"),
        ),
        (
            "compare",
            lambda: http.post("/v1/compare", files={"source": ("a", photo), "target": ("b", other)}, data=SEARCH),
            ("compare", str(folder / "a.jpg"), str(folder / "b.jpg"), "--purpose", "system-test", "--case-id", "S"),
        ),
        (
            "delete-faces",
            lambda: http.request("DELETE", "/v1/collections/h1/faces", json={"face_ids": ["0" * 16]}),
            ("faces", "delete", "c1", "--face-id", "0" * 16),
        ),
        (
            "key-create",
            lambda: http.post("/v1/keys", json={"role": "auditor"}),
            ("keys", "create", "--role", "auditor"),
        ),
        (
            "export",
            lambda: http.get("/v1/audit", params={"limit": 5}),
            ("audit", "export", "--out", str(folder / "audit.csv")),
        ),
        ("delete-collection", lambda: http.delete("/v1/collections/h1"), ("collections", "delete", "c1", "--yes")),
    ]
    for action, over_http, command in both:
        answered = over_http()
        assert answered.status_code < 300, (action, answered.text)
        ran = _cli(world, *command)
        assert ran.exit_code == 0, (action, ran.output)
        by_http, by_cli = _last(ctx, action, "127.0.0.1"), _last(ctx, action, "cli")
        assert _shape(by_http) == _shape(by_cli), (action, _shape(by_http) ^ _shape(by_cli))
        assert by_http["outcome"] == by_cli["outcome"] == "ok" and by_http["code"] is None
    created = [r for r in read_records(ctx.store) if r["action"] == "key-create"]
    revoked_key = created[-1]["key"]
    assert http.delete(f"/v1/keys/{revoked_key}").status_code == 200
    assert _cli(world, "keys", "revoke", created[-2]["key"]).exit_code == 0
    assert _shape(_last(ctx, "key-revoke", "127.0.0.1")) == _shape(_last(ctx, "key-revoke", "cli"))

    # Refusals take the same shape as what they refused.
    refused_http = http.post("/v1/collections/missing/search", files={"image": ("a.jpg", photo)}, data={})
    refused_cli = _cli(world, "search", "missing", str(folder / "a.jpg"), "--purpose", "gossip", "--case-id", "S")
    assert refused_http.status_code == 400 and refused_cli.exit_code == 2
    by_http, by_cli = _last(ctx, "search", "127.0.0.1"), _last(ctx, "search", "cli")
    assert by_http["outcome"] == by_cli["outcome"] == "refused" and by_http["code"] == "PURPOSE_REQUIRED"
    assert _shape(by_http) == _shape(by_cli)
    assert verify(ctx.store)["ok"]


def test_a_search_failing_inside_the_fan_out_is_recorded(world: dict[str, Any]) -> None:
    ctx, http = world["ctx"], world["http"]
    asyncio.run(collections.create(ctx, local_operator(), "broken", 2, 1e-5))
    manifest = ctx.collections.get("broken")
    broken = ray.remote(BrokenShard)
    ctx.shards("broken")._handles = {_key(manifest): {0: [broken.remote()], 1: [broken.remote()]}}
    body = {"vector": [1.0] + [0.0] * 127, **SEARCH}
    answer = http.post("/v1/collections/broken/search-vector", json=body)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "SHARDS_UNAVAILABLE"
    record = _last(ctx, "search-vector", "127.0.0.1")
    assert (record["outcome"], record["code"], record["collection"]) == ("error", "SHARDS_UNAVAILABLE", "broken")


def test_a_failed_index_job_is_recorded(world: dict[str, Any]) -> None:
    ctx, folder = world["ctx"], world["dir"]
    asyncio.run(collections.create(ctx, local_operator(), "sface-only", 2, 1e-5))
    with pytest.raises(Exception, match="holds sface-2021dec embeddings"):
        index(ctx, "sface-only", str(folder), model=DLIB_ID)
    record = _last(ctx, "index", "cli")
    assert (record["outcome"], record["code"], record["collection"]) == ("refused", "MODEL_MISMATCH", "sface-only")


def test_requests_with_a_missing_or_revoked_key_are_counted(world: dict[str, Any]) -> None:
    ctx = world["ctx"]
    key, token = ctx.keys.create(Role.SEARCHER, label="soon revoked")
    ctx.keys.revoke(key.key_id)
    before = [r for r in read_records(ctx.store) if r["action"] == "authenticate"]
    url = str(world["http"].base_url)
    with httpx.Client(base_url=url, timeout=60) as anonymous:
        assert anonymous.get("/v1/collections", headers={"X-API-Key": token}).status_code == 401
        assert anonymous.get("/v1/collections").status_code == 401
        assert anonymous.get("/v1/collections", headers={"X-API-Key": "fgk_nobody.secret"}).status_code == 401
    after = [r for r in read_records(ctx.store) if r["action"] == "authenticate"]
    new = after[len(before) :]
    assert len(new) == 3 and all(r["outcome"] == "refused" and r["code"] == "NOT_AUTHENTICATED" for r in new)
    assert new[0]["claimed_key"] == key.key_id and new[0]["route"] == "/v1/collections" and new[0]["key_id"] is None
    assert json.dumps(new)  # strict JSON, like every record
