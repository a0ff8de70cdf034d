"""What every search and compare must say and stay within: purpose, case id, limits (the request's own checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.collections.index_spec import SearchKnobs
from cluster.errors import InvalidRequest, PurposeRefused
from cluster.text import check_text
from serving.rules import MAX_CASE_ID, MAX_FACE_INDEX, MAX_KNOB, MAX_PURPOSE
from serving.usecases.audited import as_json_number, clipped
from serving.usecases.context import Context


@dataclass(frozen=True)
class SearchRequest:
    """What a search asks, besides the probe: why, for which case, how strict, how many, how thorough."""

    purpose: str | None
    case_id: str | None
    threshold: float | None = None
    max_results: int = 10
    max_faces: int = 1
    knobs: SearchKnobs = field(default_factory=SearchKnobs)
    # The probe's face to search (0: the largest; faces are numbered largest first), instead of the first
    # `max_faces`: an investigator picks one face of a group photo.
    face_index: int | None = None

    def check(self, max_results: int) -> None:
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:  # NaN fails this too
            raise InvalidRequest("threshold must be a cosine similarity between -1 and 1")
        if not 1 <= self.max_results <= max_results:
            raise InvalidRequest(f"max_results must be between 1 and {max_results}")
        if self.max_faces < 1:
            raise InvalidRequest("max_faces must be at least 1")
        if self.face_index is not None and not 0 <= self.face_index <= MAX_FACE_INDEX:
            raise InvalidRequest(f"face_index must be between 0 and {MAX_FACE_INDEX}")
        for name, value in (("nprobe", self.knobs.nprobe), ("ef_search", self.knobs.ef_search)):
            if value is not None and not 1 <= value <= MAX_KNOB:
                raise InvalidRequest(f"{name} must be between 1 and {MAX_KNOB}")

    def audit_fields(self, probe_sha256: str) -> dict[str, Any]:
        return {
            "purpose": clipped(self.purpose, MAX_PURPOSE),
            "case_id": clipped(self.case_id, MAX_CASE_ID),
            "probe_sha256": probe_sha256,
            "threshold_requested": as_json_number(self.threshold),
            **({"face_index": self.face_index} if self.face_index is not None else {}),
        }


def check_purpose(ctx: Context, purpose: str | None, case_id: str | None) -> None:
    purposes = ctx.settings.serving.purposes
    if not purpose:
        raise PurposeRefused(f"a purpose is required; one of {purposes}")
    if purpose not in purposes:
        raise PurposeRefused(f"purpose {clipped(purpose, MAX_PURPOSE)!r} is not allowed here; one of {purposes}")
    if not case_id or not case_id.strip():
        raise PurposeRefused("a case_id is required: the reference of the case this search serves")
    if len(case_id) > MAX_CASE_ID:
        raise InvalidRequest(f"case_id is {len(case_id)} characters; at most {MAX_CASE_ID}")
    check_text(case_id, "case_id")
