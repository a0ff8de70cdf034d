"""The API's typed boundary: every request body and response, and the error envelope, as pydantic models."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cluster.collections.index_spec import SPEC_PATTERN
from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES, DEFAULT_SHARDS, MAX_REPLICAS, NAME
from cluster.models.recipes import ALIASES, RECIPES
from cluster.models.registry import EMBEDDERS, MODELS
from cluster.text import SAFE_NON_BLANK_PATTERN, SAFE_TEXT_PATTERN
from serving.rules import MAX_CASE_ID, MAX_EXTERNAL_ID, MAX_FACES_INDEXED, MAX_IDS, MAX_PURPOSE

# Rules the server checks itself (with its own typed refusals), stated in the schema for clients and tools.
NAME_RULE: dict[str, Any] = {"pattern": f"^{NAME.pattern}$", "maxLength": 64}
SAFE_TEXT: dict[str, Any] = {"pattern": SAFE_TEXT_PATTERN}
# Embeddings are unit vectors; any scale is accepted up to where its float32 norm would overflow.
MAX_VECTOR_VALUE = 1e15
# A vector's widths: each model's, and each fused recipe's joined one.
DIMS = sorted(
    {spec.embedding.dim for spec in MODELS.values() if spec.embedding is not None} | {r.dim for r in RECIPES.values()}
)


def either(*fields: str) -> dict[str, Any]:
    """At least one of these list fields has an item."""
    return {"anyOf": [{"required": [f], "properties": {f: {"minItems": 1}}} for f in fields]}


RATE = (
    "Per comparison, from the collection's pinned calibration, with the floor's safety margin (twice the rate "
    "measured among the calibration's impostor comparisons)"
)
BOUND = (
    "True where fewer than 50 of the calibration's impostor comparisons scored this high: the rate is then at most "
    "estimated_false_match_rate, which is the smallest the calibration can tell apart, not an estimate"
)


class Body(BaseModel):
    """A request body: no NaN or infinity in any number (they passed range checks and reached the audit as
    tokens strict JSON parsers reject), no string longer than a kilobyte, and each value of its own JSON type
    (lax parsing took `true` for a shard count of 1)."""

    model_config = ConfigDict(allow_inf_nan=False, str_max_length=1024, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON has one number type: 6.0 is the integer 6 (JSON Schema agrees), which strict parsing refuses."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, float) and value.is_integer() and field is not None and _takes_int(field.annotation):
            return int(value)
        return value


def _takes_int(annotation: Any) -> bool:
    """An integer field (or an optional one), not one that takes floats too."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [get_args(m)[0] if get_origin(m) is Annotated else m for m in get_args(annotation)]
        return int in members and float not in members
    return annotation is int


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable: NO_FACE_IN_PROBE, THRESHOLD_BELOW_FLOOR, ...")
    message: str = Field(description="For people")
    model_config = {"extra": "allow"}  # details of some errors, e.g. the floor of THRESHOLD_BELOW_FLOOR


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class FaceDetail(BaseModel):
    """A face found in an uploaded photo."""

    bbox: list[float] = Field(description="x1, y1, x2, y2 in pixels of the upright image")
    landmarks: list[list[float]] = Field(description="Eyes, nose, mouth corners: 5 (x, y) points")
    confidence: float
    quality: dict[str, float]
    skip_reasons: list[str] = Field(description="Why the face was not used; empty for a used face")


class Match(BaseModel):
    face_id: str
    external_image_id: str | None
    source: str | None = Field(description="The object the face was indexed from")
    bbox: list[float]
    similarity: float
    estimated_false_match_rate: float = Field(description=RATE)
    false_match_rate_is_bound: bool = Field(description=BOUND)
    expected_false_matches_in_collection: float
    shard: int


class Threshold(BaseModel):
    requested: float | str | None
    applied: float = Field(description="The strictest of the one requested, the floor and the promise's")
    floor: float = Field(description="The per-comparison floor: at most max_false_match_rate false matches each")
    max_false_match_rate: float
    max_false_candidates_per_search: float | None = Field(
        default=None, description="The collection's per-search promise (null: made before promises, floor only)"
    )
    faces_searched: int | None = Field(default=None, description="Faces this search compared with, live included")
    promise_similarity: float | None = Field(
        default=None, description="The similarity the promise implies at this size (an upper confidence bound)"
    )
    expected_false_candidates: float | None = Field(
        default=None, description="Strangers expected above the applied threshold in this search (at most the promise)"
    )


class SearchedFace(BaseModel):
    searched_face: FaceDetail
    matches: list[Match]


class VectorAnswer(BaseModel):
    collection: str
    model_id: str
    matches: list[Match]
    threshold: Threshold
    collection_faces: int
    partial: bool = Field(description="True when a shard did not answer in time: the answer may miss matches")
    missing_shards: list[int]
    purpose: str | None
    case_id: str | None
    notice: str


class SearchAnswer(VectorAnswer):
    searched_face: FaceDetail
    other_faces: list[SearchedFace] = Field(description="With max_faces > 1: the probe's other faces, searched")
    unsearched_faces: list[FaceDetail]


class ComparedFace(BaseModel):
    face: FaceDetail
    similarity: float
    estimated_false_match_rate: float = Field(description=RATE)
    false_match_rate_is_bound: bool = Field(description=BOUND)
    matched: bool = Field(description="Similarity at or above the applied threshold")


class CompareAnswer(BaseModel):
    model_id: str
    similarity: float = Field(description="The most similar target face's")
    estimated_false_match_rate: float = Field(description="The most similar target face's; " + RATE)
    false_match_rate_is_bound: bool
    threshold: Threshold = Field(description="The model's default floor (no collection), or a stricter threshold")
    source_face: FaceDetail = Field(description="The source photo's largest face: the one compared")
    face_matches: list[ComparedFace] = Field(description="Target faces at or above the threshold, most similar first")
    unmatched_faces: list[ComparedFace] = Field(description="Target faces below it, most similar first")
    uncompared_faces: list[FaceDetail] = Field(description="Target faces found but not usable, with their reasons")
    purpose: str | None
    case_id: str | None
    notice: str


class DetectAnswer(BaseModel):
    width: int
    height: int
    faces: list[FaceDetail]


class CollectionInfo(BaseModel):
    """A collection as published (its record files left out)."""

    name: str
    model_id: str
    model_sha256: str
    dim: int
    metric: str
    index_spec: str
    built_spec: str | None
    shard_count: int
    shard_set: int
    replicas: int
    max_false_match_rate: float
    max_false_candidates_per_search: float | None = Field(
        description="The per-search promise: strangers expected above the threshold in one search (null: none)"
    )
    calibration_sha256: str | None = Field(description="The pinned calibration; null: the model's, not pinned")
    recipe: str | None = Field(default=None, description="null: made before recipes (its model's plain one)")
    keep_photos: bool = Field(default=True, description="Photos added by upload are kept in the store")
    version: int
    created_at: str
    updated_at: str | None
    face_count: int
    shards: dict[str, str]
    extended_from: int | None
    trained: dict[str, Any] | None


class CollectionDescription(CollectionInfo):
    user_count: int
    live_face_count: int = Field(
        description="Faces added since the last publish, searched already (face_count excludes them)"
    )
    threshold_floor_similarity: float
    calibration: dict[str, Any] = Field(description="Where the floor and the per-match rates come from")
    errors_by_reason: dict[str, int]


class CollectionList(BaseModel):
    collections: list[str]


class CollectionDeleted(BaseModel):
    collection: str
    deleted_objects: int


class FaceRecord(BaseModel):
    face_id: str
    external_image_id: str | None
    source: str | None = Field(description="The object the face was indexed from: the source's URI and its key")
    source_etag: str | None
    bbox: list[float]
    confidence: float
    quality: dict[str, float]
    indexed_at: str | None


class FacePage(BaseModel):
    collection: str
    total: int
    offset: int
    limit: int
    faces: list[FaceRecord]
    next_offset: int | None


class FacesDeleted(BaseModel):
    deleted_faces: list[str] = Field(description="Erased by this request")
    already_erased: list[str] = Field(default=[], description="Asked for, and erased before (by another request)")
    unknown_face_ids: list[str] = Field(description="Asked for, and never in the collection")
    collection_faces: int = Field(description="Faces the collection holds now, published and live")


ShardCount = Annotated[int, Field(ge=1, le=1024)]
SHARDS_AUTO = "auto: a shard per node of the cluster, more where a node's share passes 5 million faces"


class CreateCollection(Body):
    name: str = Field(json_schema_extra=NAME_RULE)
    shards: ShardCount | Literal["auto"] = Field(default=DEFAULT_SHARDS, description=f"A count, or {SHARDS_AUTO}")
    max_false_match_rate: float = Field(default=1e-5, gt=0, lt=1)
    max_false_candidates_per_search: float = Field(
        default=DEFAULT_MAX_FALSE_CANDIDATES,
        gt=0,
        le=1,
        description="Strangers expected above the threshold in one search, whatever the collection's size",
    )
    index_spec: str = Field(default="auto", json_schema_extra={"pattern": SPEC_PATTERN})
    model: str | None = Field(
        default=None,
        description="Embedding model: sface-2021dec (default) or dlib-resnet-v1",
        json_schema_extra={"enum": [*EMBEDDERS, None]},
    )
    recipe: str | None = Field(
        default=None,
        description="Detector, model, mirroring and precision by name (default: the model's plain recipe, or the "
        "default recipe)",
        json_schema_extra={"enum": [*RECIPES, *ALIASES, None]},
    )
    replicas: int | None = Field(
        default=None, ge=1, le=MAX_REPLICAS, description="Actors per shard, on different nodes (default: the server's)"
    )
    keep_photos: bool = Field(
        default=True,
        description="Keep photos added by upload (for review's crops and model upgrades); false is recorded in the "
        "audit log",
    )


class Replicas(Body):
    replicas: int = Field(ge=1, le=MAX_REPLICAS, description="Actors per shard, on different nodes")


class RebuildCollection(Body):
    shards: ShardCount | Literal["auto"] | None = Field(default=None, description=f"A count, or {SHARDS_AUTO} (now)")
    index_spec: str | None = Field(default=None, json_schema_extra={"pattern": SPEC_PATTERN})
    retrain: bool = False


class UpgradeCollection(Body):
    """The recipe to move a collection to: named, or by model (its plain recipe) and optionally detector."""

    model: str | None = Field(default=None, json_schema_extra={"enum": [*EMBEDDERS, None]})
    detector: str | None = Field(
        default=None, json_schema_extra={"enum": [*sorted({r.detector for r in RECIPES.values()}), None]}
    )
    recipe: str | None = Field(default=None, json_schema_extra={"enum": [*RECIPES, *ALIASES, None]})
    missing: Literal["stop", "drop"] = "stop"
    partition_size: int = Field(default=32, ge=1, le=10_000)


class VersionSwitch(Body):
    keep_days: float | None = Field(default=None, ge=0, le=3650, description="Keep the version replaced this long")
    drop_added: bool = Field(default=False, description="Rollback: leave out photos added since the cut-over")


class SearchOptions(Body):
    """What a JSON search states besides its probe (a vector, or an indexed face)."""

    purpose: str | None = Field(default=None, max_length=MAX_PURPOSE)
    case_id: str | None = Field(default=None, max_length=MAX_CASE_ID)
    threshold: float | None = None
    max_results: int = 10
    nprobe: int | None = None
    ef_search: int | None = None


class VectorSearch(SearchOptions):
    vector: list[Annotated[float, Field(ge=-MAX_VECTOR_VALUE, le=MAX_VECTOR_VALUE)]] = Field(
        max_length=4096,
        description="As many numbers as the collection's model gives (a vector of another length: MODEL_MISMATCH)",
        json_schema_extra={"minItems": DIMS[0], "maxItems": DIMS[-1], "contains": {"not": {"const": 0}}},
    )
    model_id: str | None = Field(
        default=None, description="The model that made the vector; refused unless the collection's"
    )


class DeleteFaces(Body):
    """Faces by id, all faces of photos by external image id, or both."""

    face_ids: list[str] = Field(default=[], max_length=MAX_IDS)
    external_image_ids: list[str] = Field(default=[], max_length=MAX_IDS)
    model_config = ConfigDict(json_schema_extra=either("face_ids", "external_image_ids"))


class IndexedFace(BaseModel):
    face_id: str
    external_image_id: str
    bbox: list[float]
    landmarks: list[list[float]]
    confidence: float
    quality: dict[str, float]


class UnindexedFace(BaseModel):
    reasons: list[str] = Field(description="Rekognition's reasons (EXCEEDS_MAX_FACES, LOW_SHARPNESS, ...), or ERASED")
    face: FaceDetail


class IndexFacesAnswer(BaseModel):
    collection: str
    model_id: str
    recipe: str = Field(description="The collection's recipe: what made these faces' vectors")
    external_image_id: str
    image_sha256: str
    source: str = Field(description="Where its records say it came from (an upload, or the ingest source's URI)")
    width: int = Field(description="Of the upright image, in pixels")
    height: int
    face_records: list[IndexedFace]
    unindexed_faces: list[UnindexedFace]


class Readmitted(BaseModel):
    collection: str
    readmitted: list[dict[str, Any]] = Field(description="The lifted erasures: face id, source, etag, when, by whom")


class Readmit(Body):
    face_ids: list[str] = Field(default=[], max_length=MAX_IDS)
    sources: list[str] = Field(
        default=[], max_length=MAX_IDS, description="Source objects (as face records name them): all their faces"
    )
    model_config = ConfigDict(json_schema_extra=either("face_ids", "sources"))


class AddFaces(Body):
    external_image_id: str | None = Field(
        default=None,
        description="Your id for the photo (default: its sha256)",
        json_schema_extra={"pattern": SAFE_NON_BLANK_PATTERN, "maxLength": MAX_EXTERNAL_ID},
    )
    max_faces: int | None = Field(
        default=None,
        description="Index at most N faces, largest first",
        json_schema_extra={"minimum": 1, "maximum": MAX_FACES_INDEXED},
    )
    quality_filter: Literal["NONE", "LOW", "MEDIUM", "HIGH"] = "LOW"


class AddFacesUpload(AddFaces):
    """Multipart form: the photo as the file field `image`, and these fields."""

    image: bytes | None = Field(default=None, description="The photo (a file field)")
    model_config = ConfigDict(json_schema_extra={"required": ["image"]}, strict=False)  # form fields are text


class AddFacesFromObject(AddFaces):
    object_key: str = Field(description="An object of the server's ingest source (FACEGRID_SERVING__INGEST_SOURCE)")
