"""A shard's published snapshot, in files that a shard reads on demand rather than holds.

Per shard folder, all sorted by FAISS id:
- `index.faiss`: the index (held in memory);
- `ids.i64`: the ids (held in memory, 8 bytes a face), to find a hit's row;
- `records.arrow`: what a match shows (face id, source, box) in Arrow batches of RECORD_BATCH_ROWS; a hit reads
  its batch from the file;
- `vectors.f32` (compressed indexes only): the exact vectors that re-rank the index's shortlist, read a row at a
  time with pread.

Reads go through the page cache, not a memory map: on Linux every fault on a mapped file also maps up to 15
neighbouring cached pages (fault-around, which MADV_RANDOM does not stop on every kernel), and a few hundred
searches made a whole 2.5M-face vector file resident in each shard.
"""

from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from cluster.collections import index_spec
from cluster.collections.index_spec import SearchKnobs, Tuning
from cluster.storage import LocalStore, ObjectNotFound, ObjectStore

RECORD_COLUMNS = ["face_id", "external_image_id", "source_key", "bbox"]
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.i64"
RECORDS_FILE = "records.arrow"
VECTORS_FILE = "vectors.f32"
# A hit reads one batch of records: small enough to cost little, large enough to keep the file's footer small.
RECORD_BATCH_ROWS = 256
# Records files up to this size are read into memory whole: a lookup then costs microseconds where reading its
# batch took a quarter of a 250k-face shard's search time. About 2M faces a shard; larger shards read per hit, so
# that their memory stays at the index and the ids.
RECORDS_IN_MEMORY_BYTES = 256 * 2**20


def write_shard(
    store: ObjectStore, directory: str, rows: pa.Table, spec: str, trained: faiss.Index | None, seed: int
) -> int:
    """Build one shard's index from `rows` (faiss_id, embedding and the record columns) and store its files."""
    rows = rows.sort_by("faiss_id").combine_chunks()
    vectors = vectors_of(rows.column("embedding"), rows.schema.field("embedding").type.list_size)
    index = index_spec.build(spec, vectors, rows.column("faiss_id").to_numpy(), seed, trained)
    return _store(store, directory, index, rows.select(["faiss_id", *RECORD_COLUMNS]), vectors, spec)


def extend_shard(
    store: ObjectStore, previous: str, directory: str, rows: pa.Table, spec: str, erased: np.ndarray
) -> int:
    """The previous snapshot plus `rows`, less the `erased` faiss ids: added to its index without retraining or
    re-adding what it holds.

    A face in `rows` that the snapshot already holds (indexed again) replaces it; an erased one goes, whichever
    publish runs after its erasure (an erasure's own publish may extend, when it also folds new faces in). Flat
    and IVF only: FAISS cannot remove from an HNSW graph, so those shards are rebuilt.
    """
    index = faiss.deserialize_index(np.frombuffer(store.get(f"{previous}/{INDEX_FILE}"), dtype=np.uint8))
    held = pa.ipc.open_file(pa.py_buffer(store.get(f"{previous}/{RECORDS_FILE}"))).read_all()
    held_ids = held.column("faiss_id").to_numpy()
    rows = rows.sort_by("faiss_id").combine_chunks()
    new_ids = rows.column("faiss_id").to_numpy()
    new_vectors = vectors_of(rows.column("embedding"), rows.schema.field("embedding").type.list_size)
    replaced = np.isin(held_ids, new_ids) | np.isin(held_ids, erased)
    if replaced.any():
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(held_ids[replaced])))
    if rows.num_rows:
        index.add_with_ids(np.ascontiguousarray(new_vectors), new_ids)
    records = pa.concat_tables([held.filter(pa.array(~replaced)), rows.select(held.column_names).cast(held.schema)])
    order = pa.array(np.argsort(records.column("faiss_id").to_numpy(), kind="stable"))
    vectors = None
    if index_spec.compressed(spec):
        held_vectors = np.frombuffer(store.get(f"{previous}/{VECTORS_FILE}"), "<f4").reshape(-1, new_vectors.shape[1])
        vectors = np.concatenate([held_vectors[~replaced], new_vectors])[order.to_numpy()]
    return _store(store, directory, index, records.take(order).combine_chunks(), vectors, spec)


def _store(
    store: ObjectStore, directory: str, index: faiss.Index, records: pa.Table, vectors: np.ndarray | None, spec: str
) -> int:
    store.put(f"{directory}/{INDEX_FILE}", faiss.serialize_index(index).tobytes())
    store.put(f"{directory}/{IDS_FILE}", records.column("faiss_id").to_numpy().astype("<i8").tobytes())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, records.schema) as writer:
        writer.write_table(records, max_chunksize=RECORD_BATCH_ROWS)
    store.put(f"{directory}/{RECORDS_FILE}", sink.getvalue())
    if index_spec.compressed(spec):
        assert vectors is not None
        store.put(f"{directory}/{VECTORS_FILE}", np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return records.num_rows


def vectors_of(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """The float32 (n, dim) view of a fixed-size-list column (zero-copy for one chunk)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks or sum(len(c) for c in chunks) == 0:
        return np.zeros((0, dim), np.float32)
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) for c in chunks]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def resident_bytes() -> dict[str, int]:
    """This process's resident memory: `total`, and `mapped_files` (pages of mapped files, libraries included).
    Linux /proc; elsewhere the peak, counted as private."""
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "RssFile")))
        kib = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
        return {"total": kib["VmRSS"], "mapped_files": kib.get("RssFile", 0)}
    except (OSError, KeyError, ValueError):
        return {"total": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "mapped_files": 0}


@dataclass
class Placement:
    # What FAISS reports in this process. Ray gives a shard actor its share of one GPU through
    # CUDA_VISIBLE_DEVICES, so the shard always uses device 0 of what it sees.
    gpus: int = 0


class ShardSnapshot:
    """One loaded shard: search with exact re-ranking of compressed shortlists, and each hit's record."""

    def __init__(self, index: faiss.Index, files: dict[str, Path], spec: str, placement: Placement, owned: bool):
        self.tuning = Tuning.of(index)
        # Where each id sits in an uncompressed index (its vectors live there, not in vectors.f32).
        self.id_map = faiss.vector_to_array(index.id_map) if isinstance(index, faiss.IndexIDMap) else None
        self.index, self.device = index_spec.place(index, spec, placement.gpus)
        self.spec = spec
        self.files = files
        self.owned = owned  # downloaded copies this snapshot removes when released
        self.ids = np.fromfile(files[IDS_FILE], dtype="<i8")
        self.records = pa.ipc.open_file(pa.OSFile(str(files[RECORDS_FILE])))
        self.held: pa.Table | None = None
        if files[RECORDS_FILE].stat().st_size <= RECORDS_IN_MEMORY_BYTES:
            self.held = self.records.read_all().combine_chunks().drop_columns(["faiss_id"])
        self._reading = threading.Lock()
        self.dim = index.d
        # Exact vectors for the re-rank, read a row at a time through the page cache: mapped, each fresh row cost
        # a page fault (about 0.2 ms a shortlist of 40 here) and every row read stayed resident.
        self.stored = os.open(files[VECTORS_FILE], os.O_RDONLY) if VECTORS_FILE in files else None
        self.factor = index_spec.rerank_factor(spec)

    @classmethod
    def load(cls, store: ObjectStore, directory: str, spec: str, cache: Path, placement: Placement) -> ShardSnapshot:
        index = faiss.deserialize_index(np.frombuffer(store.get(f"{directory}/{INDEX_FILE}"), dtype=np.uint8))
        names = [IDS_FILE, RECORDS_FILE] + ([VECTORS_FILE] if index_spec.compressed(spec) else [])
        if isinstance(store, LocalStore):
            try:
                return cls(index, {n: store.path_of(f"{directory}/{n}") for n in names}, spec, placement, owned=False)
            except FileNotFoundError as exc:  # dropped by a later publish between the index and its other files
                raise ObjectNotFound(f"snapshot {directory!r} was removed while it was being loaded") from exc
        files = {}
        for name in names:
            files[name] = cache / directory / name
            store.download(f"{directory}/{name}", files[name])
        return cls(index, files, spec, placement, owned=True)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
        """Top-k per query: similarities, ids and records; a compressed index's shortlist is re-scored exactly."""
        scores, ids = self.ranked(queries, k, knobs)
        return scores, ids, [self._records(row) for row in ids]

    def ranked(self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query, similarities and ids only (-1 where the shard has fewer faces)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, self.ntotal)
        scores, ids = self.index.search(queries, min(k * self.factor, self.ntotal), params=self.tuning.params(knobs))
        if self.stored is not None:
            scores, ids = self._rerank(queries, ids, k)
        return scores[:, :k], ids[:, :k]

    def _records(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """Records aligned with `ids` ({} where FAISS padded with -1): from memory, or each from its batch."""
        if self.held is not None:
            found = ids >= 0
            rows = iter(self.held.take(pa.array(np.searchsorted(self.ids, ids[found]))).to_pylist())
            return [next(rows) if hit else {} for hit in found]
        out: list[dict[str, Any]] = []
        for faiss_id in ids.tolist():
            if faiss_id < 0:
                out.append({})
                continue
            row = int(np.searchsorted(self.ids, faiss_id))
            with self._reading:
                batch = self.records.get_batch(row // RECORD_BATCH_ROWS)
            record = batch.slice(row % RECORD_BATCH_ROWS, 1).to_pylist()[0]
            del record["faiss_id"]
            out.append(record)
        return out

    def _exact(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these ids, a pread each (the page cache holds what is hot)."""
        assert self.stored is not None
        size, stored = 4 * self.dim, self.stored
        raw = b"".join([os.pread(stored, size, row * size) for row in np.searchsorted(self.ids, ids).tolist()])
        return np.frombuffer(raw, dtype="<f4").reshape(len(ids), self.dim)

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of `ids` this snapshot holds, the vectors of those it holds): exact from vectors.f32, or
        reconstructed from an uncompressed index."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.zeros(len(ids), bool), np.zeros((0, self.dim), np.float32)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[rows] == ids
        wanted = ids[found]
        if self.stored is not None:
            return found, self._exact(wanted).copy()
        assert self.id_map is not None, "an uncompressed snapshot is an IndexIDMap"
        inner = faiss.downcast_index(self.index.index)  # type: ignore[attr-defined]
        rows_of = np.flatnonzero(np.isin(self.id_map, wanted))
        position = dict(zip(self.id_map[rows_of].tolist(), rows_of.tolist(), strict=True))
        out = [inner.reconstruct(position[i]) for i in wanted.tolist()]
        return found, np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def records_of(self, ids: np.ndarray) -> dict[int, dict[str, Any]]:
        """The records of those of `ids` this snapshot holds."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return {}
        found = self.ids[np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)] == ids
        return dict(zip(ids[found].tolist(), self._records(ids[found]), strict=True))

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(ids):
            found = row[row >= 0]
            exact = self._exact(found) @ queries[q]
            best = np.argsort(-exact, kind="stable")[:k]
            out_scores[q, : len(best)], out_ids[q, : len(best)] = exact[best], found[best]
        return out_scores, out_ids

    def release(self) -> None:
        """Remove downloaded copies. The open files stay readable for searches still running on this snapshot,
        and close when it is dropped."""
        if self.owned:
            for path in self.files.values():
                path.unlink(missing_ok=True)

    def __del__(self) -> None:
        if getattr(self, "stored", None) is not None:
            os.close(self.stored)  # type: ignore[arg-type]
