"""A shard's published snapshot: a FAISS index, and its records in an Arrow file that is memory-mapped, not loaded.

The records file holds, sorted by FAISS id, what a match shows (face id, source, box) and, for compressed (IVF)
indexes, the exact vectors that re-rank the index's shortlist. Mapped rather than read, it costs resident memory
only for the pages a search touches: a 10M-face collection keeps ~136 bytes a face in RAM, not ~650.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from cluster import index_spec
from cluster.index_spec import SearchKnobs, Tuning
from cluster.storage import LocalStore, ObjectStore

RECORD_COLUMNS = ["face_id", "external_image_id", "source_key", "bbox"]
INDEX_FILE = "index.faiss"
RECORDS_FILE = "records.arrow"


def write_shard(
    store: ObjectStore, directory: str, rows: pa.Table, spec: str, trained: faiss.Index | None, seed: int
) -> int:
    """Build one shard's index from `rows` (faiss_id, embedding and the record columns) and store both files."""
    rows = rows.sort_by("faiss_id").combine_chunks()
    dim = rows.schema.field("embedding").type.list_size
    index = index_spec.build(
        spec, _vectors(rows.column("embedding"), dim), rows.column("faiss_id").to_numpy(), seed, trained
    )
    return _store(store, directory, index, rows, spec)


def extend_shard(store: ObjectStore, previous: str, directory: str, rows: pa.Table, spec: str) -> int:
    """The previous snapshot plus `rows`: added to its index without retraining or re-adding what it holds.

    A face in `rows` that the snapshot already holds (indexed again) replaces it. Flat and IVF only: FAISS
    cannot remove from an HNSW graph, so those shards are rebuilt.
    """
    index = faiss.deserialize_index(np.frombuffer(store.get(f"{previous}/{INDEX_FILE}"), dtype=np.uint8))
    held = _read_records(store, f"{previous}/{RECORDS_FILE}")
    rows = rows.sort_by("faiss_id").combine_chunks()
    new_ids = rows.column("faiss_id").to_numpy()
    held_ids = held.column("faiss_id").to_numpy()
    replaced = np.isin(held_ids, new_ids)
    if replaced.any():
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(held_ids[replaced])))
    if rows.num_rows:
        vectors = _vectors(rows.column("embedding"), rows.schema.field("embedding").type.list_size)
        index.add_with_ids(np.ascontiguousarray(vectors), new_ids)
    kept = held.filter(pa.array(~replaced))
    merged = pa.concat_tables([kept, rows.select(kept.column_names).cast(kept.schema)])
    return _store(store, directory, index, merged.sort_by("faiss_id").combine_chunks(), spec)


def _store(store: ObjectStore, directory: str, index: faiss.Index, rows: pa.Table, spec: str) -> int:
    store.put(f"{directory}/{INDEX_FILE}", faiss.serialize_index(index).tobytes())
    keep = ["faiss_id", *RECORD_COLUMNS] + (["embedding"] if index_spec.compressed(spec) else [])
    sink = pa.BufferOutputStream()
    table = rows.select(keep)
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    store.put(f"{directory}/{RECORDS_FILE}", sink.getvalue())
    return rows.num_rows


def _read_records(store: ObjectStore, key: str) -> pa.Table:
    if isinstance(store, LocalStore):
        return pa.ipc.open_file(pa.memory_map(str(store.path_of(key)))).read_all()
    return pa.ipc.open_file(pa.py_buffer(store.get(key))).read_all()


def _vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """The float32 (n, dim) view of a fixed-size-list column: zero-copy for one chunk, as a mapped file has."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks or sum(len(c) for c in chunks) == 0:
        return np.zeros((0, dim), np.float32)
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) for c in chunks]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def resident_bytes() -> int:
    """This process's resident memory (mapped file pages it touched included)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Placement:
    gpus: int = 0  # what FAISS reports in this process
    device: int = 0  # which of them, for shards spread over a node's GPUs


class ShardSnapshot:
    """One loaded shard: search with exact re-ranking of compressed shortlists, and each hit's record."""

    def __init__(self, index: faiss.Index, records: pa.Table, spec: str, placement: Placement, local: Path | None):
        self.tuning = Tuning.of(index)
        self.index, self.device = index_spec.place(index, spec, placement.gpus, placement.device)
        self.spec = spec
        self.records = records.drop_columns(["embedding"]) if "embedding" in records.column_names else records
        self.ids = records.column("faiss_id").to_numpy()
        self.vectors: np.ndarray | None = None
        if "embedding" in records.column_names:
            self.vectors = _vectors(records.column("embedding"), records.schema.field("embedding").type.list_size)
        self.factor = index_spec.rerank_factor(spec)
        self.local = local  # a downloaded copy this snapshot owns (None when mapped from the store itself)

    @classmethod
    def load(cls, store: ObjectStore, directory: str, spec: str, cache: Path, placement: Placement) -> ShardSnapshot:
        index = faiss.deserialize_index(np.frombuffer(store.get(f"{directory}/{INDEX_FILE}"), dtype=np.uint8))
        key = f"{directory}/{RECORDS_FILE}"
        local = None
        if isinstance(store, LocalStore):
            records = _read_records(store, key)
        else:
            local = cache / key
            store.download(key, local)
            records = pa.ipc.open_file(pa.memory_map(str(local))).read_all()
        return cls(index, records, spec, placement, local)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
        """Top-k per query: similarities, ids and records; a compressed index's shortlist is re-scored exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            empty: list[list[dict[str, Any]]] = [[] for _ in queries]
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), empty
        k = min(k, self.ntotal)
        scores, ids = self.index.search(queries, min(k * self.factor, self.ntotal), params=self.tuning.params(knobs))
        if self.vectors is not None:
            scores, ids = self._rerank(queries, ids, k)
        scores, ids = scores[:, :k], ids[:, :k]
        return scores, ids, [self._records(row) for row in ids]

    def _records(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """Records aligned with `ids` ({} where FAISS padded with -1)."""
        found = ids >= 0
        table = self.records.take(pa.array(np.searchsorted(self.ids, ids[found]))).drop_columns(["faiss_id"])
        rows = iter(table.to_pylist())
        return [next(rows) if hit else {} for hit in found]

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.vectors is not None
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(ids):
            found = row[row >= 0]
            exact = self.vectors[np.searchsorted(self.ids, found)] @ queries[q]
            best = np.argsort(-exact, kind="stable")[:k]
            out_scores[q, : len(best)], out_ids[q, : len(best)] = exact[best], found[best]
        return out_scores, out_ids

    def release(self) -> None:
        """Remove a downloaded records file (open mappings stay valid until they are dropped)."""
        if self.local is not None:
            self.local.unlink(missing_ok=True)
