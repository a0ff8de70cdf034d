"""Kept photos: the photos added to a collection by upload (HTTP, the Rekognition protocol, the console), stored once
per collection under their SHA-256, so that a reviewer can see the face a search returned and a later job can read
the face's photo again. A record of an uploaded face names its photo as `upload://<sha256>`.

A photo lives exactly as long as a face of the collection names it: it is stored before the first record that names
it, and erasure deletes it with the last. Both happen under the photo's lock (one of a few per collection), so an
upload of the same bytes racing the erasure of their last face either keeps the photo for its own face or finds it
gone and stores it again; never a face whose photo was deleted under it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc

from cluster.collections.manifest import Collections
from cluster.locks import exclusive
from cluster.storage import ObjectNotFound, ObjectStore

UPLOAD = "upload://"
# Locks per collection that photos hash to: enough that unrelated uploads rarely wait for each other.
LOCK_STRIPES = 16
SHA256 = re.compile(r"[0-9a-f]{64}")


def photo_sha256(location: str) -> str | None:
    """The SHA-256 an uploaded face's location names (None for a face of a source object)."""
    if not location.startswith(UPLOAD):
        return None
    digest = location[len(UPLOAD) :]
    return digest if SHA256.fullmatch(digest) else None


class KeptPhotos:
    def __init__(self, store: ObjectStore, collection: str) -> None:
        self.store = store
        self.collection = collection
        self.prefix = f"{Collections.prefix(collection)}photos/"

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    @contextmanager
    def locked(self, sha256: str) -> Iterator[None]:
        with exclusive(self.store, f"photos-{self.collection}-{int(sha256[:4], 16) % LOCK_STRIPES}"):
            yield

    def keep(self, sha256: str, blob: bytes) -> None:
        """Store the photo (the caller holds its lock and writes the record that names it before letting go)."""
        if not self.store.exists(self.key(sha256)):
            self.store.put(self.key(sha256), blob)

    def get(self, sha256: str) -> bytes:
        """The photo's bytes; ObjectNotFound where it was never kept (keeping off) or is erased."""
        return self.store.get(self.key(sha256))

    def exists(self, sha256: str) -> bool:
        return self.store.exists(self.key(sha256))

    def drop_unnamed(self, candidates: set[str], files: Callable[[], list[str]], erased: set[str]) -> list[str]:
        """Delete each candidate photo that no face of the record files (`files()`: the collection's, live log
        included, listed under the photo's lock) names any more, leaving out erased faces; the SHA-256s deleted.
        The caller holds the collection's lock, so no fold moves a segment meanwhile."""
        deleted = []
        for sha256 in sorted(candidates):
            with self.locked(sha256):
                if not self.exists(sha256) or _named(self.store, files(), UPLOAD + sha256, erased):
                    continue
                self.store.delete(self.key(sha256))
                deleted.append(sha256)
        return deleted


def _named(store: ObjectStore, files: list[str], location: str, erased: set[str]) -> bool:
    """Whether a face not erased, in any of these record files, names `location`."""
    for key in files:
        try:
            table = store.get_parquet(key, ["face_id", "source_key"])
        except ObjectNotFound:
            continue
        rows = table.filter(pc.equal(table.column("source_key"), pa.scalar(location)))
        if any(face_id not in erased for face_id in rows.column("face_id").to_pylist()):
            return True
    return False
