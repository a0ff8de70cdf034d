"""API keys (stored only as hashes), roles with per-collection grants, and what each role may do."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel

from cluster.errors import FacegridError, InvalidRequest
from cluster.storage import ObjectNotFound, ObjectStore

KEYS_OBJECT = "access/keys.json"
KEY_CACHE_S = 1.0
TOKEN_PREFIX = "fgk"


class Role(StrEnum):
    ADMIN = "admin"  # keys, collections, everything else
    INDEXER = "indexer"  # collection contents: index, list, delete faces
    SEARCHER = "searcher"  # search and compare, always with a purpose and a case id
    AUDITOR = "auditor"  # the audit log and reports, never faces


class Action(StrEnum):
    COLLECTIONS_READ = "collections:read"
    COLLECTIONS_WRITE = "collections:write"
    FACES_READ = "faces:read"
    FACES_DELETE = "faces:delete"
    FACES_WRITE = "faces:write"
    SEARCH = "search"
    DETECT = "detect"
    AUDIT_READ = "audit:read"
    AUDIT_REPAIR = "audit:repair"
    KEYS_WRITE = "keys:write"


PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.INDEXER: frozenset(
        {Action.COLLECTIONS_READ, Action.FACES_READ, Action.FACES_WRITE, Action.FACES_DELETE, Action.DETECT}
    ),
    Role.SEARCHER: frozenset({Action.COLLECTIONS_READ, Action.SEARCH, Action.DETECT}),
    Role.AUDITOR: frozenset({Action.COLLECTIONS_READ, Action.AUDIT_READ}),
}


class NotAuthenticated(FacegridError):
    code = "NOT_AUTHENTICATED"
    status = 401


class KeyNotFound(FacegridError):
    code = "KEY_NOT_FOUND"
    status = 404


class Forbidden(FacegridError):
    code = "FORBIDDEN"
    status = 403


class ApiKey(BaseModel):
    key_id: str
    role: Role
    collections: list[str] = ["*"]
    label: str = ""
    secret_sha256: str
    created_at: str
    revoked_at: str | None = None

    def caller(self, client: str) -> Caller:
        return Caller(key_id=self.key_id, role=self.role, collections=self.collections, client=client)

    def public(self) -> dict[str, object]:
        return self.model_dump(exclude={"secret_sha256"})


class Caller(BaseModel):
    """Who asks: an API key's identity, or the local operator running the CLI against the store."""

    key_id: str
    role: Role
    collections: list[str] = ["*"]
    client: str = ""

    def may(self, action: Action, collection: str | None = None) -> bool:
        if action not in PERMISSIONS[self.role]:
            return False
        return collection is None or "*" in self.collections or collection in self.collections


def local_operator() -> Caller:
    """The CLI acts with the store's own credentials: attributable to the OS user, with the admin role."""
    return Caller(key_id=f"local:{getpass.getuser()}", role=Role.ADMIN, client="cli")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Keys live in one small object in the store; a token is shown once, at creation, and never stored."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._cached: tuple[float, list[ApiKey]] | None = None

    def keys(self, max_age_s: float = 0.0) -> list[ApiKey]:
        if self._cached and time.monotonic() - self._cached[0] <= max_age_s:
            return self._cached[1]
        try:
            raw = json.loads(self.store.get(KEYS_OBJECT))
        except ObjectNotFound:
            raw = {"keys": []}
        keys = [ApiKey.model_validate(k) for k in raw["keys"]]
        self._cached = (time.monotonic(), keys)
        return keys

    def fresh(self) -> bool:
        return self._cached is not None and time.monotonic() - self._cached[0] <= KEY_CACHE_S

    def _save(self, keys: list[ApiKey]) -> None:
        self.store.put(KEYS_OBJECT, json.dumps({"keys": [k.model_dump() for k in keys]}, indent=2).encode())
        self._cached = None

    def create(self, role: Role | str, collections: list[str] | None = None, label: str = "") -> tuple[ApiKey, str]:
        try:
            role = Role(role)
        except ValueError as exc:
            raise InvalidRequest(f"role must be one of {[r.value for r in Role]}") from exc
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=key_id,
            role=role,
            collections=collections or ["*"],
            label=label,
            secret_sha256=_digest(secret),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._save([*self.keys(), key])
        return key, f"{TOKEN_PREFIX}_{key_id}.{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key; never the last admin key that is not revoked (no one could make keys again but the
        operator with the store's own credentials)."""
        keys = self.keys()
        admins = [k.key_id for k in keys if k.role == Role.ADMIN and not k.revoked_at]
        if admins == [key_id]:
            raise InvalidRequest(f"key {key_id} is the last admin key: create another admin key first")
        for key in keys:
            if key.key_id == key_id:
                key.revoked_at = key.revoked_at or datetime.now(UTC).isoformat(timespec="seconds")
                self._save(keys)
                return key
        raise KeyNotFound(f"no key {key_id!r}")

    def authenticate(self, token: str | None) -> ApiKey:
        if not token:
            raise NotAuthenticated("an API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key'")
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition(".")
        if prefix != TOKEN_PREFIX or not key_id or not secret:
            raise NotAuthenticated("malformed API key")
        # Keys are re-read at most once a second: a revocation takes effect within that time on every server.
        for key in self.keys(max_age_s=KEY_CACHE_S):
            if key.key_id == key_id and hmac.compare_digest(key.secret_sha256, _digest(secret)):
                if key.revoked_at:
                    raise NotAuthenticated(f"API key {key_id} was revoked at {key.revoked_at}")
                return key
        raise NotAuthenticated("unknown API key")

    def active(self, key_id: str) -> ApiKey:
        """The key with this id, unless it was revoked (a console session stands for a key by its id)."""
        for key in self.keys(max_age_s=KEY_CACHE_S):
            if key.key_id == key_id:
                if key.revoked_at:
                    raise NotAuthenticated(f"API key {key_id} was revoked at {key.revoked_at}")
                return key
        raise NotAuthenticated("unknown API key")

    def bootstrap_admin(self) -> str | None:
        """On a store with no keys at all, create the first admin key and return its token (to print once)."""
        if self.keys():
            return None
        return self.create(Role.ADMIN, label="bootstrap admin")[1]


def authorize(caller: Caller, action: Action, collection: str | None = None) -> None:
    if not caller.may(action, collection):
        scope = f" on collection {collection!r}" if collection else ""
        raise Forbidden(f"role {caller.role} of key {caller.key_id} may not {action}{scope}")
