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
from contextlib import ExitStack, contextmanager

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

    def _lock_name(self, sha256: str) -> str:
        return f"photos-{self.collection}-{int(sha256[:4], 16) % LOCK_STRIPES}"

    @contextmanager
    def locked(self, *sha256s: str) -> Iterator[None]:
        """Hold the locks of these photos (each stripe once, in one order: no two holders wait on each other)."""
        with ExitStack() as stack:
            for name in sorted({self._lock_name(sha256) for sha256 in sha256s}):
                stack.enter_context(exclusive(self.store, name))
            yield

    @contextmanager
    def all_locked(self) -> Iterator[None]:
        """Every photo lock of the collection (a cut-over: no add writes to the log meanwhile)."""
        with ExitStack() as stack:
            for name in sorted(f"photos-{self.collection}-{stripe}" for stripe in range(LOCK_STRIPES)):
                stack.enter_context(exclusive(self.store, name))
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
        included, listed under the photos' locks) names any more, leaving out erased faces; the SHA-256s deleted,
        in one pass over the records whatever the number of candidates. The caller holds the collection's lock,
        so no fold moves a segment meanwhile."""
        if not candidates:
            return []
        with self.locked(*candidates):
            held = {sha256 for sha256 in candidates if self.exists(sha256)}
            named = _named(self.store, files(), {UPLOAD + sha256 for sha256 in held}, erased)
            deleted = sorted(sha256 for sha256 in held if UPLOAD + sha256 not in named)
            for sha256 in deleted:
                self.store.delete(self.key(sha256))
        return deleted


def _named(store: ObjectStore, files: list[str], locations: set[str], erased: set[str]) -> set[str]:
    """Those of `locations` that a face not erased, in any of these record files, names (two columns read)."""
    named: set[str] = set()
    if not locations:
        return named
    wanted = pa.array(sorted(locations), pa.string())
    for key in files:
        try:
            table = store.get_parquet(key, ["face_id", "source_key"])
        except ObjectNotFound:
            continue
        rows = table.filter(pc.is_in(table.column("source_key"), wanted)).to_pylist()
        named |= {row["source_key"] for row in rows if row["face_id"] not in erased}
    return named
