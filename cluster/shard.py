"""A shard of a collection as a Ray actor's state: the latest published snapshot, swapped atomically on reload."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cluster.errors import CollectionNotFound
from cluster.index_spec import SearchKnobs
from cluster.manifest import Collections
from cluster.settings import Settings
from cluster.snapshot import Placement, ShardSnapshot, resident_bytes
from cluster.storage import open_store


class FaceShard:
    """Shard `shard` of `shard_count` in shard set `shard_set`; ShardSet runs it as a Ray actor, and a restart
    reloads the snapshot.

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
        self.retired = False
        self._reloading = threading.Lock()
        faiss.omp_set_num_threads(settings.serving.shard_threads)
        self.reload()

    def reload(self) -> int:
        """Load the snapshot the manifest names, if newer than the one held. Returns the version held."""
        with self._reloading:
            try:
                manifest = self.collections.get(self.collection)
            except CollectionNotFound:
                self._swap(None, -1)
                return self.version
            self.retired = (manifest.shard_set, manifest.shard_count) != (self.shard_set, self.shard_count)
            if self.retired:  # resharded: answer from what is held until the service retires this actor
                return self.version
            directory = manifest.shards.get(str(self.shard))
            if manifest.version != self.version and directory is not None:
                spec = manifest.built_spec or "Flat"
                self._swap(
                    ShardSnapshot.load(self.collections.store, directory, spec, self.cache, self.placement),
                    manifest.version,
                )
            return self.version

    def _swap(self, snapshot: ShardSnapshot | None, version: int) -> None:
        old, self.snapshot, self.version = self.snapshot, snapshot, version
        if old is not None:
            old.release()

    def search(
        self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
        """Top-k per query: similarities, ids, and each hit's record."""
        snapshot = self.snapshot
        if snapshot is None:
            empty: list[list[dict[str, Any]]] = [[] for _ in queries]
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), empty
        return snapshot.search(queries, k, knobs)

    def count(self) -> int:
        snapshot = self.snapshot
        return snapshot.ntotal if snapshot is not None else 0

    def info(self) -> dict[str, Any]:
        snapshot = self.snapshot
        return {
            "collection": self.collection,
            "shard": self.shard,
            "shard_count": self.shard_count,
            "shard_set": self.shard_set,
            "version": self.version,
            "faces": self.count(),
            "spec": snapshot.spec if snapshot else None,
            "device": snapshot.device if snapshot else None,
            "retired": self.retired,
            "resident_bytes": resident_bytes(),
        }
