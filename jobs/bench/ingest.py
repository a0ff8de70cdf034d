"""Benchmark: single-photo IndexFaces requests over HTTP from several clients, with a search client alongside:
photos/s, faces/s, and search latency during ingest beside idle."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cluster.keys.access import Role
from cluster.models.registry import DEFAULT_EMBEDDER
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases.context import Context

SEARCH = {"purpose": "system-test", "case_id": "BENCH-INGEST", "max_results": "10"}
SEED_PHOTOS = 50  # added before timing: models loaded, shards up, a gallery to search
IDLE_SEARCHES = 200
WARMUP_SEARCHES = 20


def _photos(images: Path, count: int) -> list[Path]:
    return sorted(p for p in images.rglob("*.jpg"))[:count]


def _ms(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def run_ingest_benchmark(
    settings: Settings,
    images: Path,
    photos: int,
    clients: int,
    model_id: str = DEFAULT_EMBEDDER,
    progress: Callable[[str], None] | None = None,
    search_alongside: bool = True,
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    root = Path(tempfile.mkdtemp(prefix="facegrid-bench-ingest-"))
    chosen = _photos(images, SEED_PHOTOS + photos + 1)
    seed, stream, probe = chosen[:SEED_PHOTOS], chosen[SEED_PHOTOS:-1], chosen[-1].read_bytes()
    try:
        ctx = Context(settings.model_copy(update={"store": str(root)}))
        token = ctx.keys.create(Role.ADMIN, label="bench-ingest")[1]
        with serve_in_thread(ctx) as url, httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=120) as http:
            http.post("/v1/collections", json={"name": "ingest", "shards": 4, "model": model_id}).raise_for_status()

            def add(photo: Path, client: httpx.Client) -> tuple[int, int]:
                files = {"image": (photo.name, photo.read_bytes())}
                data = {"external_image_id": f"{photo.parent.name}/{photo.name}", "quality_filter": "NONE"}
                answer = client.post("/v1/collections/ingest/faces", files=files, data=data)
                return answer.status_code, len(
                    answer.json().get("face_records", [])
                ) if answer.status_code == 200 else 0

            def search(client: httpx.Client) -> float:
                began = time.perf_counter()
                client.post("/v1/collections/ingest/search", files={"image": ("p.jpg", probe)}, data=SEARCH)
                return time.perf_counter() - began

            say(f"seeding {len(seed)} photos")
            for photo in seed:
                add(photo, http)
            say(f"{IDLE_SEARCHES} idle searches")
            for _ in range(WARMUP_SEARCHES):
                search(http)
            idle = [search(http) for _ in range(IDLE_SEARCHES)]
            say(f"{len(stream)} photos from {clients} clients, one search client alongside")
            during: list[float] = []
            stop = threading.Event()

            def searching() -> None:
                with httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=120) as own:
                    while search_alongside and not stop.is_set():
                        during.append(search(own))

            searcher = threading.Thread(target=searching)
            searcher.start()
            local = threading.local()

            def send(photo: Path) -> tuple[int, int]:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=120)
                result: tuple[int, int] = add(photo, local.client)
                return result

            began = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(send, stream))
            seconds = time.perf_counter() - began
            stop.set()
            searcher.join()
            described = http.get("/v1/collections/ingest").json()
        failed = sum(status != 200 for status, _ in answers)
        faces = sum(n for _, n in answers)
        idle_ms, during_ms = _ms(idle), _ms(during or [float("nan")])
        return {
            "model_id": model_id,
            "clients": clients,
            "photos": len(stream),
            "faces": faces,
            "failed_requests": failed,
            "seconds": round(seconds, 2),
            "photos_per_s": round(len(stream) / seconds, 1),
            "faces_per_s": round(faces / seconds, 1),
            "search_idle": idle_ms,
            "search_during_ingest": {**during_ms, "searches": len(during)},
            "search_p99_ratio": round(during_ms["p99_ms"] / idle_ms["p99_ms"], 2),
            "publishes_during_ingest": described["version"],  # folds of the live log
            "collection_faces_published": described["face_count"],
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
