"""The OpenAPI schema tells the truth: every answer to a corpus of bad requests has a status its operation declares,
and every error, whatever raised it (our checks, FastAPI's validation, Starlette's parser, routing), is the envelope
{"error": {"code", "message"}}."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.keys.access import Role, local_operator
from cluster.settings import ServingSettings, Settings
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context

LIMIT = 50_000
SEARCH = {"purpose": "system-test", "case_id": "SCHEMA-1"}
VECTOR = {"vector": [1.0] + [0.0] * 127, **SEARCH}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture(scope="module")
def world(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None) -> Iterator[dict[str, Any]]:
    settings = Settings(
        model_dir=model_dir,
        store=str(tmp_path_factory.mktemp("schema-store")),
        serving=ServingSettings(max_upload_bytes=LIMIT),
    )
    ctx = Context(settings)
    asyncio.run(collections.create(ctx, local_operator(), "dlib", 2, 1e-5, model="dlib-resnet-v1"))
    tokens = {role: ctx.keys.create(role)[1] for role in (Role.ADMIN, Role.SEARCHER)}
    with serve_in_thread(ctx) as url:
        yield {"url": url, "admin": tokens[Role.ADMIN], "searcher": tokens[Role.SEARCHER]}


# (method, operation path or None for no operation, path, request keyword arguments, key, expected status)
CORPUS: list[tuple[str, str | None, str, dict[str, Any], str, int]] = [
    ("GET", None, "/v1/nowhere", {}, "admin", 404),
    ("PUT", None, "/v1/collections", {}, "admin", 405),
    ("GET", "/v1/collections", "/v1/collections", {}, "none", 401),
    ("GET", "/v1/collections", "/v1/collections", {"headers": {"X-API-Key": "fgk_x.y"}}, "none", 401),
    ("POST", "/v1/collections", "/v1/collections", {"json": {"name": "x"}}, "searcher", 403),
    (
        "POST",
        "/v1/collections",
        "/v1/collections",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        "admin",
        422,
    ),
    ("POST", "/v1/collections", "/v1/collections", {"json": {}}, "admin", 422),
    ("POST", "/v1/collections", "/v1/collections", {"json": {"name": "x", "shards": 0}}, "admin", 400),
    ("POST", "/v1/collections", "/v1/collections", {"json": {"name": "../x"}}, "admin", 400),
    ("POST", "/v1/collections", "/v1/collections", {"json": {"name": "x", "index_spec": "IVF0,SQ8"}}, "admin", 400),
    ("POST", "/v1/collections", "/v1/collections", {"json": {"name": "x", "model": "nope"}}, "admin", 400),
    ("POST", "/v1/collections", "/v1/collections", {"json": {"name": "dlib"}}, "admin", 409),
    ("GET", "/v1/collections/{collection}", "/v1/collections/absent", {}, "admin", 404),
    ("DELETE", "/v1/collections/{collection}", "/v1/collections/absent", {}, "admin", 404),
    (
        "POST",
        "/v1/collections/{collection}/rebuild",
        "/v1/collections/dlib/rebuild",
        {"json": {"index_spec": "HNSW0"}},
        "admin",
        400,
    ),
    ("POST", "/v1/collections/{collection}/rebuild", "/v1/collections/absent/rebuild", {"json": {}}, "admin", 404),
    ("POST", "/v1/collections/{collection}/search", "/v1/collections/dlib/search", {"data": SEARCH}, "admin", 422),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"content": b"--b\r\ngarbage", "headers": {"Content-Type": "multipart/form-data"}},
        "admin",
        400,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"files": {"image": ("p.jpg", b"not an image")}, "data": SEARCH},
        "admin",
        422,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"files": {"image": ("p.png", PNG)}, "data": SEARCH},
        "admin",
        422,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"files": {"image": ("p.jpg", b"\xff" * (LIMIT + 1))}, "data": SEARCH},
        "admin",
        413,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"files": {"image": ("p.jpg", b"x")}, "data": {**SEARCH, "purpose": "p" * 20_000}},
        "admin",
        400,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"files": {"image": ("p.jpg", b"x")}, "data": {**SEARCH, "purpose": "p" * 2_000_000}},
        "admin",
        413,  # over twice the upload limit: refused before the body is parsed
    ),
    (
        "POST",
        "/v1/collections/{collection}/search",
        "/v1/collections/dlib/search",
        {"files": {"image": ("p.jpg", b"x")}, "data": {**SEARCH, "max_results": "many"}},
        "admin",
        422,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/dlib/search-vector",
        {"json": {**VECTOR, "vector": [1.0, 2.0]}},
        "admin",
        409,  # a vector of another length than the collection's model gives: another model's (MODEL_MISMATCH)
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/dlib/search-vector",
        {"json": {**VECTOR, "vector": [0.0] * 128}},
        "admin",
        400,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/dlib/search-vector",
        {"json": {**VECTOR, "model_id": "sface-2021dec"}},
        "admin",
        409,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/dlib/search-vector",
        {"json": {**VECTOR, "threshold": 0.0}},
        "admin",
        403,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/dlib/search-vector",
        {"json": {"vector": VECTOR["vector"]}},
        "admin",
        400,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/absent/search-vector",
        {"json": VECTOR},
        "admin",
        404,
    ),
    (
        "POST",
        "/v1/collections/{collection}/search-vector",
        "/v1/collections/dlib/search-vector",
        {"json": []},
        "admin",
        422,
    ),
    (
        "POST",
        "/v1/collections/{collection}/faces",
        "/v1/collections/dlib/faces",
        {"json": {"object_key": "a.jpg"}},
        "admin",
        400,
    ),
    ("POST", "/v1/collections/{collection}/faces", "/v1/collections/dlib/faces", {"data": {"x": "1"}}, "admin", 400),
    (
        "POST",
        "/v1/collections/{collection}/faces",
        "/v1/collections/dlib/faces",
        {"json": {"object_key": "a.jpg", "max_faces": "many"}},
        "admin",
        422,
    ),
    ("GET", "/v1/collections/{collection}/faces", "/v1/collections/dlib/faces", {"params": {"limit": 0}}, "admin", 400),
    (
        "GET",
        "/v1/collections/{collection}/faces",
        "/v1/collections/dlib/faces",
        {"params": {"limit": "x"}},
        "admin",
        422,
    ),
    ("DELETE", "/v1/collections/{collection}/faces", "/v1/collections/dlib/faces", {"json": {}}, "admin", 400),
    ("POST", "/v1/compare", "/v1/compare", {"files": {"source": ("a", b"x")}, "data": SEARCH}, "admin", 422),
    ("POST", "/v1/compare", "/v1/compare", {"files": {"source": ("a", b"x"), "target": ("b", b"y")}}, "admin", 400),
    ("POST", "/v1/detect", "/v1/detect", {"files": {"image": ("p.jpg", b"\xff" * (LIMIT + 1))}}, "admin", 413),
    ("POST", "/v1/detect", "/v1/detect", {"files": {"image": ("p.jpg", b"GIF89a")}}, "admin", 422),
    ("POST", "/v1/keys", "/v1/keys", {"json": {"role": "emperor"}}, "admin", 400),
    ("POST", "/v1/keys", "/v1/keys", {"json": {"role": "admin"}}, "searcher", 403),
    ("DELETE", "/v1/keys/{key_id}", "/v1/keys/absent", {}, "admin", 404),
    ("GET", "/v1/audit", "/v1/audit", {"params": {"limit": 0}}, "admin", 400),
    ("GET", "/v1/audit", "/v1/audit", {"params": {"from": "yesterday"}}, "admin", 400),
    ("GET", "/v1/audit", "/v1/audit", {}, "searcher", 403),
]


def test_every_error_is_declared_and_enveloped(world: dict[str, Any]) -> None:
    schema = httpx.get(f"{world['url']}/openapi.json").json()
    undeclared = []
    for method, operation, path, request, key, expected in CORPUS:
        headers = {"X-API-Key": world[key]} if key in world else {}
        headers |= request.pop("headers", {})
        answer = httpx.request(method, f"{world['url']}{path}", headers=headers, timeout=60, **request)
        assert answer.status_code == expected, (method, path, answer.status_code, answer.text[:300])
        body = answer.json()
        assert set(body) == {"error"}, (method, path, body)
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
        assert len(answer.content) < 5_000, (method, path, "an error answer echoes its input")
        if operation is not None:
            declared = schema["paths"][operation][method.lower()]["responses"]
            if str(answer.status_code) not in declared:
                undeclared.append(f"{method} {operation}: {answer.status_code}")
    assert not undeclared, undeclared


def test_every_declared_error_is_the_envelope(world: dict[str, Any]) -> None:
    schema = httpx.get(f"{world['url']}/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorEnvelope"), (method, path, status, ref)
                else:  # JSON, or the Prometheus exposition's text
                    content = response.get("content", {})
                    assert "schema" in content.get("application/json", content.get("text/plain", {})), (method, path)


def test_a_405_allows_what_the_schema_documents_for_that_path(world: dict[str, Any]) -> None:
    """`Allow` names the methods of the path the request names, matched as OpenAPI matches (a path without
    parameters first): `users/search` is a search, not a user called "search"."""
    headers = {"X-API-Key": world["admin"]}
    for path, allowed in (
        ("/v1/collections/dlib/users/search", "POST"),
        ("/v1/collections/dlib/users/someone", "DELETE"),
        ("/v1/collections", "GET, POST"),
    ):
        answer = httpx.request("OPTIONS", f"{world['url']}{path}", headers=headers, timeout=60)
        assert answer.status_code == 405 and answer.headers["Allow"] == allowed, (path, answer.headers)


@pytest.mark.parametrize(
    ("body", "accepted"), [("6", True), ("6.0", True), ("6.5", False), ("true", False), ('"6"', False)]
)
def test_an_integer_field_takes_json_integers_only(body: str, accepted: bool) -> None:
    from pydantic import ValidationError

    from serving.schemas import Replicas

    try:
        assert Replicas.model_validate_json(f'{{"replicas": {body}}}').replicas == 6
        assert accepted
    except ValidationError:
        assert not accepted


@pytest.mark.parametrize(
    ("body", "shards"),
    [("6", 6), ("6.0", 6), ('"auto"', "auto"), ("6.5", None), ("true", None), ('"6"', None), ('"many"', None)],
)
def test_a_shard_count_is_an_integer_or_auto(body: str, shards: int | str | None) -> None:
    from pydantic import ValidationError

    from serving.schemas import CreateCollection, RebuildCollection

    for model, fields in ((CreateCollection, '"name": "c", '), (RebuildCollection, "")):
        try:
            assert model.model_validate_json(f'{{{fields}"shards": {body}}}').shards == shards
        except ValidationError:
            assert shards is None
