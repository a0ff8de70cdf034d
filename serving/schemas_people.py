"""The typed boundary of people (users) and of searching by a face id: requests and answers."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cluster.collections.people import USER_ID
from serving.schemas import RATE, Body, FaceDetail, Match, SearchOptions, Threshold, VectorAnswer


class FaceSearch(SearchOptions):
    """Search by an indexed face (the face id is in the route)."""


class FaceIdAnswer(VectorAnswer):
    searched_face_id: str = Field(description="The indexed face searched with; left out of its own matches")


class CreateUser(Body):
    user_id: str = Field(
        description="1-128 letters, digits, '_', '.', '-' or ':'", json_schema_extra={"pattern": f"^{USER_ID.pattern}$"}
    )


class UserInfo(BaseModel):
    user_id: str
    created_at: str
    created_by: str
    face_count: int
    face_ids: list[str]


class UserPage(BaseModel):
    collection: str
    total: int
    offset: int
    limit: int
    users: list[UserInfo]
    next_offset: int | None


class FaceIds(Body):
    face_ids: list[str] = Field(min_length=1, max_length=100, description="1-100 face ids")


class UnsuccessfulFace(BaseModel):
    face_id: str
    reason: str = Field(description="FACE_NOT_FOUND, ASSOCIATED_TO_A_DIFFERENT_USER or NOT_ASSOCIATED_TO_THIS_USER")
    user_id: str | None = Field(default=None, description="The user the face belongs to, when another one")


class AssociationChange(BaseModel):
    collection: str
    user_id: str
    changed_faces: list[str] = Field(description="Associated (or disassociated) by this request")
    unsuccessful: list[UnsuccessfulFace]
    user_faces: int = Field(description="The user's faces after this request")


class UserDeleted(BaseModel):
    collection: str
    user_id: str
    disassociated_faces: list[str]
    erased_faces: list[str] = Field(description="With erase_faces: the user's faces, really erased")


class UserMatch(BaseModel):
    user_id: str
    similarity: float = Field(description="The best of its faces' similarities")
    estimated_false_match_rate: float = Field(description="The best face's; " + RATE)
    false_match_rate_is_bound: bool
    user_false_match_rate_at_most: float = Field(
        description="A person of n faces is n comparisons: at most n times the best face's rate"
    )
    user_faces: int
    matched_faces: list[Match] = Field(description="The evidence: which of the user's faces matched, best first")


class UserSearchAnswer(BaseModel):
    collection: str
    model_id: str
    user_matches: list[UserMatch]
    threshold: Threshold
    searched_face: FaceDetail | None = Field(description="With an image: its largest face, the one searched")
    searched_face_id: str | None
    searched_user_id: str | None = Field(description="With a user id: every face of that user searched")
    collection_users: int
    partial: bool
    missing_shards: list[int]
    purpose: str | None
    case_id: str | None
    notice: str
