"""What every use case works with: settings, the store, keys, collections, models, shard sets and the pools."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import ray

from cluster.audit.transparency import FollowedReport
from cluster.audit.writer import AuditClient
from cluster.collections.index_spec import SearchKnobs
from cluster.collections.live import live_faces_at_most
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.people import People
from cluster.collections.publish import Publisher
from cluster.keys.access import KeyStore
from cluster.keys.credentials import Credentials, server_cipher
from cluster.models.registry import ModelRegistry
from cluster.raycluster import ensure_ray
from cluster.settings import Settings
from cluster.shards.set import MANIFEST_TTL_S, ShardSet
from cluster.storage import open_store
from serving.batcher import MicroBatcher
from serving.fanout import FanOutResult, fan_out
from serving.models import EmbeddingModels
from serving.pools import BoundedPool
from serving.usecases.failures import unwrap

T = TypeVar("T")
INGEST_NICENESS = 10
# Publishes (rebuilds, erasure) run as Ray tasks: minutes of every core, off the API process's threads.
PUBLISH_TASK_CPUS = 1


def _background_thread() -> None:
    """Lower this thread's scheduling priority (Linux schedules threads as tasks); a no-op where not allowed."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), INGEST_NICENESS)


def _in_task(settings: Settings, work: Callable[[Publisher], Any]) -> Any:
    return work(Publisher(Collections(open_store(settings.store, settings))))


@dataclass
class Reporting:
    """The public transparency report, followed incrementally on a thread of its own (usecases.audit)."""

    report: FollowedReport
    thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="facegrid-report")
    )
    pending: asyncio.Future[dict[str, Any]] | None = None


class Context:
    """One per process (the API server, a CLI command, an index job); use case modules take it first.

    `accountable=False` exists only for benchmarks that measure what auth and audit cost; no setting reaches it.
    """

    def __init__(self, settings: Settings, accountable: bool = True) -> None:
        self.store = open_store(settings.store, settings)
        # Absolute: Ray tasks and actors run in other working directories.
        self.settings = settings.model_copy(update={"store": self.store.uri})
        self.accountable = accountable
        # Set when the audit writer reported a damaged log: audited actions are refused until a repair.
        self.audit_damage: tuple[str, float] | None = None  # (the writer's message, when)
        self.keys = KeyStore(self.store)
        self.collections = Collections(self.store)
        self.registry = ModelRegistry(settings.model_dir)
        # One ONNX Runtime thread per call: a server runs many calls at once on its pools, and sessions that each
        # spread over every core thrash (4 ingest clients: 14 photos/s with ONNX Runtime's default, 33 with one).
        runtime = settings.runtime
        if runtime.intra_op_threads is None:
            runtime = runtime.model_copy(update={"intra_op_threads": 1})
        self.models = EmbeddingModels(settings.model_copy(update={"runtime": runtime}), self.registry)
        # Short blocking work (a store read, a people state): two threads keep the event loop free.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="facegrid-work")
        # Probe photos (searches, compares, detection) on two threads, a few more waiting at most: past that a
        # caller is told to retry (429) rather than queue behind minutes of other photos' detection.
        serving = settings.serving
        self.probes = BoundedPool(2, serving.max_waiting_photos, "facegrid-probe")
        # Added photos are embedded on threads of their own, at a lower OS priority: a stream of ingests never
        # queues a search's probe behind it, and takes what CPU searches leave.
        cores = os.cpu_count() or 2
        self.ingests = BoundedPool(cores, 4 * cores, "facegrid-ingest", initializer=_background_thread)
        # Fan-outs only wait on shards: many may be in flight, and none should queue behind a probe's embedding.
        self.fanout_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="facegrid-fanout")
        self.reporting = Reporting(FollowedReport(self.store))
        self.audit = AuditClient(self.settings)  # appends through the cluster's writer (object stores)
        self._manifests: dict[str, tuple[float, Manifest]] = {}
        self._faces: dict[str, tuple[float, int, int]] = {}  # name -> (when, manifest version, faces searched)
        self._shard_sets: dict[str, ShardSet] = {}
        self._people: dict[str, People] = {}
        self._batchers: dict[str, tuple[dict[int, Any], MicroBatcher]] = {}
        self.folding: set[str] = set()  # collections whose live log is being folded by this process
        self._background: set[asyncio.Future[Any]] = set()

    def background(self, task: asyncio.Future[Any]) -> None:
        """Keep a background task referenced until it ends (the event loop holds only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def close(self) -> None:
        self.executor.shutdown(wait=False)
        self.probes.shutdown()
        self.ingests.shutdown()
        self.fanout_executor.shutdown(wait=False)
        self.reporting.thread.shutdown(wait=False)

    def manifest(self, name: str, fresh: bool = False) -> Manifest:
        """The collection's manifest, at most MANIFEST_TTL_S old unless `fresh`."""
        cached = self._manifests.get(name)
        if not fresh and cached and time.monotonic() - cached[0] < MANIFEST_TTL_S:
            return cached[1]
        return self.remember(self.collections.get(name))

    async def read_manifest(self, name: str, fresh: bool = False) -> Manifest:
        """`manifest` for async code: a fresh-enough cached one at once, a store read on a worker thread."""
        cached = self._manifests.get(name)
        if not fresh and cached and time.monotonic() - cached[0] < MANIFEST_TTL_S:
            return cached[1]
        return await self.in_thread(self.manifest, name, fresh)

    async def faces_searched(self, manifest: Manifest) -> int:
        """The faces a search of this collection compares with, at least: published and live (the live count at
        most MANIFEST_TTL_S old, as the manifest is). What a per-search promise is divided by."""
        cached = self._faces.get(manifest.name)
        if cached and cached[1] == manifest.version and time.monotonic() - cached[0] < MANIFEST_TTL_S:
            return cached[2]
        faces = manifest.face_count + await self.in_thread(live_faces_at_most, self.collections, manifest)
        self._faces[manifest.name] = (time.monotonic(), manifest.version, faces)
        return faces

    def remember(self, manifest: Manifest) -> Manifest:
        self._manifests[manifest.name] = (time.monotonic(), manifest)
        return manifest

    def forget(self, name: str) -> None:
        self._manifests.pop(name, None)
        self._faces.pop(name, None)

    @functools.cached_property
    def credentials(self) -> Credentials:
        """Rekognition-protocol credentials (made on first use: it may create the server key file)."""
        return Credentials(self.store, server_cipher(self.settings.serving.credential_key))

    def people(self, name: str) -> People:
        """The collection's users; every read lists its acts afresh, so changes made elsewhere show at once."""
        if name not in self._people:
            self._people[name] = People(self.store, name)
        return self._people[name]

    def shards(self, name: str) -> ShardSet:
        if name not in self._shard_sets:
            self._shard_sets[name] = ShardSet(self.settings, name)
        return self._shard_sets[name]

    def batcher(self, name: str, handles: dict[int, list[Any]]) -> MicroBatcher:
        """The collection's micro-batcher over these shard handles (a new one after a reshard)."""
        held = self._batchers.get(name)
        if held is None or held[0] is not handles:
            serving = self.settings.serving
            timeout = serving.shard_timeout_s

            async def run(queries: np.ndarray, k: int, knobs: SearchKnobs) -> FanOutResult:
                return await fan_out(handles, queries, k, timeout, self.fanout_executor, knobs)

            window_s = serving.batch_window_ms / 1000
            held = (handles, MicroBatcher(run, serving.batch_in_flight, serving.max_batch, window_s))
            self._batchers[name] = held
        return held[1]

    async def in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Short blocking work (a store read) on the service's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    async def in_own_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Long blocking work that drives the cluster (an index job): a thread of its own."""
        return await asyncio.to_thread(work, *args)

    async def publish_task(self, work: Callable[[Publisher], T]) -> T:
        """A publish (rebuild, erasure) as a Ray task over the same store: it uses every core for minutes, so
        not the API process's threads. Errors come back as the ones raised inside."""
        ensure_ray()
        task = ray.remote(_in_task).options(num_cpus=PUBLISH_TASK_CPUS, max_retries=0)
        try:
            result: T = await task.remote(self.settings, work)
        except Exception as exc:
            raise unwrap(exc) from None
        return result
