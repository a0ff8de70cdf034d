"""The race harness's world: servers on a fresh store (a folder, or a bucket of a local S3 server), the photos,
and the model of the collection that every answer is held against."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cluster.keys.access import KeyStore, Role
from cluster.settings import Settings
from cluster.storage import ObjectStore, open_store
from jobs.processes import serve_process, stop_process

COLLECTION = "race"
S3_KEYS = ("facegrid-races", "facegrid-races-secret-123")


@dataclass
class Photo:
    path: Path
    external_id: str
    faces: list[str] = field(default_factory=list)  # the ids its first add (or index job) answered
    # A photo of one face: a search with it finds that face. With several, the probe is its largest face only.
    single: bool = True


@dataclass
class Model:
    """What the collection must hold: the faces acknowledged and not erased since, and those erased."""

    present: set[str] = field(default_factory=set)
    erased: set[str] = field(default_factory=set)
    readmitted: set[str] = field(default_factory=set)
    owner: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    seed: int
    urls: list[str]
    token: str
    store: ObjectStore
    env: dict[str, str]
    photos: list[Photo]
    index_photos: list[Photo]
    workdir: Path
    processes: list[subprocess.Popen[bytes]]
    model: Model = field(default_factory=Model)
    acts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # one line per act and check: what the report ends with
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, server: int) -> httpx.Client:
        return httpx.Client(base_url=self.urls[server], headers={"X-API-Key": self.token}, timeout=300)

    def violated(self, what: str) -> None:
        self.note(f"VIOLATION {what}")
        with self.lock:
            self.violations.append(f"seed {self.seed}: {what}")

    def note(self, line: str) -> None:
        with self.lock:
            self.trace.append(f"{time.monotonic():.2f} {line}")


@contextmanager
def world(
    store_kind: str, servers: int, images: Path, model_dir: Path | None, progress: Callable[[str], None]
) -> Iterator[Run]:
    """Servers on a fresh store: a folder (each server with its own embedded Ray, as separate machines would
    be) or a bucket of a local S3 server (the servers on one Ray cluster, which runs the S3 audit writer)."""
    from jobs import s3local

    run: Run | None = None
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="facegrid-races-")))
        stack.callback(_keep_logs, workdir, lambda: run)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        if model_dir is not None:
            env["FACEGRID_MODEL_DIR"] = str(model_dir)
        if store_kind == "s3":
            (workdir / "s3" / "races").mkdir(parents=True)
            address = stack.enter_context(s3local.s3_server(workdir / "s3", *S3_KEYS))
            env |= {
                "FACEGRID_STORE": "s3://races",
                "FACEGRID_S3_ENDPOINT": f"http://{address}",
                "FACEGRID_S3_ACCESS_KEY": S3_KEYS[0],
                "FACEGRID_S3_SECRET_KEY": S3_KEYS[1],
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            env["RAY_ADDRESS"] = stack.enter_context(_ray_head(workdir))
        else:
            env["FACEGRID_STORE"] = str(workdir / "store")
        settings = Settings(
            store=env["FACEGRID_STORE"],
            s3_endpoint=env.get("FACEGRID_S3_ENDPOINT"),
            s3_access_key=env.get("FACEGRID_S3_ACCESS_KEY"),
            s3_secret_key=env.get("FACEGRID_S3_SECRET_KEY"),
        )
        store = open_store(settings.store, settings)
        token = KeyStore(store).create(Role.ADMIN, label="races")[1]
        processes: list[subprocess.Popen[bytes]] = []
        stack.callback(_stop_all, processes)
        urls = []
        for n in range(servers):
            process, url = serve_process(env, workdir / f"server-{n}.log")
            processes.append(process)
            urls.append(url)
            progress(f"server {n} at {url}")
        photos = _photos(images, 24)
        # Four photos added a second time under another external id: two faces of one kept photo, so that erasing
        # one keeps the photo and erasing both deletes it, racing adds of the same bytes.
        twins = [Photo(p.path, f"{p.external_id}~twin") for p in photos[:4]]
        run = Run(0, urls, token, store, env, photos[:20] + twins, photos[20:], workdir, processes)
        yield run


def _keep_logs(workdir: Path, run: Callable[[], Run | None]) -> None:
    """A failed run's server logs, kept beside the temporary folder that goes (where to look, with the seed)."""
    failed = run()
    if failed is not None and failed.violations:
        kept = Path(tempfile.gettempdir()) / f"facegrid-races-seed{failed.seed}-logs"
        kept.mkdir(exist_ok=True)
        for log in workdir.glob("server-*.log"):
            shutil.copy(log, kept / log.name)
        print(f"seed {failed.seed}: the servers' logs are kept in {kept}", file=sys.stderr)
        # Where only the output survives (CI): the first violations and each server's last warnings.
        print("\n".join(failed.violations[:5]), file=sys.stderr)
        for log in sorted(kept.glob("server-*.log")):
            lines = log.read_text(errors="replace").splitlines()
            loud = [line for line in lines if "WARNING" in line or "ERROR" in line or "Error" in line]
            print(f"--- {log.name}: {len(lines)} lines, the last warnings:", *loud[-15:], sep="\n", file=sys.stderr)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        stop_process(process)


@contextmanager
def _ray_head(workdir: Path) -> Iterator[str]:
    """A local Ray head on 127.0.0.1 that the servers join; stopped with this run (never `ray stop`)."""
    from cluster.raycluster_env import prepare_ray_environment

    prepare_ray_environment(None)
    process = subprocess.Popen(
        [sys.executable, "-c", _HEAD, str(workdir / "ray-address")], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "ray-address").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head for the race run did not start")
            time.sleep(0.2)
        yield (workdir / "ray-address").read_text()
    finally:
        stop_process(process)


# A process that holds a local Ray cluster while it lives and writes its address for the servers.
_HEAD = """
import sys, time, pathlib, ray
from cluster.raycluster import NAMESPACE
from cluster.raycluster_env import prepare_ray_environment
prepare_ray_environment(None)
context = ray.init(address="local", namespace=NAMESPACE, include_dashboard=False)
pathlib.Path(sys.argv[1] + ".tmp").write_text(context.address_info["gcs_address"])
pathlib.Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
while True:
    time.sleep(3600)
"""


def _photos(images: Path, count: int) -> list[Photo]:
    """One photo each of the first people (sorted): distinct identities, so a search finds its own face."""
    found = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if photos:
            found.append(Photo(photos[0], f"{person.name}/{photos[0].name}"))
        if len(found) == count:
            return found
    raise RuntimeError(f"{images} holds photos of fewer than {count} people")
