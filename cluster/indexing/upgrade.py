"""The upgrade job: every face of a collection embedded again with another recipe, from its source object or kept
photo, into a shadow version (cluster/collections/versions.py) beside the live one, which serves throughout.

A face of the same photo keeps its id across recipes: the new recipe's faces are matched to the old ones by box
overlap (the same detector finds the same boxes), so users, associations and review history follow. Faces the new
recipe no longer finds, new ones it finds and photos that are gone are listed in the summary. Partitions of
photos run on Ray actors like an index job's; each writes its records and a result naming its photos, so a killed
driver's rerun embeds only the photos no result names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray
from pydantic import BaseModel, Field

from cluster.collections.erasures import ErasureRegister
from cluster.collections.live import all_faces
from cluster.collections.manifest import Collections
from cluster.collections.photos import UPLOAD, KeptPhotos
from cluster.collections.records import face_rows, face_schema
from cluster.collections.versions import Shadow, Versions
from cluster.indexing.job import run_partitions
from cluster.locks import collection_lock, exclusive
from cluster.models.faces import Face, FacePipeline
from cluster.models.recipes import recipe
from cluster.pipeline.errors import ImageError
from cluster.pipeline.quality import QualityFilter, reasons_to_skip
from cluster.raycluster import cluster_gpus, embedder_count, embedder_options, ensure_ray
from cluster.settings import Settings
from cluster.storage import ObjectNotFound, ObjectStore, StorageAuthError, StorageError, open_store

log = logging.getLogger("facegrid.upgrade")

# Photos per partition: the unit of retry and of resuming.
PARTITION_SIZE = 32
# A new face of the same photo is an old one when their boxes overlap at least this much (intersection over union).
SAME_FACE_IOU = 0.4

RECORD_COLUMNS = ["face_id", "source_key", "source_etag", "external_image_id", "bbox"]


class UpgradeRequest(BaseModel):
    """What an upgrade is asked to do: the CLI builds it, a submitted job receives it whole (as JSON)."""

    collection: str
    model: str | None = Field(default=None, max_length=64, description="The embedding model to move to")
    detector: str | None = Field(default=None, max_length=64, description="The detector of the recipe to move to")
    recipe: str | None = Field(default=None, max_length=64, description="The recipe to move to")
    missing: Literal["stop", "drop"] = "stop"
    partition_size: int = Field(default=PARTITION_SIZE, ge=1, le=10_000)


@dataclass
class Photo:
    """One source photo of the collection and the faces it holds now."""

    location: str
    etag: str
    external_image_id: str
    faces: list[tuple[str, list[float]]]  # (face id, box)


@dataclass
class UpgradePart:
    part: int
    photos: list[Photo]

    @property
    def name(self) -> str:
        """Named by the photos it holds: a killed driver's actor that finishes a part after a rerun started writes
        the same objects as the rerun's part of the same photos (a rerun's parts, slices of the sorted photos not
        yet settled, are the earlier run's unfinished ones), never a second copy of their faces."""
        digest = hashlib.sha256("\n".join(f"{p.location}\0{p.etag}" for p in self.photos).encode())
        return f"part-{digest.hexdigest()[:20]}"


@dataclass
class UpgradeResult:
    part: int
    photos: list[tuple[str, str]] = field(default_factory=list)  # (location, etag) of each photo this part settled
    faces: int = 0
    kept: int = 0
    found: list[dict[str, Any]] = field(default_factory=list)  # new faces: face id, source
    lost: list[dict[str, Any]] = field(default_factory=list)  # old faces not found again: face id, source
    gone: list[dict[str, Any]] = field(default_factory=list)  # photos not read: source, reason
    face_file: str | None = None
    seconds: float = 0.0


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_faces(old: list[tuple[str, list[float]]], new: list[list[float]]) -> dict[int, str]:
    """New face index -> old face id, greedily by the largest overlap first, each at most once."""
    pairs = sorted(
        ((iou(box, found), o, n) for o, (_, box) in enumerate(old) for n, found in enumerate(new)), reverse=True
    )
    matched: dict[int, str] = {}
    used: set[int] = set()
    for overlap, o, n in pairs:
        if overlap < SAME_FACE_IOU:
            break
        if o not in used and n not in matched:
            matched[n] = old[o][0]
            used.add(o)
    return matched


class UpgradePartition:
    """Ray actor: the new recipe's pipeline, loaded once; one partition of photos per call."""

    def __init__(self, settings: Settings, shadow: Shadow, collection: str) -> None:
        self.settings = settings
        self.shadow = shadow
        self.collection = collection
        self.store = open_store(settings.store, settings)
        self.pipeline = FacePipeline(settings, recipe=recipe(shadow.recipe))
        self.photos = KeptPhotos(self.store, collection)
        self.sources: dict[str, ObjectStore] = {}

    def read(self, photo: Photo) -> bytes:
        """The photo's bytes as they were indexed; StorageError naming why not (gone, changed, never kept)."""
        if photo.location.startswith(UPLOAD):
            try:
                blob = self.photos.get(photo.location[len(UPLOAD) :])
            except ObjectNotFound as exc:
                raise StorageError("its photo was not kept (the collection keeps no uploads, or it is erased)") from exc
            return blob
        parent, _, name = photo.location.rpartition("/")
        if parent not in self.sources:
            self.sources[parent] = open_store(parent, self.settings)
        source = self.sources[parent]
        if source.info(name).etag != photo.etag:
            raise StorageError("the object changed since it was indexed")
        return source.get(name)

    def __call__(self, part: UpgradePart) -> UpgradeResult:
        began = time.perf_counter()
        result = UpgradeResult(part.part)
        readable: list[Photo] = []
        blobs: list[bytes] = []
        for photo in part.photos:
            try:
                blobs.append(self.read(photo))
                readable.append(photo)
            except StorageAuthError:
                raise  # not the photo's fault: the job stops and resumes once fixed
            except (StorageError, ObjectNotFound) as exc:
                result.gone.append({"source": photo.location, "reason": str(exc)[:300]})
                if self.shadow.missing == "drop":
                    result.photos.append((photo.location, photo.etag))
        rows: list[dict[str, Any]] = []
        for photo, out in zip(readable, self.pipeline(blobs, None, QualityFilter.NONE), strict=True):
            result.photos.append((photo.location, photo.etag))
            if isinstance(out, ImageError):
                result.gone.append({"source": photo.location, "reason": f"{out.reason}: {out.message}"[:300]})
                continue
            rows += self._rows(photo, out.faces, result)
        # Under the collection's lock, with the register read again: an erasure since this actor started either
        # finished (its faces are left out here) or has not listed the shadow's records yet (it will see these).
        with collection_lock(self.store, self.collection):
            erased = ErasureRegister(self.store, self.collection).erased_ids()
            rows = [row for row in rows if row["face_id"] not in erased]
            result.faces = len(rows)
            if rows:
                result.face_file = f"{self.shadow.folder}/{part.name}.parquet"
                table = pa.Table.from_pylist(rows, face_schema(len(rows[0]["embedding"])))
                self.store.put_parquet(result.face_file, table)
            result.seconds = time.perf_counter() - began
            # The result last: its presence says the part is done, records written.
            self.store.put(f"{self.shadow.folder}/{part.name}.json", json.dumps(asdict(result)).encode())
        return result

    def _rows(self, photo: Photo, faces: list[Face], result: UpgradeResult) -> list[dict[str, Any]]:
        matched = match_faces(photo.faces, [np.asarray(f.bbox, dtype=float).tolist() for f in faces])
        # Ids of faces new to this recipe: from the photo and the recipe, never one an old face holds.
        rows = face_rows(
            self.collection,
            f"{photo.location}\0{self.shadow.recipe}",
            photo.etag,
            photo.location,
            photo.external_image_id,
            faces,
            f"upgrade-{self.shadow.upgrade_id}",
        )
        kept: list[dict[str, Any]] = []
        for index, (row, face) in enumerate(zip(rows, faces, strict=True)):
            if index in matched:
                row["face_id"] = matched[index]
                row["faiss_id"] = int(matched[index], 16)
                result.kept += 1
            elif reasons_to_skip(face.quality, QualityFilter.LOW):
                continue  # a face no add would have kept: not brought in by a model change
            else:
                result.found.append({"face_id": row["face_id"], "source": photo.location})
            kept.append(row)
        still = set(matched.values())
        result.lost += [{"face_id": f, "source": photo.location} for f, _ in photo.faces if f not in still]
        return kept


def photos_of(collections: Collections, name: str) -> list[Photo]:
    """Every photo the collection holds faces of now (records and live log, erased faces left out), by location."""
    manifest = collections.get(name)
    table = all_faces(collections, manifest, RECORD_COLUMNS)
    by_source: dict[tuple[str, str], Photo] = {}
    for face_id, location, etag, external, box in zip(
        *(table.column(c).to_pylist() for c in RECORD_COLUMNS), strict=True
    ):
        photo = by_source.setdefault((location, etag), Photo(location, etag, external, []))
        photo.faces.append((face_id, [float(v) for v in box]))
    return [by_source[k] for k in sorted(by_source)]


def _parts(photos: list[Photo], size: int, first: int) -> Iterator[UpgradePart]:
    """Slices of `size` of the photos (sorted by location): the same slices in a rerun, less the finished ones."""
    for start in range(0, len(photos), size):
        yield UpgradePart(first + start // size, photos[start : start + size])


def run_upgrade_job(
    settings: Settings, shadow: Shadow, partition_size: int = PARTITION_SIZE, on_part: Any = None
) -> dict[str, Any]:
    """Embed every photo of the collection that no finished part of this upgrade settled yet, then write the
    shadow's summary. One upgrade of a collection runs at a time (a lock); a second waits for the first."""
    started = time.perf_counter()
    store = open_store(settings.store, settings)
    settings = settings.model_copy(update={"store": store.uri})
    collections = Collections(store)
    versions = Versions(store, shadow.collection)
    with exclusive(store, f"upgrade-{shadow.collection}"):
        results = versions.results(shadow)
        settled = {tuple(p) for r in results for p in r["photos"]}
        pending = [p for p in photos_of(collections, shadow.collection) if (p.location, p.etag) not in settled]
        first = max((r["part"] for r in results), default=-1) + 1
        if pending:
            ensure_ray()
            gpus = cluster_gpus()
            runtime = settings.runtime.model_copy(update={"intra_op_threads": 1})
            remote = ray.remote(UpgradePartition).options(**embedder_options(gpus))
            actor_settings = settings.model_copy(update={"runtime": runtime})
            actors: list[Any] = [
                remote.remote(actor_settings, shadow, shadow.collection) for _ in range(embedder_count(gpus))
            ]
            try:
                for done in run_partitions(actors, _parts(pending, partition_size, first)):
                    if on_part:
                        on_part(done)
            finally:
                for actor in actors:
                    ray.kill(actor)
        summary = versions.summarize(shadow, time.perf_counter() - started, len(pending))
    log.info("upgrade %s of %s: %s", shadow.upgrade_id, shadow.collection, {k: summary[k] for k in ("faces", "kept")})
    return summary


def upgrade_id(collection: str, recipe_name: str, from_version: int) -> str:
    return hashlib.sha256(f"{collection}\0{recipe_name}\0{from_version}".encode()).hexdigest()[:12]
