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

from cluster.collections.erasures import ErasureRegister
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.records import shard_of
from cluster.collections.snapshot import RECORD_COLUMNS, vectors_of
from cluster.storage import ObjectInfo, ObjectNotFound

# How often a shard looks at the manifest and the log: changes reach searches within about this time.
LIVE_POLL_S = 0.5


def log_prefix(manifest: Manifest) -> str:
    """The manifest's live log: each version of a collection's model has its own (an upgrade's cut-over starts
    one, a rollback returns to the one before), so no vector of one model is ever read as another's."""
    return f"{Collections.prefix(manifest.name)}{manifest.log}/"


def segment_key(manifest: Manifest, key: str, etag: str) -> str:
    digest = hashlib.sha256(f"{manifest.name}\0{key}\0{etag}".encode()).hexdigest()[:32]
    return f"{log_prefix(manifest)}{digest}.parquet"


def live_segments(collections: Collections, manifest: Manifest) -> list[ObjectInfo]:
    """Segments of the log not yet folded into the published records (in listing order)."""
    folded = set(manifest.folded)
    return [i for i in collections.store.list(log_prefix(manifest)) if i.key not in folded]


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


def live_faces_at_most(collections: Collections, manifest: Manifest) -> int:
    """The live log's faces not yet folded, counted without reading the published records: a photo added again or a
    face erased since may be counted too, so it is at least the number of live faces a search compares with."""
    count = 0
    for segment in live_segments(collections, manifest):
        try:
            count += collections.store.get_parquet(segment.key, ["face_id"]).num_rows
        except ObjectNotFound:
            continue  # folded meanwhile: counted in the next manifest
    return count


def live_face_count(collections: Collections, manifest: Manifest) -> int:
    """Faces of the live log that the published records do not hold and that are not erased: with the manifest's
    face_count, the faces a listing of the collection shows (a photo added again is counted once)."""
    live: set[str] = set()
    for segment in live_segments(collections, manifest):
        try:
            live.update(collections.store.get_parquet(segment.key, ["face_id"]).column("face_id").to_pylist())
        except ObjectNotFound:
            continue  # folded meanwhile: counted in the next manifest
    live -= ErasureRegister(collections.store, manifest.name).erased_ids() if live else set()
    if live:
        live -= set(collections.faces(manifest, ["face_id"]).column("face_id").to_pylist())
    return len(live)


class LiveFaces:
    """One shard's share of the live log: an exact inner-product index and the records of its faces."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.seen: tuple[tuple[str, str], ...] = ()
        self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.records: dict[int, dict[str, Any]] = {}
        # This shard's rows of each segment read so far, by (key, etag): a refresh reads only new or changed ones.
        self.parts: dict[tuple[str, str], pa.Table] = {}

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def refresh(
        self,
        collections: Collections,
        manifest: Manifest,
        shard: int,
        shard_count: int,
        added: tuple[str, str] | None = None,
    ) -> LiveFaces | None:
        """A new LiveFaces when the log changed since this one was built (else None): listed, or, when a writer
        says which segment it `added` (key, etag), without listing, by adding that segment's faces to a copy.
        Segments already read are reused; after a listing the exact index is rebuilt (the log is small between
        publishes) and the erasure register applied."""
        columns = ["faiss_id", "embedding", *RECORD_COLUMNS]  # RECORD_COLUMNS start with face_id

        def read(segment: tuple[str, str]) -> pa.Table | None:
            part = self.parts.get(segment)
            if part is not None:
                return part
            try:
                table = collections.store.get_parquet(segment[0], columns)
            except ObjectNotFound:
                return None  # folded and removed since the listing; the next snapshot holds it
            return table.filter(pa.array(shard_of(table.column("faiss_id").to_numpy(), shard_count) == shard))

        if added is not None:
            if added in self.seen:
                return None
            part = read(added)
            fresh = LiveFaces(manifest.dim)
            fresh.seen = tuple(sorted((*self.seen, added)))
            fresh.parts = {**self.parts, **({added: part} if part is not None else {})}
            fresh.index = faiss.clone_index(self.index)
            fresh.records = dict(self.records)
            if part is not None:
                fresh._add(part, manifest.dim)
            return fresh
        seen = tuple(sorted((s.key, s.etag) for s in live_segments(collections, manifest)))
        if seen == self.seen:
            return None
        fresh = LiveFaces(manifest.dim)
        fresh.seen = seen
        for segment in seen:
            part = read(segment)
            if part is not None:
                fresh.parts[segment] = part
        if fresh.parts:
            rows = pa.concat_tables(fresh.parts.values())
            erased = pa.array(sorted(ErasureRegister(collections.store, manifest.name).erased_ids()), pa.string())
            fresh._add(rows.filter(pc.invert(pc.is_in(rows.column("face_id"), erased))), manifest.dim)
        return fresh

    def _add(self, rows: pa.Table, dim: int) -> None:
        if rows.num_rows == 0:
            return
        ids = rows.column("faiss_id").to_numpy()
        self.index.add_with_ids(vectors_of(rows.column("embedding").combine_chunks(), dim), ids)
        for faiss_id, record in zip(ids.tolist(), rows.select(RECORD_COLUMNS).to_pylist(), strict=True):
            self.records[faiss_id] = record

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of `ids` the live log holds, their vectors)."""
        found = np.array([int(i) in self.records for i in ids], dtype=bool)
        out = [self.index.reconstruct(int(i)) for i in np.asarray(ids)[found]]
        return found, np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def ranked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query of the log's faces: similarities and ids."""
        if self.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.ntotal))
        return scores, ids


def combine(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of two answers per query (similarities, ids), each face once (a face re-added since the snapshot
    is in both: its best similarity), padded with -1."""
    if second[1].shape[1] == 0:
        return first
    scores_out = np.full((len(first[1]), k), -np.inf, np.float32)
    ids_out = np.full((len(first[1]), k), -1, np.int64)
    for q in range(len(first[1])):
        best: dict[int, float] = {}
        for scores, ids in (first, second):
            for score, faiss_id in zip(scores[q].tolist(), ids[q].tolist(), strict=True):
                if faiss_id >= 0 and score > best.get(faiss_id, -np.inf):
                    best[faiss_id] = score
        top = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]
        scores_out[q, : len(top)] = [s for _, s in top]
        ids_out[q, : len(top)] = [i for i, _ in top]
    return scores_out, ids_out
