"""A shard of a collection: a FAISS index with 64-bit ids, loaded from the latest published snapshot."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pyarrow.compute as pc

from cluster.collection import Collections, Manifest
from cluster.errors import CollectionNotFound
from cluster.index_spec import SearchKnobs, apply_knobs, current_knobs
from cluster.settings import Settings
from cluster.storage import open_store

RECORD_COLUMNS = ["face_id", "external_image_id", "source_key", "bbox"]


class FaceShard:
    """Plain class holding one shard; `shard_actor` wraps it for Ray. It restarts from the published snapshot."""

    def __init__(self, settings: Settings, collection: str, shard: int) -> None:
        self.collections = Collections(open_store(settings.store, settings))
        self.collection = collection
        self.shard = shard
        self.version = -1
        self.records: dict[int, dict[str, Any]] = {}
        self.defaults = SearchKnobs()
        self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(128))
        # A shard answers one small query at a time: more threads only add contention on shared cores.
        faiss.omp_set_num_threads(1)
        self.reload()

    def reload(self) -> int:
        """Load the snapshot the manifest names, if it is newer than the one held. Returns the version held."""
        try:
            manifest = self.collections.get(self.collection)
        except CollectionNotFound:
            self.index.reset()
            self.records = {}
            self.version = -1
            return self.version
        if manifest.version != self.version:
            key = manifest.shards.get(str(self.shard))
            if key is None:
                self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(manifest.dim))
            else:
                blob = np.frombuffer(self.collections.store.get(key), dtype=np.uint8)
                self.index = faiss.deserialize_index(blob)
                self.defaults = current_knobs(self.index)
            self.records = self._records(manifest)
            self.version = manifest.version
        return self.version

    def _records(self, manifest: Manifest) -> dict[int, dict[str, Any]]:
        """What a match shows besides its score, for this shard's faces only."""
        table = self.collections.faces(manifest, [*RECORD_COLUMNS, "faiss_id", "shard"])
        table = table.filter(pc.equal(table.column("shard"), self.shard)).drop_columns(["shard"])
        return {row.pop("faiss_id"): row for row in table.to_pylist()}

    def search(
        self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
        """Top-k per query: similarities, ids, and each hit's record."""
        if self.index.ntotal == 0:
            empty: list[list[dict[str, Any]]] = [[] for _ in queries]
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), empty
        knobs = knobs or SearchKnobs()
        apply_knobs(
            self.index,
            SearchKnobs(knobs.nprobe or self.defaults.nprobe, knobs.ef_search or self.defaults.ef_search),
        )
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))
        records = [[self.records.get(int(i), {}) for i in row] for row in ids]
        return scores, ids, records

    def count(self) -> int:
        return int(self.index.ntotal)

    def info(self) -> dict[str, int | str]:
        return {"collection": self.collection, "shard": self.shard, "version": self.version, "faces": self.count()}
