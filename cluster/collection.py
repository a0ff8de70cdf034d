"""Collections in object storage: manifest, face and error records (Parquet), shard snapshots, atomic publish."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from cluster import index_spec
from cluster.errors import CollectionExists, CollectionNotFound, InvalidCollectionName, InvalidRequest
from cluster.pipeline.embed import EMBEDDING_DIM
from cluster.storage import ObjectNotFound, ObjectStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_FALSE_MATCH_RATE = 1e-5

FACE_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),
        ("faiss_id", pa.int64()),
        ("external_image_id", pa.string()),
        ("source_key", pa.string()),
        ("source_etag", pa.string()),
        ("face_index", pa.int32()),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("confidence", pa.float32()),
        ("quality", pa.string()),
        ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
        ("shard", pa.int32()),
        ("job_id", pa.string()),
        ("indexed_at", pa.timestamp("ms", tz="UTC")),
    ]
)
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


class Manifest(BaseModel):
    name: str
    model_id: str
    model_sha256: str
    dim: int = EMBEDDING_DIM
    metric: str = "cosine"
    index_spec: str = index_spec.AUTO
    built_specs: dict[str, str] = {}  # per shard, what `auto` resolved to at the last publish
    shard_count: int = 4
    max_false_match_rate: float = DEFAULT_MAX_FALSE_MATCH_RATE
    version: int = 0
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    updated_at: str | None = None
    face_count: int = 0
    face_files: list[str] = []
    error_files: list[str] = []
    shards: dict[str, str] = {}


def face_id_for(collection: str, key: str, etag: str, index: int) -> tuple[str, int]:
    """Deterministic id, so that a retried or re-run partition overwrites rather than duplicates."""
    digest = hashlib.sha256(f"{collection}\0{key}\0{etag}\0{index}".encode()).digest()
    faiss_id = int.from_bytes(digest[:8], "big") & (2**63 - 1)
    return f"{faiss_id:016x}", faiss_id


def shard_of(faiss_id: int, shard_count: int) -> int:
    return faiss_id % shard_count


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Collections:
    """Create, read, publish and erase collections in one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def prefix(name: str) -> str:
        return f"collections/{name}/"

    def create(self, manifest: Manifest) -> Manifest:
        if not NAME.match(manifest.name):
            raise InvalidCollectionName(
                f"collection name {manifest.name!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        if not 1 <= manifest.shard_count <= 1024:
            raise InvalidRequest("shard_count must be between 1 and 1024")
        index_spec.validate(manifest.index_spec)
        if not 0 < manifest.max_false_match_rate < 1:
            raise InvalidRequest("max_false_match_rate must be between 0 and 1")
        if self.store.exists(self.prefix(manifest.name) + "manifest.json"):
            raise CollectionExists(f"collection {manifest.name!r} already exists")
        self._write_manifest(manifest)
        return manifest

    def get(self, name: str) -> Manifest:
        if not NAME.match(name):
            raise CollectionNotFound(f"collection {name!r} does not exist")
        try:
            raw = self.store.get(self.prefix(name) + "manifest.json")
        except ObjectNotFound as exc:
            raise CollectionNotFound(f"collection {name!r} does not exist") from exc
        return Manifest.model_validate_json(raw)

    def names(self) -> list[str]:
        return sorted(
            info.key.split("/")[1] for info in self.store.list("collections/") if info.key.endswith("/manifest.json")
        )

    def delete(self, name: str) -> int:
        self.get(name)
        # The manifest goes first so that readers stop seeing the collection before its data disappears.
        keys = [self.prefix(name) + "manifest.json"]
        keys += [i.key for i in self.store.list(self.prefix(name)) if not i.key.endswith("manifest.json")]
        for key in keys:
            self.store.delete(key)
        return len(keys)

    def _write_manifest(self, manifest: Manifest) -> None:
        self.store.put(self.prefix(manifest.name) + "manifest.json", manifest.model_dump_json(indent=2).encode())

    def faces(self, manifest: Manifest, columns: list[str] | None = None) -> pa.Table:
        tables = [self.store.get_parquet(key) for key in manifest.face_files]
        if not tables:
            return FACE_SCHEMA.empty_table().select(columns) if columns else FACE_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        return table.select(columns) if columns else table

    def errors(self, manifest: Manifest) -> pa.Table:
        tables = [self.store.get_parquet(key) for key in manifest.error_files]
        return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()

    def publish(self, manifest: Manifest, face_files: Iterable[str] = (), error_files: Iterable[str] = ()) -> Manifest:
        """Build shard snapshots from every published face record, then swap the manifest in: all or nothing."""
        new = manifest.model_copy(deep=True)
        new.face_files = sorted(set(manifest.face_files) | set(face_files))
        new.error_files = sorted(set(manifest.error_files) | set(error_files))
        new.version = manifest.version + 1
        faces = _deduplicate(self.faces(new, ["face_id", "faiss_id", "embedding", "shard", "indexed_at"]))
        new.face_count = faces.num_rows
        new.shards, new.built_specs = {}, {}
        shard_column = faces.column("shard").to_numpy()
        for shard in range(new.shard_count):
            rows = faces.filter(pa.array(shard_column == shard))
            spec = index_spec.resolve(new.index_spec, rows.num_rows)
            key = f"{self.prefix(new.name)}shards/{shard}/{new.version:08d}.faiss"
            self.store.put(key, build_shard_index(rows, new.dim, spec, seed=shard))
            new.shards[str(shard)], new.built_specs[str(shard)] = key, spec
        new.updated_at = _now()
        self._write_manifest(new)
        self._drop_old_snapshots(new)
        return new

    def _drop_old_snapshots(self, manifest: Manifest) -> None:
        current = set(manifest.shards.values())
        for info in self.store.list(self.prefix(manifest.name) + "shards/"):
            if info.key not in current:
                self.store.delete(info.key)

    def erase_faces(self, manifest: Manifest, face_ids: set[str], external_ids: set[str]) -> tuple[Manifest, list[str]]:
        """Remove faces from the Parquet records and the shard snapshots: real erasure, not a tombstone."""
        erased: list[str] = []
        for key in manifest.face_files:
            table = self.store.get_parquet(key)
            doomed = pc.or_(
                pc.is_in(table.column("face_id"), pa.array(sorted(face_ids), pa.string())),
                pc.is_in(table.column("external_image_id"), pa.array(sorted(external_ids), pa.string())),
            )
            hits = table.filter(doomed)
            if hits.num_rows:
                erased.extend(hits.column("face_id").to_pylist())
                self.store.put_parquet(key, table.filter(pc.invert(doomed)))
        if not erased:
            return manifest, []
        return self.publish(manifest), sorted(set(erased))


def _deduplicate(table: pa.Table) -> pa.Table:
    """One row per face id (the newest), whatever overlapping jobs wrote."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, [("face_id", "ascending"), ("indexed_at", "descending")])
    table = table.take(order)
    ids = table.column("face_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return table.filter(pa.array(first))


def build_shard_index(rows: pa.Table, dim: int, spec: str, seed: int = 0) -> bytes:
    vectors = np.zeros((0, dim), np.float32)
    if rows.num_rows:
        vectors = np.stack(rows.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    index = index_spec.build(spec, vectors, rows.column("faiss_id").to_numpy().astype(np.int64), seed)
    return faiss.serialize_index(index).tobytes()


def face_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the API shows it: no embedding, quality decoded."""
    out = {k: v for k, v in record.items() if k not in ("embedding", "faiss_id")}
    if isinstance(out.get("quality"), str):
        out["quality"] = json.loads(out["quality"])
    if out.get("indexed_at") is not None:
        out["indexed_at"] = str(out["indexed_at"])
    return out
