"""Collections in object storage: manifest, face and error records (Parquet), shard snapshots, atomic publish."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from cluster import index_spec
from cluster.errors import (
    CollectionChanged,
    CollectionExists,
    CollectionNotFound,
    InvalidCollectionName,
    InvalidRequest,
)
from cluster.models.registry import embedding_of
from cluster.pipeline.embed import EMBEDDING_DIM
from cluster.snapshot import RECORD_COLUMNS, extend_shard, vectors_of, write_shard
from cluster.storage import ObjectNotFound, ObjectStore

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_FALSE_MATCH_RATE = 1e-5
PUBLISH_ATTEMPTS = 3

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


class TrainedIndex(BaseModel):
    spec: str
    key: str
    faces: int  # the collection's size when it was trained


class Manifest(BaseModel):
    name: str
    model_id: str
    model_sha256: str
    dim: int = EMBEDDING_DIM
    metric: str = "cosine"
    index_spec: str = index_spec.AUTO
    built_spec: str | None = None  # what `auto` resolved to at the last publish, the same for every shard
    trained: TrainedIndex | None = None  # the IVF training that later publishes add to
    shard_count: int = 4
    max_false_match_rate: float = DEFAULT_MAX_FALSE_MATCH_RATE
    version: int = 0
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    updated_at: str | None = None
    face_count: int = 0
    face_files: list[str] = []
    error_files: list[str] = []
    shards: dict[str, str] = {}  # shard number -> the folder of its snapshot (index.faiss, records.arrow)


def face_id_for(collection: str, key: str, etag: str, index: int) -> tuple[str, int]:
    """Deterministic id, so that a retried or re-run partition overwrites rather than duplicates."""
    digest = hashlib.sha256(f"{collection}\0{key}\0{etag}\0{index}".encode()).digest()
    faiss_id = int.from_bytes(digest[:8], "big") & (2**63 - 1)
    return f"{faiss_id:016x}", faiss_id


def shard_of(faiss_id: Any, shard_count: int) -> Any:
    """The shard a face id routes to (an int or a numpy array of them)."""
    return faiss_id % shard_count


def _check_shard_count(shard_count: int) -> int:
    if not 1 <= shard_count <= 1024:
        raise InvalidRequest("shard_count must be between 1 and 1024")
    return shard_count


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
        _check_shard_count(manifest.shard_count)
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

    def publish(
        self, manifest: Manifest, face_files: Iterable[str] = (), error_files: Iterable[str] = (), retrain: bool = False
    ) -> Manifest:
        """Build every shard's snapshot from the published face records, then swap the manifest in: all or nothing.

        Shards are built one at a time from their own rows (memory: one shard, not the collection). Routing is
        by face id and the manifest's shard count, so a new count reshards. A publish that only adds records to
        Flat or IVF shards of an unchanged shape adds them to the previous snapshots; IVF indexes are built from
        the collection's trained index while the resolved spec is unchanged; `retrain` trains afresh.
        """
        new = manifest.model_copy(deep=True)
        new.face_files = sorted(set(manifest.face_files) | set(face_files))
        new.error_files = sorted(set(manifest.error_files) | set(error_files))
        new.version = manifest.version + 1
        added = sorted(set(face_files) - set(manifest.face_files))
        superseded = self._drop_superseded(new, added, sorted(set(error_files) - set(manifest.error_files)))
        ids = self._unique_ids(new)
        new.face_count = len(ids)
        per_shard = np.bincount(shard_of(ids, new.shard_count), minlength=new.shard_count)
        spec = new.built_spec = index_spec.resolve(new.index_spec, int(per_shard.max(initial=0)))
        new.shards = {}
        extend = not superseded and self._extendable(manifest, new, spec, retrain, added)
        # A folder of its own: a concurrent publish of the same version never writes into this one.
        folder = f"{new.version:08d}-{secrets.token_hex(4)}"
        with index_spec.all_cores():
            self._build_shards(new, folder, spec, retrain, manifest if extend else None, added)
        new.updated_at = _now()
        current = self.get(new.name)
        if current.version != manifest.version:
            self._drop_unreferenced(current, only=f"{self.prefix(new.name)}shards/{folder}/")
            raise CollectionChanged(
                f"collection {new.name!r} moved to version {current.version} while version {new.version} was being "
                f"built from {manifest.version}; nothing was changed, run it again"
            )
        self._write_manifest(new)
        self._drop_unreferenced(new)
        return new

    def publish_latest(self, name: str, face_files: Iterable[str] = (), error_files: Iterable[str] = ()) -> Manifest:
        """Publish onto the current version; if another publish lands meanwhile, build again on top of it."""
        face_files, error_files = list(face_files), list(error_files)
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                return self.publish(self.get(name), face_files, error_files)
            except CollectionChanged:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _drop_superseded(self, manifest: Manifest, face_files: list[str], error_files: list[str]) -> int:
        """Erase the faces of an object's older version when a newer version of the same key is published: a
        changed photo replaces its faces (even with none), and its old embeddings do not linger. Returns how many
        face records went; only files holding one of the published keys are read row by row or rewritten."""
        fresh = set(face_files)
        older = [key for key in manifest.face_files if key not in fresh]
        if not older or not (face_files or error_files):
            return 0
        published = [self.store.get_parquet(k, ["source_key", "source_etag", "indexed_at"]) for k in face_files]
        published += [
            self.store.get_parquet(k, ["source_key", "source_etag", "at"]).rename_columns(
                ["source_key", "source_etag", "indexed_at"]
            )
            for k in error_files
        ]
        versions = pa.concat_tables(published)
        keys = pc.unique(versions.column("source_key"))
        removed = 0
        for key in older:
            table = self.store.get_parquet(key, ["source_key", "source_etag", "indexed_at"])
            hit = pc.is_in(table.column("source_key"), value_set=keys)
            if not pc.any(hit).as_py():
                continue
            rows = table.filter(hit)
            mine = versions.filter(pc.is_in(versions.column("source_key"), value_set=rows.column("source_key")))
            latest: dict[str, tuple[Any, str]] = {}
            for source, etag, at in zip(*(mine.column(c).to_pylist() for c in mine.column_names), strict=True):
                if source not in latest or at > latest[source][0]:
                    latest[source] = (at, etag)
            stale_rows = [
                etag != latest[source][1] and at < latest[source][0]
                for source, etag, at in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True)
            ]
            if any(stale_rows):
                stale = np.zeros(table.num_rows, dtype=bool)
                stale[np.flatnonzero(hit.to_numpy(zero_copy_only=False))] = stale_rows
                self.store.put_parquet(key, self.store.get_parquet(key).filter(pa.array(~stale)))
                removed += int(stale.sum())
        return removed

    @staticmethod
    def _extendable(old: Manifest, new: Manifest, spec: str, retrain: bool, added: list[str]) -> bool:
        """Whether this publish only adds records to snapshots of the same shape: then shards add the new faces
        to what they hold (IVF keeps its training) instead of rebuilding from every record."""
        same_shape = len(old.shards) == new.shard_count == old.shard_count and old.built_spec == spec
        return bool(added) and same_shape and not retrain and not spec.startswith("HNSW") and old.face_count > 0

    def _build_shards(
        self, new: Manifest, folder: str, spec: str, retrain: bool, previous: Manifest | None, added: list[str]
    ) -> None:
        trained = None
        for shard in range(new.shard_count):
            directory = f"{self.prefix(new.name)}shards/{folder}/{shard}"
            if previous is not None:
                rows = _deduplicate(self._shard_rows(added, new.shard_count, shard))
                extend_shard(self.store, previous.shards[str(shard)], directory, rows, spec)
            else:
                rows = _deduplicate(self._shard_rows(new.face_files, new.shard_count, shard))
                if index_spec.compressed(spec) and trained is None:
                    trained = self._trained(new, spec, rows, retrain)
                write_shard(self.store, directory, rows, spec, trained, seed=shard)
            new.shards[str(shard)] = directory

    def rebuild(
        self, manifest: Manifest, shard_count: int | None = None, spec: str | None = None, retrain: bool = False
    ) -> Manifest:
        """New snapshots from the same records, with another shard count or index spec; swapped in atomically."""
        changes: dict[str, Any] = {}
        if shard_count is not None:
            changes["shard_count"] = _check_shard_count(shard_count)
        if spec is not None:
            changes["index_spec"] = index_spec.validate(spec)
        return self.publish(manifest.model_copy(update=changes), retrain=retrain)

    def _unique_ids(self, manifest: Manifest) -> np.ndarray:
        parts = [self.store.get_parquet(k, ["faiss_id"]).column("faiss_id").to_numpy() for k in manifest.face_files]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _shard_rows(self, files: list[str], shard_count: int, shard: int) -> pa.Table:
        columns = ["face_id", "faiss_id", "embedding", "indexed_at", *RECORD_COLUMNS[1:]]
        tables = []
        for key in files:
            table = self.store.get_parquet(key, columns)
            mine = shard_of(table.column("faiss_id").to_numpy(), shard_count) == shard
            tables.append(table.filter(pa.array(mine)))
        return pa.concat_tables(tables) if tables else FACE_SCHEMA.empty_table().select(columns)

    def _trained(self, manifest: Manifest, spec: str, rows: pa.Table, retrain: bool) -> faiss.Index:
        """The collection's trained (empty) IVF index: the stored one while the spec holds, else trained now on
        a sample of the first shard's rows (a uniform sample of the collection: routing is by a hash)."""
        held = manifest.trained
        if held is not None and held.spec == spec and not retrain:
            try:
                return faiss.deserialize_index(np.frombuffer(self.store.get(held.key), dtype=np.uint8))
            except ObjectNotFound:
                pass
        sample = index_spec.training_sample(vectors_of(rows.column("embedding").combine_chunks(), manifest.dim), spec)
        fraction = embedding_of(manifest.model_id).ivf_probe_fraction
        trained = index_spec.train(spec, sample, seed=manifest.version, probe_fraction=fraction)
        key = f"{self.prefix(manifest.name)}trained/{manifest.version:08d}-{secrets.token_hex(4)}.faiss"
        self.store.put(key, faiss.serialize_index(trained).tobytes())
        manifest.trained = TrainedIndex(spec=spec, key=key, faces=manifest.face_count)
        return trained

    def _drop_unreferenced(self, manifest: Manifest, only: str | None = None) -> None:
        """Snapshots and trainings the manifest no longer names go (loaded shards keep theirs); `only` limits
        this to one folder, for a publish that lost a race cleaning up after itself."""
        keep = set(manifest.shards.values())
        trained = manifest.trained.key if manifest.trained else None
        prefix = self.prefix(manifest.name)
        listed = (
            [*self.store.list(only)]
            if only
            else [*self.store.list(prefix + "shards/"), *self.store.list(prefix + "trained/")]
        )
        for info in listed:
            if info.key.rsplit("/", 1)[0] not in keep and info.key != trained:
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
        return self.publish_latest(manifest.name), sorted(set(erased))


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


def face_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the API shows it: no embedding, quality decoded."""
    out = {k: v for k, v in record.items() if k not in ("embedding", "faiss_id")}
    if isinstance(out.get("quality"), str):
        out["quality"] = json.loads(out["quality"])
    if out.get("indexed_at") is not None:
        out["indexed_at"] = str(out["indexed_at"])
    return out
