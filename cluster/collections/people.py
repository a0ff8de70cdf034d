"""People in a collection (Rekognition's users): a user id and the faces associated with it, a face with at most
one user. Kept as the erasure register is: one small JSON object per act (create, delete, associate,
disassociate) under collections/<name>/users/, replayed in the order of their keys. Acts are never rewritten, so
every server reads the same state once it lists the same acts, and a reader fetches only acts it has not seen.

Two acts that conflict (one face associated with two users by two servers at once) are settled by that order:
the first wins and the later act's faces stay with the first user, which any read after both shows.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cluster.collections.manifest import Collections
from cluster.errors import FacegridError, InvalidRequest
from cluster.storage import ObjectNotFound, ObjectStore

USER_ID = re.compile(r"[A-Za-z0-9_.\-:]{1,128}")  # fullmatch: a $ would allow a trailing newline
MAX_FACES_PER_ACT = 100
MAX_FACES_PER_USER = 10_000


class UserNotFound(FacegridError):
    code = "USER_NOT_FOUND"
    status = 404


class UserExists(FacegridError):
    code = "USER_EXISTS"
    status = 409


def check_user_id(user_id: str) -> str:
    if not USER_ID.fullmatch(user_id):
        raise InvalidRequest(f"user id {user_id[:140]!r} must be 1-128 letters, digits, '_', '.', '-' or ':'")
    return user_id


def check_face_ids(face_ids: list[str]) -> list[str]:
    if not 1 <= len(face_ids) <= MAX_FACES_PER_ACT:
        raise InvalidRequest(f"give 1-{MAX_FACES_PER_ACT} face ids, not {len(face_ids)}")
    return list(dict.fromkeys(face_ids))  # each once, in the order given


@dataclass
class User:
    user_id: str
    created_at: str
    created_by: str
    faces: list[str] = field(default_factory=list)  # in the order they were associated


@dataclass
class PeopleState:
    users: dict[str, User] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # face id -> user id

    def apply(self, act: dict[str, Any]) -> None:
        kind, user_id = act["act"], act["user_id"]
        user = self.users.get(user_id)
        if kind == "create" and user is None:
            self.users[user_id] = User(user_id, act["at"], act["by"])
        elif kind == "delete" and user is not None:
            for face_id in user.faces:
                self.owner.pop(face_id, None)
            del self.users[user_id]
        elif kind == "associate" and user is not None:
            for face_id in act["face_ids"]:
                if face_id not in self.owner and len(user.faces) < MAX_FACES_PER_USER:
                    self.owner[face_id] = user_id
                    user.faces.append(face_id)
        elif kind == "disassociate":
            for face_id in act["face_ids"]:
                held_by = self.owner.get(face_id)
                if held_by is not None and (held_by == user_id or user_id == "*"):
                    del self.owner[face_id]
                    self.users[held_by].faces.remove(face_id)


class People:
    """One collection's users, as its acts say. Thread-safe; acts read once are kept (they never change)."""

    def __init__(self, store: ObjectStore, collection: str) -> None:
        self.store = store
        self.prefix = f"{Collections.prefix(collection)}users/"
        self._acts: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def state(self) -> PeopleState:
        keys = sorted(i.key for i in self.store.list(self.prefix) if i.key.endswith(".json"))
        with self._lock:
            for key in keys:
                if key not in self._acts:
                    try:
                        self._acts[key] = json.loads(self.store.get(key))
                    except ObjectNotFound:  # removed with its collection meanwhile
                        continue
            acts = [self._acts[k] for k in keys if k in self._acts]
        state = PeopleState()
        for act in acts:
            state.apply(act)
        return state

    def write(self, act: str, user_id: str, by: str, face_ids: list[str] | None = None, **extra: Any) -> None:
        at = datetime.now(UTC)
        key = f"{self.prefix}{at:%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}-{act}.json"
        body = {"act": act, "at": at.isoformat(timespec="milliseconds"), "by": by, "user_id": user_id, **extra}
        if face_ids is not None:
            body["face_ids"] = face_ids
        self.store.put(key, json.dumps(body).encode())

    def user(self, user_id: str, state: PeopleState | None = None) -> User:
        found = (state or self.state()).users.get(user_id)
        if found is None:
            raise UserNotFound(f"user {user_id!r} does not exist in this collection")
        return found
