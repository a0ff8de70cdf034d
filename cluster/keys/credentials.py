"""Credentials for the Rekognition protocol. A long-lived access key id and secret belong to a facegrid key (its
role and grants) and are bound to one purpose; the secret is kept encrypted with the server key (it is needed in
plain to check SigV4 signatures, so a hash cannot do). Session credentials add a case id for a limited time: the
session token is sealed with the server key and carries everything (parent, purpose, case, expiry, its secret), so
nothing about a session is stored.

The server key is `FACEGRID_SERVING__CREDENTIAL_KEY` (a Fernet key; every server of a deployment needs the same),
else a key file created on first use beside the user's configuration (mode 0600)."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from platformdirs import user_config_dir
from pydantic import BaseModel

from cluster.errors import FacegridError, InvalidRequest
from cluster.storage import ObjectNotFound, ObjectStore

CREDENTIALS_OBJECT = "access/rekognition.json"
MAX_SESSION_S = 12 * 3600


class UnknownAccessKey(FacegridError):
    code = "UNRECOGNIZED_CLIENT"
    status = 403


class SessionExpired(FacegridError):
    code = "EXPIRED_TOKEN"
    status = 403


class Credential(BaseModel):
    access_key_id: str
    key_id: str  # the facegrid key whose role and grants apply
    purpose: str
    secret_encrypted: str
    created_at: str
    revoked_at: str | None = None

    def public(self) -> dict[str, object]:
        return self.model_dump(exclude={"secret_encrypted"})


class Resolved(BaseModel):
    """What a signed request's access key stands for."""

    access_key_id: str
    secret: str
    key_id: str
    purpose: str
    case_id: str | None
    session: bool


def server_cipher(configured: str | None) -> Fernet:
    if configured:
        return Fernet(configured.encode())
    path = Path(user_config_dir("facegrid")) / "credential.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
    return Fernet(path.read_bytes().strip())


class Credentials:
    def __init__(self, store: ObjectStore, cipher: Fernet) -> None:
        self.store = store
        self.cipher = cipher

    def all(self) -> list[Credential]:
        try:
            raw = json.loads(self.store.get(CREDENTIALS_OBJECT))
        except ObjectNotFound:
            return []
        return [Credential.model_validate(c) for c in raw["credentials"]]

    def _save(self, credentials: list[Credential]) -> None:
        body = {"credentials": [c.model_dump() for c in credentials]}
        self.store.put(CREDENTIALS_OBJECT, json.dumps(body, indent=2).encode())

    def create(self, key_id: str, purpose: str) -> tuple[Credential, str]:
        access_key_id = "AKFG" + secrets.token_hex(8).upper()
        secret = secrets.token_urlsafe(30)
        credential = Credential(
            access_key_id=access_key_id,
            key_id=key_id,
            purpose=purpose,
            secret_encrypted=self.cipher.encrypt(secret.encode()).decode(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._save([*self.all(), credential])
        return credential, secret

    def revoke_for_key(self, key_id: str) -> None:
        """A revoked facegrid key takes its protocol credentials with it."""
        held = self.all()
        at = datetime.now(UTC).isoformat(timespec="seconds")
        for credential in held:
            if credential.key_id == key_id and credential.revoked_at is None:
                credential.revoked_at = at
        self._save(held)

    def _credential(self, access_key_id: str) -> Credential:
        for credential in self.all():
            if credential.access_key_id == access_key_id:
                if credential.revoked_at:
                    raise UnknownAccessKey(f"access key {access_key_id} was revoked at {credential.revoked_at}")
                return credential
        raise UnknownAccessKey("the access key id is not one this server issued")

    def session(self, access_key_id: str, case_id: str, ttl_s: int) -> dict[str, object]:
        """Session credentials for one case, valid `ttl_s` seconds (at most 12 hours)."""
        if not 60 <= ttl_s <= MAX_SESSION_S:
            raise InvalidRequest(f"a session lasts 60 to {MAX_SESSION_S} seconds")
        if not case_id.strip() or len(case_id) > 256:
            raise InvalidRequest("a session needs a case id of 1-256 characters")
        parent = self._credential(access_key_id)
        session_id = "ASFG" + secrets.token_hex(8).upper()
        secret = secrets.token_urlsafe(30)
        expires = int(time.time()) + ttl_s
        sealed = {
            "id": session_id,
            "parent": parent.access_key_id,
            "case_id": case_id,
            "exp": expires,
            "secret": secret,
        }
        token = self.cipher.encrypt(json.dumps(sealed).encode()).decode()
        return {
            "AccessKeyId": session_id,
            "SecretAccessKey": secret,
            "SessionToken": token,
            "Expiration": datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds"),
            "Purpose": parent.purpose,
            "CaseId": case_id,
        }

    def resolve(self, access_key_id: str, session_token: str | None) -> Resolved:
        """The secret and identity behind an access key id (and session token, for session credentials)."""
        if session_token is None:
            if access_key_id.startswith("ASFG"):
                raise UnknownAccessKey("session credentials need their session token (X-Amz-Security-Token)")
            credential = self._credential(access_key_id)
            secret = self.cipher.decrypt(credential.secret_encrypted.encode()).decode()
            return Resolved(
                access_key_id=access_key_id,
                secret=secret,
                key_id=credential.key_id,
                purpose=credential.purpose,
                case_id=None,
                session=False,
            )
        try:
            sealed = json.loads(self.cipher.decrypt(session_token.encode()))
        except (InvalidToken, ValueError) as exc:
            raise UnknownAccessKey("the session token is not one this server issued") from exc
        if sealed["id"] != access_key_id:
            raise UnknownAccessKey("the session token belongs to another access key id")
        if sealed["exp"] < time.time():
            expired = datetime.fromtimestamp(sealed["exp"], UTC).isoformat(timespec="seconds")
            raise SessionExpired(f"the session credentials expired at {expired}; mint new ones")
        parent = self._credential(sealed["parent"])
        return Resolved(
            access_key_id=access_key_id,
            secret=sealed["secret"],
            key_id=parent.key_id,
            purpose=parent.purpose,
            case_id=sealed["case_id"],
            session=True,
        )
