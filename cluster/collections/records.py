"""Face and error records (Parquet): their schemas, deterministic face ids, routing to shards, and superseding."""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.locks import collection_lock
from cluster.pipeline.embed import EMBEDDING_DIM
from cluster.storage import ObjectNotFound, ObjectStore


@functools.cache
def face_schema(dim: int) -> pa.Schema:
    """Face records of a model whose embeddings have `dim` dimensions (a manifest's `dim`)."""
    return pa.schema(
        [
            ("face_id", pa.string()),
            ("faiss_id", pa.int64()),
            ("external_image_id", pa.string()),
            # The object's location: the source's URI joined with its key (a URI, despite the column's name, which
            # stored records have carried since the first release; the API calls it `source`).
            ("source_key", pa.string()),
            ("source_etag", pa.string()),
            ("face_index", pa.int32()),
            ("bbox", pa.list_(pa.float32(), 4)),
            ("landmarks", pa.list_(pa.float32(), 10)),
            ("confidence", pa.float32()),
            ("quality", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("job_id", pa.string()),
            ("indexed_at", pa.timestamp("ms", tz="UTC")),
        ]
    )


# The records of the shipped models (128-D); other dimensions: face_schema(manifest.dim).
FACE_SCHEMA = face_schema(EMBEDDING_DIM)
ERROR_SCHEMA = pa.schema(
    [
        ("source_key", pa.string()),
        ("source_etag", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("job_id", pa.string()),
        ("at", pa.timestamp("ms", tz="UTC")),
    ]
)


def face_id_for(collection: str, key: str, etag: str, index: int) -> tuple[str, int]:
    """Deterministic id, so that a retried or re-run partition overwrites rather than duplicates."""
    digest = hashlib.sha256(f"{collection}\0{key}\0{etag}\0{index}".encode()).digest()
    faiss_id = int.from_bytes(digest[:8], "big") & (2**63 - 1)
    return f"{faiss_id:016x}", faiss_id


def faiss_id_of(face_id: str) -> int | None:
    """The FAISS id a face id names (its 16 hex digits), or None for a string that is no face id."""
    if len(face_id) != 16 or any(c not in "0123456789abcdef" for c in face_id):
        return None
    value = int(face_id, 16)
    return value if value < 2**63 else None  # ids are 63 bits (face_id_for)


def face_rows(
    collection: str, key: str, etag: str, location: str, external_id: str, faces: list[Any], job_id: str
) -> list[dict[str, Any]]:
    """Records of an image's kept faces (pipeline Faces, largest first): ids from the key, etag and position."""
    now = datetime.now(UTC)
    rows = []
    for index, face in enumerate(faces):
        face_id, faiss_id = face_id_for(collection, key, etag, index)
        rows.append(
            {
                "face_id": face_id,
                "faiss_id": faiss_id,
                "external_image_id": external_id,
                "source_key": location,
                "source_etag": etag,
                "face_index": index,
                "bbox": np.round(face.bbox, 2).tolist(),
                "landmarks": np.round(face.landmarks.reshape(-1), 2).tolist(),
                "confidence": face.confidence,
                "quality": json.dumps(face.quality.as_dict()),
                "embedding": face.embedding.tolist(),
                "job_id": job_id,
                "indexed_at": now,
            }
        )
    return rows


def shard_of(faiss_id: Any, shard_count: int) -> Any:
    """The shard a face id routes to (an int or a numpy array of them)."""
    return faiss_id % shard_count


def deduplicate(table: pa.Table) -> pa.Table:
    """One row per face id (the newest), whatever overlapping jobs wrote."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, [("face_id", "ascending"), ("indexed_at", "descending")])
    table = table.take(order)
    ids = table.column("face_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return table.filter(pa.array(first))


def drop_superseded(store: ObjectStore, held: list[str], face_files: list[str], error_files: list[str]) -> int:
    """Erase the faces of an object's older version when a newer version of the same key is published: a
    changed photo replaces its faces (even with none), and its old embeddings do not linger. `held` are the
    collection's face files, `face_files` and `error_files` the newly published ones. Returns how many face
    records went; only files holding one of the published keys are read row by row or rewritten."""
    fresh = set(face_files)
    older = [key for key in held if key not in fresh]
    if not older or not (face_files or error_files):
        return 0
    published = [store.get_parquet(k, ["source_key", "source_etag", "indexed_at"]) for k in face_files]
    published += [
        store.get_parquet(k, ["source_key", "source_etag", "at"]).rename_columns(
            ["source_key", "source_etag", "indexed_at"]
        )
        for k in error_files
    ]
    versions = pa.concat_tables(published)
    keys = pc.unique(versions.column("source_key"))
    removed = 0
    for key in older:
        table = store.get_parquet(key, ["source_key", "source_etag", "indexed_at"])
        hit = pc.is_in(table.column("source_key"), value_set=keys)
        if not pc.any(hit).as_py():
            continue
        rows = table.filter(hit)
        mine = versions.filter(pc.is_in(versions.column("source_key"), value_set=rows.column("source_key")))
        latest: dict[str, tuple[Any, str]] = {}
        for source, etag, at in zip(*(mine.column(c).to_pylist() for c in mine.column_names), strict=True):
            if source not in latest or at > latest[source][0]:
                latest[source] = (at, etag)
        if not any(etag != latest[s][1] and at < latest[s][0] for s, etag, at in zip(*_columns(rows), strict=True)):
            continue
        # Read again, filtered and written under the collection's lock: an erasure's rewrite of this file in
        # between must not be undone (its rows back from a copy read before it).
        with collection_lock(store, key.split("/")[1]):
            current = store.get_parquet(key)
            stale = [
                source in latest and etag != latest[source][1] and at < latest[source][0]
                for source, etag, at in zip(*_columns(current), strict=True)
            ]
            store.put_parquet(key, current.filter(pa.array(np.logical_not(stale))))
        removed += sum(stale)
    return removed


def _columns(table: pa.Table) -> list[list[Any]]:
    """Source key, etag and indexing time of each row, as lists."""
    return [table.column(c).to_pylist() for c in ("source_key", "source_etag", "indexed_at")]


def erase_rows(
    store: ObjectStore, face_files: list[str], face_ids: set[str], external_ids: set[str]
) -> list[dict[str, Any]]:
    """Rewrite the record files without the named faces (by face id or external image id); what was erased:
    face id, source location and etag of each, once."""
    erased: dict[str, dict[str, Any]] = {}
    for key in face_files:
        try:
            table = store.get_parquet(key)
        except ObjectNotFound:
            continue  # a live segment folded meanwhile: its faces are in a record file this loop reads too
        doomed = pc.or_(
            pc.is_in(table.column("face_id"), pa.array(sorted(face_ids), pa.string())),
            pc.is_in(table.column("external_image_id"), pa.array(sorted(external_ids), pa.string())),
        )
        hits = table.filter(doomed).select(["face_id", "source_key", "source_etag"]).to_pylist()
        if hits:
            for hit in hits:
                erased[hit["face_id"]] = {
                    "face_id": hit["face_id"],
                    "source": hit["source_key"],
                    "etag": hit["source_etag"],
                }
            store.put_parquet(key, table.filter(pc.invert(doomed)))
    return [erased[k] for k in sorted(erased)]
