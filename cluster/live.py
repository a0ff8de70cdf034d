"""Live collections: faces added one photo at a time go to an append log of small record segments in the store;
shards tail it into a small exact index beside their snapshot, and the next publish folds the log into records.

A segment is named by what it holds (collection, key, etag), so the same photo added twice writes the same object.
It is durable once written; every shard of every server reads it within `LIVE_POLL_S`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.erasures import ErasureRegister
from cluster.manifest import Collections, Manifest
from cluster.records import shard_of
from cluster.snapshot import RECORD_COLUMNS, vectors_of
from cluster.storage import ObjectInfo, ObjectNotFound

# How often a shard looks at the manifest and the log: changes reach searches within about this time.
LIVE_POLL_S = 0.5


def log_prefix(collection: str) -> str:
    return f"{Collections.prefix(collection)}log/"


def segment_key(collection: str, key: str, etag: str) -> str:
    digest = hashlib.sha256(f"{collection}\0{key}\0{etag}".encode()).hexdigest()[:32]
    return f"{log_prefix(collection)}{digest}.parquet"


def live_segments(collections: Collections, manifest: Manifest) -> list[ObjectInfo]:
    """Segments of the log not yet folded into the published records (in listing order)."""
    folded = set(manifest.folded)
    return [i for i in collections.store.list(log_prefix(manifest.name)) if i.key not in folded]


def all_faces(collections: Collections, manifest: Manifest, columns: list[str]) -> pa.Table:
    """The published records and the live log's, each face once (the newest record of it)."""
    tables = [collections.faces(manifest, columns)]
    for segment in live_segments(collections, manifest):
        try:
            tables.append(collections.store.get_parquet(segment.key, columns))
        except ObjectNotFound:
            continue
    table = pa.concat_tables(tables)
    if "face_id" not in columns:
        return table
    erased = ErasureRegister(collections.store, manifest.name).erased_ids()
    ids = table.column("face_id").to_pylist()
    last = {face_id: row for row, face_id in enumerate(ids) if face_id not in erased}
    return table.take(pa.array(sorted(last.values()), pa.int64()))


class LiveFaces:
    """One shard's share of the live log: an exact inner-product index and the records of its faces."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.seen: tuple[tuple[str, str], ...] = ()
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.records: dict[int, dict[str, Any]] = {}

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def refresh(self, collections: Collections, manifest: Manifest, shard: int, shard_count: int) -> LiveFaces | None:
        """A new LiveFaces when the log changed since this one was built (else None): rebuilt whole, the log is
        small between publishes."""
        segments = live_segments(collections, manifest)
        seen = tuple((s.key, s.etag) for s in segments)
        if seen == self.seen:
            return None
        fresh = LiveFaces(manifest.dim)
        fresh.seen = seen
        columns = ["faiss_id", "embedding", *RECORD_COLUMNS]  # RECORD_COLUMNS start with face_id
        tables = []
        for segment in segments:
            try:
                table = collections.store.get_parquet(segment.key, columns)
            except ObjectNotFound:
                continue  # folded and removed since the listing; the next snapshot holds it
            mine = shard_of(table.column("faiss_id").to_numpy(), shard_count) == shard
            tables.append(table.filter(pa.array(mine)))
        rows = pa.concat_tables(tables) if tables else None
        if rows is not None and rows.num_rows:
            erased = pa.array(sorted(ErasureRegister(collections.store, manifest.name).erased_ids()), pa.string())
            rows = rows.filter(pc.invert(pc.is_in(rows.column("face_id"), erased)))
        if rows is not None and rows.num_rows:
            ids = rows.column("faiss_id").to_numpy()
            fresh.index.add_with_ids(vectors_of(rows.column("embedding").combine_chunks(), manifest.dim), ids)
            for faiss_id, record in zip(ids.tolist(), rows.select(RECORD_COLUMNS).to_pylist(), strict=True):
                fresh.records[faiss_id] = record
        return fresh

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
        if self.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), [[] for _ in queries]
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.ntotal))
        return scores, ids, [[self.records.get(int(i), {}) for i in row] for row in ids]


def combine(
    first: tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]],
    second: tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]],
    k: int,
) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any]]]]:
    """Top-k of two answers per query, each face once (a face re-added since the snapshot is in both)."""
    if second[1].shape[1] == 0:
        return first
    scores_out, ids_out, records_out = [], [], []
    for q in range(len(first[1])):
        best: dict[int, tuple[float, dict[str, Any]]] = {}
        for scores, ids, records in (first, second):
            for score, faiss_id, record in zip(scores[q].tolist(), ids[q].tolist(), records[q], strict=True):
                if faiss_id >= 0 and (faiss_id not in best or score > best[faiss_id][0]):
                    best[faiss_id] = (score, record)
        top = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        scores_out.append([s for _, (s, _) in top])
        ids_out.append([i for i, _ in top])
        records_out.append([r for _, (_, r) in top])
    width = max((len(row) for row in ids_out), default=0)
    pad = [(row + [-1] * (width - len(row))) for row in ids_out]
    spad = [(row + [-1.0] * (width - len(row))) for row in scores_out]
    rpad = [(row + [{}] * (width - len(row))) for row in records_out]
    return np.array(spad, np.float32).reshape(len(pad), width), np.array(pad, np.int64).reshape(len(pad), width), rpad
