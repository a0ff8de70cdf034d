"""Hostile input against a served API: bad index specs, NaN and infinity everywhere, megabyte strings,
decompression bombs, huge photos, malformed bodies, unknown routes and a flood of probes. No answer is a 5xx,
every one is the error envelope without a traceback, refusals of authenticated calls are audited, the audit stays
strict JSON, and the server answers searches afterwards."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cluster.audit.log import read_records
from cluster.keys.access import Role, local_operator
from cluster.settings import ServingSettings, Settings
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context
from tests.conftest import lfw_photos
from tests.factories import png_header_only

SEARCH = {"purpose": "system-test", "case_id": "HOSTILE-1"}
MEGABYTE = "x" * 1_000_000
UNIT = [1.0] + [0.0] * 127


def _inflating_png(face: bytes) -> bytes:
    """A PNG whose compressed text chunk inflates to 5 MB (a small file)."""
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * 5_000_000, zip=True)
    out = io.BytesIO()
    Image.open(io.BytesIO(face)).save(out, "PNG", pnginfo=text)
    return out.getvalue()


def _large_photo(face: bytes, side: int) -> bytes:
    """A real face pasted into a side x side grey PNG: megapixels of work for the detector, a small file."""
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    canvas.paste(Image.open(io.BytesIO(face)), (side // 3, side // 3))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(
    model_dir: Path, lfw_images: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> Iterator[dict[str, Any]]:
    settings = Settings(
        model_dir=model_dir,
        store=str(tmp_path_factory.mktemp("hostile-store")),
        serving=ServingSettings(max_waiting_photos=2, public_rate_per_s=5, public_burst=10),
    )
    ctx = Context(settings)
    asyncio.run(collections.create(ctx, local_operator(), "gallery", 2, 1e-5))
    tokens = {role: ctx.keys.create(role)[1] for role in (Role.ADMIN, Role.SEARCHER)}
    photos = lfw_photos(lfw_images, people=3)
    with serve_in_thread(ctx) as url:
        admin = httpx.Client(base_url=url, headers={"X-API-Key": tokens[Role.ADMIN]}, timeout=120)
        for photo in photos:
            added = admin.post("/v1/collections/gallery/faces", files={"image": (photo.name, photo.read_bytes())})
            assert added.status_code == 200, added.text
        yield {"url": url, "ctx": ctx, "admin": admin, "tokens": tokens, "photo": photos[0].read_bytes()}
        admin.close()


def _cases(photo: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    """(what, method and path, request arguments): each must be refused cleanly."""
    vector = "/v1/collections/gallery/search-vector"
    search = "/v1/collections/gallery/search"
    image = {"image": ("p.jpg", photo)}
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for spec in ("HNSW0", "HNSW100000", "IVF0,SQ8", "IVF4,PQ128x", "IVF4,PQ0", "IVF999999,SQ8", "Flat;rm -rf /"):
        cases.append((f"create with {spec}", "POST /v1/collections", {"json": {"name": "bad", "index_spec": spec}}))
        cases.append((f"rebuild to {spec}", "POST /v1/collections/gallery/rebuild", {"json": {"index_spec": spec}}))
    for token in ("NaN", "Infinity", "-Infinity", "1e309"):
        raw = f'{{"vector": {json.dumps(UNIT)}, "purpose": "system-test", "case_id": "H", "threshold": {token}}}'
        cases.append((f"vector threshold {token}", f"POST {vector}", {"content": raw, "headers": JSON}))
        nan_vector = json.dumps(UNIT).replace("1.0", token, 1)
        raw = f'{{"vector": {nan_vector}, "purpose": "system-test", "case_id": "H"}}'
        cases.append((f"vector holding {token}", f"POST {vector}", {"content": raw, "headers": JSON}))
        raw = f'{{"name": "rates", "max_false_match_rate": {token}}}'
        cases.append((f"create with rate {token}", "POST /v1/collections", {"content": raw, "headers": JSON}))
    for text in ("nan", "inf", "-inf", "1e309"):
        cases.append(
            (f"form threshold {text}", f"POST {search}", {"files": image, "data": {**SEARCH, "threshold": text}})
        )
    for field in ("max_results", "nprobe", "ef_search"):
        body = {"vector": UNIT, **SEARCH, field: 10**30}
        cases.append((f"{field} 1e30", f"POST {vector}", {"json": body}))
        cases.append((f"{field} negative", f"POST {vector}", {"json": {**body, field: -5}}))
    cases += [
        ("1 MB case id", f"POST {vector}", {"json": {"vector": UNIT, "purpose": "system-test", "case_id": MEGABYTE}}),
        ("1 MB purpose", f"POST {vector}", {"json": {"vector": UNIT, "purpose": MEGABYTE, "case_id": "H"}}),
        ("1 MB form case id", f"POST {search}", {"files": image, "data": {**SEARCH, "case_id": MEGABYTE}}),
        ("1 MB collection name", "POST /v1/collections", {"json": {"name": MEGABYTE}}),
        (
            "1 MB external id",
            "POST /v1/collections/gallery/faces",
            {"files": image, "data": {"external_image_id": MEGABYTE}},
        ),
        ("1 MB user id", "POST /v1/collections/gallery/users", {"json": {"user_id": MEGABYTE}}),
        ("vector of 1M floats", f"POST {vector}", {"json": {"vector": [0.0] * 1_000_000, **SEARCH}}),
        ("vector of the wrong length", f"POST {vector}", {"json": {"vector": [1.0] * 7, **SEARCH}}),
        (
            "decompression bomb",
            f"POST {search}",
            {"files": {"image": ("b.png", png_header_only(60_000, 60_000))}, "data": SEARCH},
        ),
        ("bomb to detect", "POST /v1/detect", {"files": {"image": ("b.png", png_header_only(30_000, 30_000))}}),
        ("truncated JPEG", f"POST {search}", {"files": {"image": ("t.jpg", photo[: len(photo) // 3])}, "data": SEARCH}),
        ("JPEG cut to 200 bytes", f"POST {search}", {"files": {"image": ("t.jpg", photo[:200])}, "data": SEARCH}),
        ("cut JPEG to detect", "POST /v1/detect", {"files": {"image": ("t.jpg", photo[:200])}}),
        ("cut JPEG to add", "POST /v1/collections/gallery/faces", {"files": {"image": ("t.jpg", photo[:200])}}),
        (
            "PNG text past 1 MB",
            f"POST {search}",
            {"files": {"image": ("t.png", _inflating_png(photo))}, "data": SEARCH},
        ),
        ("not an image", f"POST {search}", {"files": {"image": ("x.jpg", b"%PDF-1.4 hello")}, "data": SEARCH}),
        ("empty image", f"POST {search}", {"files": {"image": ("x.jpg", b"")}, "data": SEARCH}),
        ("malformed multipart", f"POST {search}", {"content": b"--zz\r\nnonsense", "headers": MULTIPART}),
        ("multipart without image", f"POST {search}", {"data": SEARCH}),
        ("JSON that is not JSON", f"POST {vector}", {"content": b"{vector: [1,", "headers": JSON}),
        ("JSON array body", f"POST {vector}", {"json": [1, 2, 3]}),
        ("deeply nested JSON", f"POST {vector}", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}),
        ("body over the limit", f"POST {search}", {"content": b"0" * 50_000_000, "headers": MULTIPART}),
        ("unknown route", "GET /v1/nowhere/at/all", {}),
        ("wrong method", "PATCH /v1/collections/gallery", {}),
        ("face id not hex", "POST /v1/collections/gallery/faces/zzzz/search", {"json": SEARCH}),
        ("audit with a bad date", "GET /v1/audit", {"params": {"from": "yesterday"}}),
        (
            "calibration of NaNs",
            "PUT /v1/collections/gallery/calibration",
            {"content": b'{"model_id": NaN}', "headers": JSON},
        ),
    ]
    return cases


JSON = {"Content-Type": "application/json"}
MULTIPART = {"Content-Type": "multipart/form-data; boundary=zz"}


def _clean(answer: httpx.Response, what: str) -> None:
    assert answer.status_code < 500, (what, answer.status_code, answer.text[:300])
    assert answer.status_code >= 400, (what, answer.status_code, answer.text[:300])
    body = answer.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), (what, body)
    assert "Traceback" not in answer.text and len(answer.content) < 5_000, (what, answer.text[:300])


def test_hostile_requests_are_refused_cleanly(world: dict[str, Any]) -> None:
    cases = _cases(world["photo"])
    assert len(cases) >= 30
    admin: httpx.Client = world["admin"]
    before = len(read_records(world["ctx"].store))
    for what, route, request in cases:
        method, path = route.split(" ", 1)
        headers = {**admin.headers, **request.pop("headers", {})}
        _clean(admin.request(method, path, headers=headers, **request), what)
    assert admin.get("/healthz").status_code == 200
    assert admin.request("PATCH", "/v1/collections/gallery").headers["allow"]  # a 405 names what is allowed
    healthy = admin.post("/v1/collections/gallery/search", files={"image": ("p.jpg", world["photo"])}, data=SEARCH)
    assert healthy.status_code == 200 and healthy.json()["matches"], healthy.text
    assert admin.get("/v1/collections/gallery").json()["index_spec"] == "auto"  # no bad spec was applied
    records = read_records(world["ctx"].store)[before:]
    vector_refusals = [r for r in records if r["action"] == "search-vector" and r["outcome"] == "refused"]
    assert len(vector_refusals) >= 12  # NaN and infinity, out-of-range knobs, long strings: each audited
    # Strict JSON: Python's parser would accept NaN tokens; this one refuses them.
    segments = sorted(Path(world["ctx"].store.root, "audit").rglob("*.jsonl"))
    for line in b"".join(p.read_bytes() for p in segments).splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"audit holds {token}"))


def test_large_photos_cost_bounded_work_and_a_flood_is_told_to_wait(world: dict[str, Any]) -> None:
    large = _large_photo(world["photo"], 4600)  # 21 megapixels: under the pixel limit, detected at 6
    admin: httpx.Client = world["admin"]
    found = admin.post("/v1/detect", files={"image": ("big.png", large)})
    assert found.status_code == 200 and found.json()["faces"], found.text  # scaled down, still found

    def search(_: int) -> httpx.Response:
        return httpx.post(
            f"{world['url']}/v1/collections/gallery/search",
            headers={"X-API-Key": world["tokens"][Role.SEARCHER]},
            files={"image": ("big.png", large)},
            data=SEARCH,
            timeout=300,
        )

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(search, range(12)))
    busy = [a for a in answers if a.status_code == 429]
    assert busy and all(int(a.headers["Retry-After"]) >= 1 for a in busy)
    assert all(a.status_code in (200, 429) for a in answers), [a.text[:200] for a in answers]
    for answer in busy:
        _clean(answer, "a probe past the queue")
    refusals = [r for r in read_records(world["ctx"].store) if r.get("code") == "TOO_MANY_REQUESTS"]
    assert len(refusals) == len(busy)  # each one audited as a refused search


def test_public_routes_are_rate_limited_per_client(world: dict[str, Any]) -> None:
    answers = [httpx.get(f"{world['url']}/v1/transparency") for _ in range(30)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited and all(a.status_code in (200, 429) for a in answers)
    assert int(limited[0].headers["Retry-After"]) >= 1
    _clean(limited[0], "transparency past its rate")
    assert np.mean([a.status_code == 200 for a in answers]) >= 10 / 30  # the burst went through


# Another process sends the flood, as a client on a socket would: the head and the body's first 64 kB, then it
# reads the answer (the server's own process keeps its interpreter lock to itself).
SEND = """
import http.client, socket, sys, time
from urllib.parse import urlsplit
url, path, key = sys.argv[1:]
flood = open(path, "rb").read()
where = urlsplit(url)
head = (f"DELETE {where.path} HTTP/1.1\\r\\nHost: {where.netloc}\\r\\nX-API-Key: {key}\\r\\n"
        f"Content-Type: application/json\\r\\nContent-Length: {len(flood)}\\r\\n\\r\\n").encode()
with socket.create_connection((where.hostname, where.port)) as conn:
    began = time.perf_counter()
    conn.sendall(head + flood[:65536])  # the rest would follow; the answer comes first
    answer = http.client.HTTPResponse(conn)
    answer.begin()  # the status line and head; the body (by its length) may come in later packets
    took = time.perf_counter() - began
    body = answer.read()
sys.stdout.write(body.decode() + f"\\n{answer.status} {took:.6f}")
"""


def test_a_flood_of_ids_is_refused_at_once_and_others_do_not_notice(world: dict[str, Any], tmp_path: Path) -> None:
    """20 million ids in one erasure, by a key that may not even erase, from another process: refused before
    the body is read, while another client's requests go on as before (figures printed; loose bounds here)."""
    url, searcher = world["url"], world["tokens"][Role.SEARCHER]
    flood = tmp_path / "flood.json"
    flood.write_bytes(b'{"face_ids": [' + b'"a",' * 20_000_000 + b'"a"]}')
    latencies: list[float] = []
    done = False

    def other_client() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": world["tokens"][Role.ADMIN]}, timeout=30) as client:
            while not done or len(latencies) < 50:
                began = time.perf_counter()
                assert client.get("/v1/collections/gallery").status_code == 200
                latencies.append(time.perf_counter() - began)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(other_client)
        time.sleep(0.5)
        command = [sys.executable, "-c", SEND, f"{url}/v1/collections/gallery/faces", str(flood), searcher]
        sent = subprocess.run(command, capture_output=True, timeout=60)
        done = True
        running.result()
    body, outcome = sent.stdout.rsplit(b"\n", 1)
    status, refused_s = outcome.decode().split()[0], float(outcome.decode().split()[1])
    assert status == "413" and json.loads(body)["error"]["code"] == "REQUEST_TOO_LARGE", sent.stdout[-300:]
    p99 = float(np.percentile(latencies, 99))
    size = flood.stat().st_size / 1e6
    print(f"20M-id body ({size:.0f} MB) refused in {refused_s * 1000:.2f} ms; another client's p99 {p99 * 1000:.1f} ms")
    assert refused_s < 5 and p99 < 1.0
    admin: httpx.Client = world["admin"]
    over = admin.request("DELETE", "/v1/collections/gallery/faces", json={"face_ids": ["a"] * 4097})
    assert over.status_code == 400 and "4096" in over.text  # within the byte limit: the schema's list bound
