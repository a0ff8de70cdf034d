"""A shard of a collection as a Ray actor's state: the latest published snapshot, swapped atomically on reload."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import ray

from cluster import metrics
from cluster.collections.index_spec import SearchKnobs
from cluster.collections.live import LIVE_POLL_S, LiveFaces, combine
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.snapshot import Placement, ShardSnapshot, resident_bytes
from cluster.errors import CollectionNotFound
from cluster.pipeline.embed import EMBEDDING_DIM
from cluster.settings import Settings
from cluster.storage import ObjectNotFound, open_store

log = logging.getLogger("facegrid.shard")
RELOAD_ATTEMPTS = 3


class FaceShard:
    """Shard `shard` of `shard_count` in shard set `shard_set`; a ShardHost actor holds it (with others of its
    set), and a restart reloads the snapshot.

    The actor is threaded: a reload (seconds for a large shard) runs beside searches, which go on against the
    snapshot they started with until the new one replaces it in a single assignment. A shard whose collection
    has been resharded (another set is current) keeps the snapshot it holds until it is retired.
    """

    def __init__(self, settings: Settings, collection: str, shard: int, shard_count: int, shard_set: int) -> None:
        self.collections = Collections(open_store(settings.store, settings))
        self.collection = collection
        self.shard = shard
        self.shard_count = shard_count
        self.shard_set = shard_set
        self.cache = Path(settings.shard_cache)
        self.placement = Placement(gpus=faiss.get_num_gpus() if settings.serving.shard_gpu else 0)
        self.snapshot: ShardSnapshot | None = None
        self.version = -1
        self.seen = -1  # the last manifest version this shard has caught up with (snapshot and live log)
        self.directory: str | None = None
        self.retired = False
        self.live = LiveFaces(EMBEDDING_DIM)
        self.manifest: Manifest | None = None
        self._manifest_raw = b""
        self._reloading = threading.Lock()
        self._calls = 0  # searches running in this actor's threads (its queue depth, exported)
        self._calls_lock = threading.Lock()
        self._closed = threading.Event()
        self.threads = settings.serving.shard_threads
        self.batch_threads = self.threads  # its host sets more where it holds fewer shards than cores
        self.reload()
        # Every shard follows the published state itself, wherever a change was made (another server, the CLI
        # on another machine, an index job): the manifest and the live log, every LIVE_POLL_S.
        threading.Thread(target=self._follow, name="follow", daemon=True).start()

    def _follow(self) -> None:
        while not self._closed.wait(LIVE_POLL_S):
            # The gauges are sampled here, off the search path (five metric updates per shard and search were 6% of
            # a host's busy time).
            metrics.shard_state(self.collection, self.shard, self._calls, self.count())
            try:
                self.reload()
            except Exception:  # the store may be briefly unreachable: keep answering from what is held
                log.warning(
                    "shard %s/%d could not follow %s", self.shard, self.shard_count, self.collection, exc_info=True
                )

    def reload(self) -> int:
        """Load the snapshot the manifest names if newer than the one held, and the live log's faces of this
        shard. Returns the version held."""
        with self._reloading:
            if self._closed.is_set():
                return self.version
            for attempt in range(RELOAD_ATTEMPTS):
                try:
                    manifest = self._manifest()
                except CollectionNotFound:
                    self._swap(None, -1)
                    self.directory = None
                    self.live = LiveFaces(EMBEDDING_DIM)
                    return self.version
                self.retired = (manifest.shard_set, manifest.shard_count) != (self.shard_set, self.shard_count)
                if self.retired:  # resharded: answer from what is held until the set is retired
                    return self.version
                try:
                    self._load(manifest)
                    self.seen = manifest.version
                    return self.version
                except ObjectNotFound:
                    # A later publish replaced this version while it was being read: read the manifest again.
                    if attempt == RELOAD_ATTEMPTS - 1:
                        raise
            return self.version

    def _manifest(self) -> Manifest:
        """The collection's manifest, parsed again only when its bytes changed: at a million faces it lists some
        15,000 record files, and every shard looks at it twice a second. (Bytes, not a folder store's etag: two
        publishes of one size within the file system's clock tick would share one.)"""
        try:
            raw = self.collections.store.get(self.collections.prefix(self.collection) + "manifest.json")
        except ObjectNotFound as exc:
            raise CollectionNotFound(f"collection {self.collection!r} does not exist") from exc
        if self.manifest is None or raw != self._manifest_raw:
            self.manifest, self._manifest_raw = Manifest.model_validate_json(raw), raw
        return self.manifest

    def add_segment(self, key: str, etag: str) -> int:
        """A writer's new live-log segment, read at once (the next poll would find it too). Returns live faces."""
        with self._reloading:
            if self.manifest is not None:
                live = self.live.refresh(self.collections, self.manifest, self.shard, self.shard_count, (key, etag))
                if live is not None:
                    self.live = live
            return self.live.ntotal

    def _load(self, manifest: Manifest) -> None:
        directory = manifest.shards.get(str(self.shard))
        if manifest.version != self.version and directory is not None:
            if directory == self.directory:  # a version that changed no snapshot (a calibration applied)
                self.version = manifest.version
            else:
                spec = manifest.built_spec or "Flat"
                snapshot = ShardSnapshot.load(self.collections.store, directory, spec, self.cache, self.placement)
                self._swap(snapshot, manifest.version)
                self.directory = directory
        live = self.live.refresh(self.collections, manifest, self.shard, self.shard_count)
        if live is not None:
            self.live = live

    def close(self) -> None:
        """Stop following and let the snapshot go (a shard held in a server's own process, retired)."""
        self._closed.set()
        with self._reloading:
            self._swap(None, -1)

    def _swap(self, snapshot: ShardSnapshot | None, version: int) -> None:
        old, self.snapshot, self.version = self.snapshot, snapshot, version
        if old is not None:
            old.release()

    def ranked(self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: similarities and ids (-1 past the shard's faces); records come from `records`, for
        the hits that survive the merge only."""
        began = time.perf_counter()
        with self._calls_lock:
            self._calls += 1
        try:
            # OpenMP's thread count is per thread, and a thread that never set it (every one but the actor's
            # first) starts at the core count: a single query's fast-scan then ran on two spinning threads per
            # shard, four shards on two cores.
            faiss.omp_set_num_threads(self.threads if len(queries) == 1 else self.batch_threads)
            snapshot, live = self.snapshot, self.live
            if snapshot is None:
                return live.ranked(queries, k)
            return combine(snapshot.ranked(queries, k, knobs), live.ranked(queries, k), k)
        finally:
            with self._calls_lock:
                self._calls -= 1
            metrics.shard_searched(self.collection, self.shard, len(queries), time.perf_counter() - began)

    def vectors(self, faiss_ids: list[int]) -> dict[int, np.ndarray]:
        """The vectors of those of these faces that this shard holds (the live log's copy of a face re-added
        since the snapshot wins)."""
        ids = np.asarray(faiss_ids, dtype=np.int64)
        out: dict[int, np.ndarray] = {}
        snapshot, live = self.snapshot, self.live
        for source in (snapshot, live):
            if source is None:
                continue
            found, vectors = source.vectors(ids)
            out.update(zip(ids[found].tolist(), vectors, strict=True))
        return out

    def records(self, faiss_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The records (face id, source, box) of those of these faces that this shard holds."""
        ids = np.asarray(faiss_ids, dtype=np.int64)
        snapshot, live = self.snapshot, self.live
        out = snapshot.records_of(ids) if snapshot is not None else {}
        out.update({i: live.records[i] for i in ids.tolist() if i in live.records})
        return out

    def count(self) -> int:
        snapshot = self.snapshot
        return (snapshot.ntotal if snapshot is not None else 0) + self.live.ntotal

    def info(self) -> dict[str, Any]:
        snapshot = self.snapshot
        return {
            "collection": self.collection,
            "shard": self.shard,
            "shard_count": self.shard_count,
            "shard_set": self.shard_set,
            "version": self.version,
            "faces": self.count(),
            "live_faces": self.live.ntotal,
            "spec": snapshot.spec if snapshot else None,
            "device": snapshot.device if snapshot else None,
            "retired": self.retired,
            "resident_bytes": resident_bytes(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }
