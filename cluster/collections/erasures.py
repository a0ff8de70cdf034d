"""The erasure register: what was erased from a collection (face id, source object and etag, when, by whom;
never a vector or an image), so that index jobs and added photos do not bring it back, and which kept photos were
deleted with their last face. Readmission is an act of its own. One small JSON object per act, under
collections/<name>/erasures/, read in order."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from cluster.collections.manifest import Collections
from cluster.storage import ObjectNotFound, ObjectStore


class ErasureRegister:
    def __init__(self, store: ObjectStore, collection: str) -> None:
        self.store = store
        self.prefix = f"{Collections.prefix(collection)}erasures/"

    def _write(self, act: str, entries: list[dict[str, Any]], by: str) -> None:
        at = datetime.now(UTC)
        key = f"{self.prefix}{at:%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}-{act}.json"
        body = {"act": act, "at": at.isoformat(timespec="milliseconds"), "by": by, "entries": entries}
        self.store.put(key, json.dumps(body).encode())

    def erased(self, faces: list[dict[str, Any]], by: str) -> None:
        """Record erased faces: each a dict with face_id, source and etag."""
        if faces:
            self._write("erase", [{k: f[k] for k in ("face_id", "source", "etag")} for f in faces], by)

    def photos_deleted(self, sha256s: list[str], by: str) -> None:
        """Record kept photos deleted with their last face (cluster/collections/photos.py): their hashes only."""
        if sha256s:
            self._write("delete-photos", [{"photo_sha256": sha} for sha in sha256s], by)

    def readmit(self, face_ids: set[str], sources: set[str], by: str) -> list[dict[str, Any]]:
        """Take faces (by id, or every face of a source object) off the register; the entries that were lifted."""
        lifted = [e for e in self.entries().values() if e["face_id"] in face_ids or e["source"] in sources]
        if lifted:
            self._write("readmit", [{"face_id": e["face_id"]} for e in lifted], by)
        return lifted

    def entries(self) -> dict[str, dict[str, Any]]:
        """The register now: face id -> its erasure (with when and by whom), acts applied in order."""
        current: dict[str, dict[str, Any]] = {}
        for info in sorted(self.store.list(self.prefix), key=lambda i: i.key):
            try:
                act = json.loads(self.store.get(info.key))
            except ObjectNotFound:
                continue
            for entry in act["entries"]:
                if act["act"] == "erase":
                    current[entry["face_id"]] = {**entry, "at": act["at"], "by": act["by"]}
                elif act["act"] == "readmit":
                    current.pop(entry["face_id"], None)
        return current

    def erased_ids(self) -> set[str]:
        return set(self.entries())

    def erased_objects(self) -> set[tuple[str, str]]:
        """(source location, etag) of objects with an erased face: an index job does not read them again."""
        return {(e["source"], e["etag"]) for e in self.entries().values()}
