"""A collection's manifest (what is published: model, shards, record files, version) and its CRUD in the store."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from cluster.collections import index_spec
from cluster.collections.records import ERROR_SCHEMA, FACE_SCHEMA, face_schema
from cluster.errors import CollectionExists, CollectionNotFound, InvalidCollectionName, InvalidRequest
from cluster.models.recipes import Recipe, recipe_of
from cluster.pipeline.embed import EMBEDDING_DIM
from cluster.storage import ObjectNotFound, ObjectStore

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: fullmatch (a $ allows a newline)
DEFAULT_MAX_FALSE_MATCH_RATE = 1e-5
# The per-search promise of a new collection: at most this many strangers expected above the threshold in one
# search, whatever the collection's size (README, "The per-search promise", for how it was chosen).
DEFAULT_MAX_FALSE_CANDIDATES = 0.01
# Shards of a collection created without a count (both protocols): four keep a 1M-face collection's shards at
# 250k faces, where IVF fast-scan answers in well under a millisecond.
DEFAULT_SHARDS = 4


class TrainedIndex(BaseModel):
    spec: str
    key: str
    faces: int  # the collection's size when it was trained


class Manifest(BaseModel):
    name: str
    model_id: str
    model_sha256: str
    # What turns a photo into this collection's vectors (detector, mirroring, precision; cluster/models/recipes.py).
    # None: made before recipes, with its model's plain recipe (MTCNN, fp32).
    recipe: str | None = None
    # A fused recipe's second embedding model, its file by sha256 (its vectors are joined to the first's: `dim`).
    fused_model_sha256: str | None = None
    dim: int = EMBEDDING_DIM
    metric: str = "cosine"
    index_spec: str = index_spec.AUTO
    built_spec: str | None = None  # what `auto` resolved to at the last publish, the same for every shard
    trained: TrainedIndex | None = None  # the IVF training that later publishes add to
    shard_count: int = DEFAULT_SHARDS
    # The version that set the shard count: shard actors are named by it, so a 4 -> 6 -> 4 reshard starts a
    # new set of four rather than reusing names whose actors were retired.
    shard_set: int = 0
    # Actors per shard, each on a different node where the cluster has enough: a query asks one of them, and
    # another if that one fails or is late, so losing a node loses no answer.
    replicas: int = 1
    max_false_match_rate: float = DEFAULT_MAX_FALSE_MATCH_RATE
    # Expected strangers above the threshold per search: the threshold a search applies tightens as the collection
    # grows so that this holds. Set at create, changed only by `collections promise` (audited). None: made before
    # promises; such a collection keeps only its per-comparison floor until an admin sets one.
    max_false_candidates_per_search: float | None = None
    # The calibration the floor and every per-match rate come from, copied in when the collection is created and
    # changed only by `collections calibrate` (audited). None: made before calibrations were pinned; such a
    # collection reads its model's calibration on this machine until one is applied.
    calibration: dict[str, Any] | None = None
    calibration_sha256: str | None = None
    # Photos added by upload are kept in the store (cluster/collections/photos.py) so that review can show them and
    # an upgrade can embed them again; off only by an explicit, audited choice at create.
    keep_photos: bool = True
    version: int = 0
    created_at: str = Field(default_factory=lambda: now())
    updated_at: str | None = None
    face_count: int = 0
    face_files: list[str] = []
    error_files: list[str] = []
    shards: dict[str, str] = {}  # shard number -> the folder of its snapshot (index.faiss, records.arrow)
    extended_from: int | None = None  # the version whose snapshots this one added to (None: built from records)
    # The folder of its live log under the collection: "log", or an upgrade's own ("log-<upgrade id>", from its
    # cut-over on), so that an add embedded with the model before a cut-over never lands among the new model's.
    log: str = "log"
    # Live-log segments this version folded into its records (removed from the log once it is published; a shard
    # that still lists one leaves it out of its live faces).
    folded: list[str] = []

    @property
    def face_recipe(self) -> Recipe:
        """The recipe its faces were made with, and every probe searched against it must be."""
        return recipe_of(self.recipe, self.model_id)

    def public(self) -> dict[str, object]:
        """The manifest as the API and the CLI show it: without the lists of record files."""
        return self.model_dump(exclude={"face_files", "error_files", "calibration"})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


MAX_REPLICAS = 8


def check_replicas(replicas: int) -> int:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidRequest(f"replicas must be between 1 and {MAX_REPLICAS}")
    return replicas


def check_promise(promise: float | None) -> float | None:
    if promise is not None and not 0 < promise <= 1:
        raise InvalidRequest("max_false_candidates_per_search must be above 0 and at most 1")
    return promise


def check_shard_count(shard_count: int) -> int:
    if not 1 <= shard_count <= 1024:
        raise InvalidRequest("shard_count must be between 1 and 1024")
    return shard_count


class Collections:
    """Create, read, list and delete collections' manifests and records in one store (publishing: publish.py)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def prefix(name: str) -> str:
        return f"collections/{name}/"

    def create(self, manifest: Manifest) -> Manifest:
        if not NAME.fullmatch(manifest.name):
            raise InvalidCollectionName(
                f"collection name {manifest.name!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        check_shard_count(manifest.shard_count)
        index_spec.validate(manifest.index_spec)
        if not 0 < manifest.max_false_match_rate < 1:
            raise InvalidRequest("max_false_match_rate must be between 0 and 1")
        check_promise(manifest.max_false_candidates_per_search)
        if self.store.exists(self.prefix(manifest.name) + "manifest.json"):
            raise CollectionExists(f"collection {manifest.name!r} already exists")
        self.write(manifest)
        return manifest

    def get(self, name: str) -> Manifest:
        if not NAME.fullmatch(name):
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

    def write(self, manifest: Manifest) -> None:
        self.store.put(self.prefix(manifest.name) + "manifest.json", manifest.model_dump_json(indent=2).encode())

    def faces(self, manifest: Manifest, columns: list[str] | None = None) -> pa.Table:
        tables = [self.store.get_parquet(key, columns) for key in manifest.face_files]
        if not tables:
            empty = face_schema(manifest.dim).empty_table()
            return empty.select(columns) if columns else empty
        # Files written before the `shard` column was dropped still carry it: schemas are unified, not equal.
        return pa.concat_tables(tables, promote_options="permissive").select(columns or FACE_SCHEMA.names)

    def errors(self, manifest: Manifest) -> pa.Table:
        tables = [self.store.get_parquet(key) for key in manifest.error_files]
        return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()
