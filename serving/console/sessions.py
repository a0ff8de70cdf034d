"""Console sessions: the browser holds an opaque id; the key it stands for and its form token stay on the server
(in the store, so that every API replica knows them). A session ends at sign-out, when its key is revoked, or
SESSION_TTL_S after it began."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass

from cluster.storage import ObjectNotFound, ObjectStore

PREFIX = "console/sessions/"
# A working day: long enough for a review shift, short enough that a forgotten browser does not stay signed in.
SESSION_TTL_S = 12 * 3600


@dataclass(frozen=True)
class Session:
    key_id: str
    csrf: str  # sent back in every state-changing form of this session
    expires: float


class Sessions:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _key(session_id: str) -> str:
        # Named by a digest: whoever can list the store still cannot present a session id.
        return f"{PREFIX}{hashlib.sha256(session_id.encode()).hexdigest()}.json"

    def start(self, key_id: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(key_id, secrets.token_urlsafe(32), time.time() + SESSION_TTL_S)
        self.store.put(self._key(session_id), json.dumps(asdict(session)).encode())
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        try:
            session = Session(**json.loads(self.store.get(self._key(session_id))))
        except (ObjectNotFound, ValueError, TypeError):
            return None
        if session.expires < time.time():
            self.end(session_id)
            return None
        return session

    def end(self, session_id: str) -> None:
        self.store.delete(self._key(session_id))
