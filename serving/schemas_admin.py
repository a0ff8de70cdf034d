"""The typed boundary of administration: a collection's calibration and per-search promise, API keys, the audit
log's pages, checks and repairs, and the public transparency report."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cluster.keys.access import Role
from cluster.models.registry import EMBEDDERS
from serving.schemas import NAME_RULE, SAFE_TEXT, Body


class AuditProblem(BaseModel):
    segment: str = Field(description="The segment (or HEAD.json, or the end of the log) where the damage is")
    line: int
    seq: int | None
    problem: str


class AuditCheck(BaseModel):
    ok: bool
    records: int | None = Field(default=None, description="Records verified, when the whole chain is sound")
    head: str | None = None
    records_verified: int | None = Field(default=None, description="Sound records before the first damage")
    first_bad_record: AuditProblem | None = None


class AuditRepair(BaseModel):
    repaired: bool
    records: int | None = Field(default=None, description="The chain verified: nothing was done")
    problem: AuditProblem | None = None
    anchored_seq: int | None = Field(default=None, description="The last verified record, which the chain goes on from")
    anchored_hash: str | None = None
    moved_to: str | None = Field(default=None, description="Where the damaged part was kept, in the store")
    moved: list[str] = []


class AuditPage(BaseModel):
    records: list[dict[str, Any]]
    total: int
    truncated: bool


class KeyInfo(BaseModel):
    """An API key as shown: never its secret or the secret's hash."""

    key_id: str
    role: str
    collections: list[str]
    label: str
    created_at: str
    revoked_at: str | None


class KeyCreated(KeyInfo):
    token: str = Field(description="Shown once, now; only its sha256 is stored")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class CreateKey(Body):
    role: str = Field(description="admin, indexer, searcher or auditor", json_schema_extra={"enum": list(Role)})
    collections: list[str] | None = Field(
        default=None,
        max_length=1024,
        description="Grant only these collections (default: all)",
        json_schema_extra={"items": {"type": "string", **NAME_RULE}},
    )
    label: str = Field(default="", json_schema_extra=SAFE_TEXT)


class TransparencyReport(BaseModel):
    """Public counts from the audit log: never case ids, faces or keys."""

    records: int
    period: dict[str, str | None] = Field(description="`from` and `to`: the first and last record's time")
    searches: int
    searches_by_purpose: dict[str, int]
    searches_by_role: dict[str, int]
    searches_by_month: dict[str, int]
    refused_searches: int
    refused_by_reason: dict[str, int]
    failed_searches: int
    faces_deleted: int
    deletion_requests: int
    index_jobs: int
    exports: int
    key_changes: int
    head: dict[str, Any] = Field(description="The chain's latest checkpoint: seq, hash and time of its last record")
    reviews: int = Field(description="Faces a reviewer decided on (the latest decision per face and search)")
    decisions: dict[str, int]
    searches_with_candidates: int
    searches_reviewed: int = Field(description="Searches whose every returned face was decided")
    top_candidates_decided: int
    top_candidates_rejected: int = Field(description="Top candidates a reviewer marked `not a match`")
    promises: dict[str, dict[str, Any]] = Field(
        default={},
        description="Per collection: its per-search promise (expected strangers above the threshold in one search), "
        "the searches answered under it, and those refused because its calibration could not keep it at that size",
    )


# A calibration file's shape (`facegrid eval --save-calibration`); that its rates fall as similarity rises is
# checked on arrival (422 INVALID_CALIBRATION), and that it was made for the collection's model (409).
CALIBRATION: dict[str, Any] = {
    "type": "object",
    "required": ["table", "impostor_comparisons"],
    "properties": {
        "table": {
            "type": "array",
            "minItems": 2,
            "description": "[false match rate, similarity] rows, rates falling as similarity rises",
            "items": {
                "type": "array",
                "prefixItems": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    {"type": "number", "minimum": -1, "maximum": 1},
                ],
                "minItems": 2,
                "maxItems": 2,
            },
        },
        "impostor_comparisons": {"type": "integer", "minimum": 1},
        "model_id": {"type": "string", "enum": list(EMBEDDERS)},
        "tail": {
            "type": "object",
            "required": ["table"],
            "description": "The fitted tail (cluster/models/tail.py): what a per-search promise reads",
            "properties": {
                "table": {
                    "type": "array",
                    "minItems": 2,
                    "description": "[rate, similarity, its upper bound] rows, rates falling as similarity rises",
                    "items": {
                        "type": "array",
                        "prefixItems": [
                            {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                            {"type": "number", "minimum": -1, "maximum": 1},
                            {"type": "number", "minimum": -1, "maximum": 1},
                        ],
                        "minItems": 3,
                        "maxItems": 3,
                    },
                }
            },
        },
    },
}


class CalibrationChange(BaseModel):
    """A calibration applied to one collection: its floor before and after."""

    collection: str
    version: int
    max_false_match_rate: float
    old_floor_similarity: float
    new_floor_similarity: float
    old_calibration_sha256: str
    new_calibration_sha256: str
    dataset: str | None


class Promise(Body):
    max_false_candidates_per_search: float = Field(
        gt=0, le=1, description="Strangers expected above the threshold in one search, whatever the collection's size"
    )


class PromiseChange(BaseModel):
    """A per-search promise set for one collection: before and after, and what the new one holds for."""

    collection: str
    version: int
    old_max_false_candidates_per_search: float | None
    new_max_false_candidates_per_search: float
    faces_now: int = Field(description="Faces a search compares with now, live included")
    similarity_now: float | None = Field(description="The threshold the promise implies at that size (null: too big)")
    largest_collection: int = Field(description="The most faces the pinned calibration keeps the promise for")
