"""One rule for store work in async code: it runs on worker threads, never on the event loop, where a slow store
(an object store across a network) would stall every request of the server. The one exception is measured and
documented: a folder store's audit append (about 0.3 ms, less than a thread hop; serving/usecases/audited.py)."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import storage
from cluster.keys.access import Role
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases.context import Context
from tests.conftest import lfw_photos

STORE_CALLS = ("list", "get", "put", "delete", "info", "exists", "append", "last_line", "get_parquet", "put_parquet")
SEARCH = {"purpose": "system-test", "case_id": "LOOP-1"}


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def on_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Store calls made on an event loop, each as the key and where in our code it came from."""
    found: list[str] = []

    def guarded(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: storage.LocalStore, key: str = "", *args: Any, **kwargs: Any) -> Any:
            if _on_loop() and not key.startswith("audit/"):
                ours = [f for f in traceback.extract_stack()[:-1] if "/serving/" in f.filename]
                where = ours[-1] if ours else None
                found.append(
                    f"{name}({key}) from {where.filename.rsplit('/', 2)[-2:]}:{where.lineno}" if where else name
                )
            return call(self, key, *args, **kwargs)

        return wrapper

    for name in STORE_CALLS:
        monkeypatch.setattr(storage.LocalStore, name, guarded(name, getattr(storage.LocalStore, name)))
    yield found


def test_no_store_work_on_the_event_loop(
    on_loop: list[str], model_dir: Path, lfw_images: Path, tmp_path: Path, local_ray: None
) -> None:
    ctx = Context(Settings(model_dir=model_dir, store=str(tmp_path / "store")))
    token = ctx.keys.create(Role.ADMIN)[1]
    photos = lfw_photos(lfw_images, people=2)
    with serve_in_thread(ctx) as url, httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=120) as http:
        c = "/v1/collections/loop"
        steps = [
            http.post("/v1/collections", json={"name": "loop", "shards": 2}),
            *(http.post(f"{c}/faces", files={"image": (p.name, p.read_bytes())}) for p in photos),
            http.post(f"{c}/search", files={"image": ("p.jpg", photos[0].read_bytes())}, data=SEARCH),
            http.get(c),
            http.get(f"{c}/faces"),
            http.post(f"{c}/users", json={"user_id": "u1"}),
            http.get(f"{c}/users"),
            http.post(f"{c}/rebuild", json={}),
            http.post("/v1/keys", json={"role": "searcher"}),
            http.get("/v1/keys"),
            http.get("/v1/audit", params={"limit": 5}),
            http.get("/v1/audit/verify"),
        ]
        face_id = http.get(f"{c}/faces").json()["faces"][0]["face_id"]
        steps += [
            http.post(f"{c}/users/u1/faces", json={"face_ids": [face_id]}),
            http.post(f"{c}/faces/{face_id}/search", json=SEARCH),
            http.request("DELETE", f"{c}/faces", json={"face_ids": [face_id]}),
            http.post(f"{c}/faces/readmit", json={"face_ids": [face_id]}),
            http.delete(c),
        ]
    assert [s.status_code for s in steps if s.status_code >= 400] == [], [s.text for s in steps if s.status_code >= 400]
    assert on_loop == []
