"""What one partition of an index job does (read -> faces -> write Parquet), usable in-process or as a Ray actor."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from cluster import metrics
from cluster.collections.erasures import ErasureRegister
from cluster.collections.records import ERROR_SCHEMA, face_rows, face_schema
from cluster.models.faces import FacePipeline, ImageFaces
from cluster.models.recipes import recipe
from cluster.pipeline.errors import ImageError, Reason
from cluster.pipeline.quality import QualityFilter
from cluster.settings import Settings
from cluster.storage import ObjectInfo, StorageAuthError, StorageError, open_store

# Objects per partition: a partition is the unit of retry and of checkpointing, a few seconds of work on one core.
PARTITION_SIZE = 64
# Images decoded and embedded together: big enough to batch the ResNet, small enough to bound memory per actor.
READ_BATCH = 16
# Reads in a row that failed after the store's own retries (seconds each), past which an embedder stops asking
# the source for a while: a long outage ends the job in seconds with every object not read recorded as such.
SOURCE_DOWN_AFTER = 3
SOURCE_DOWN_FOR_S = 30.0


class IndexRequest(BaseModel):
    """What an index job is asked to do: the CLI builds it, a submitted job receives it whole (as JSON), and each
    partition actor holds it inside its IndexJobSpec."""

    collection: str
    source: str = Field(description="s3://bucket/prefix or a local folder")
    shards: int = Field(default=4, ge=1, le=1024, description="Shard count, when the collection is created by this job")
    max_faces: int | None = Field(default=None, ge=1, description="Index at most N faces per image (largest first)")
    quality_filter: QualityFilter = QualityFilter.LOW
    # "key": the object key relative to the source; "basename": its file name.
    external_image_id: Literal["key", "basename"] = "key"
    model: str | None = Field(default=None, description="Embedding model when the collection is created by this job")
    recipe: str | None = Field(default=None, description="Recipe when the collection is created by this job")
    partition_size: int = Field(default=PARTITION_SIZE, ge=1)


class IndexJobSpec(BaseModel):
    """The request as resolved for the actors: the job's id, absolute locations, the collection's pinned model and
    recipe."""

    request: IndexRequest
    job_id: str
    store_uri: str
    source_uri: str
    model_id: str
    recipe: str


@dataclass
class Partition:
    part: int
    objects: list[ObjectInfo]


@dataclass
class PartitionResult:
    part: int
    images: int = 0
    faces: int = 0
    errors: int = 0
    skipped_faces: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    face_file: str | None = None
    error_file: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "reasons": dict(self.reasons)}


def external_image_id(key: str, mode: str) -> str:
    return key.rsplit("/", 1)[-1] if mode == "basename" else key


def source_location(source_uri: str, key: str) -> str:
    """Where a face came from, as stored in its record: the source's URI joined with the object key."""
    return f"{source_uri.rstrip('/')}/{key}"


class IndexPartition:
    """Stage class for Ray: loads models once in __init__, processes one partition per call."""

    def __init__(self, settings: Settings, spec: IndexJobSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.pipeline = FacePipeline(settings, recipe=recipe(spec.recipe))
        self.source = open_store(spec.source_uri, settings)
        self.store = open_store(spec.store_uri, settings)
        # Erased faces stay erased: a photo indexed again by this job does not bring them back.
        self.erased = ErasureRegister(self.store, spec.request.collection).erased_ids()
        self.unanswered = 0  # reads in a row the source failed
        self.source_down_until = 0.0

    def location(self, key: str) -> str:
        return source_location(self.source.uri, key)

    def __call__(self, partition: Partition) -> PartitionResult:
        result = PartitionResult(partition.part)
        faces: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        read_s = 0.0
        for start in range(0, len(partition.objects), READ_BATCH):
            batch = partition.objects[start : start + READ_BATCH]
            blobs: list[bytes] = []
            readable: list[ObjectInfo] = []
            began = time.perf_counter()
            for obj in batch:
                if time.monotonic() < self.source_down_until:
                    # The source stopped answering: objects are not worth each one's retries for a while.
                    errors.append(self._error(obj, Reason.READ_FAILED, "not tried: the source stopped answering"))
                    continue
                try:
                    blobs.append(self.source.get(obj.key))
                    readable.append(obj)
                    self.unanswered = 0
                except StorageAuthError:
                    raise  # not this object's fault: the whole job must stop, and resumes once fixed
                except StorageError as exc:
                    # Recorded and counted, and read by the next run of the job (cluster/indexing/job.py).
                    errors.append(self._error(obj, Reason.READ_FAILED, str(exc)))
                    self.unanswered += 1
                    if self.unanswered >= SOURCE_DOWN_AFTER:
                        self.source_down_until = time.monotonic() + SOURCE_DOWN_FOR_S
            read_s += time.perf_counter() - began
            outputs = self.pipeline(blobs, self.spec.request.max_faces, self.spec.request.quality_filter)
            for obj, out in zip(readable, outputs, strict=True):
                if isinstance(out, ImageError):
                    errors.append(self._error(obj, out.reason, out.message))
                    continue
                faces.extend(self._faces(obj, out))
                result.skipped_faces += len(out.skipped)
                if not out.faces:
                    reasons = sorted({r for f in out.skipped for r in f.skip_reasons})
                    message = f"faces skipped: {', '.join(reasons)}" if reasons else "no face found"
                    errors.append(self._error(obj, Reason.NO_FACE, message))
        result.images = len(partition.objects)
        result.faces = len(faces)
        result.errors = len(errors)
        result.reasons = Counter(e["reason"] for e in errors)
        base = f"collections/{self.spec.request.collection}"
        name = f"{self.spec.job_id}-{partition.part:05d}.parquet"
        began = time.perf_counter()
        if faces:
            result.face_file = f"{base}/faces/{name}"
            schema = face_schema(len(faces[0]["embedding"]))  # the model's dimension
            self.store.put_parquet(result.face_file, pa.Table.from_pylist(faces, schema))
        if errors:
            result.error_file = f"{base}/errors/{name}"
            self.store.put_parquet(result.error_file, pa.Table.from_pylist(errors, ERROR_SCHEMA))
        result.seconds = {"read": read_s, **dict(self.pipeline.times.seconds), "write": time.perf_counter() - began}
        self.pipeline.times.seconds.clear()
        metrics.partition_done(
            self.spec.request.collection, result.images, result.faces, result.reasons, result.seconds
        )
        return result

    def _faces(self, obj: ObjectInfo, out: ImageFaces) -> list[dict[str, Any]]:
        request = self.spec.request
        external = external_image_id(obj.key, request.external_image_id)
        rows = face_rows(
            request.collection, obj.key, obj.etag, self.location(obj.key), external, out.faces, self.spec.job_id
        )
        return [r for r in rows if r["face_id"] not in self.erased]

    def _error(self, obj: ObjectInfo, reason: str, message: str) -> dict[str, Any]:
        return {
            "source_key": self.location(obj.key),
            "source_etag": obj.etag,
            "reason": str(reason),
            "message": message[:500],
            "job_id": self.spec.job_id,
            "at": datetime.now(UTC),
        }
