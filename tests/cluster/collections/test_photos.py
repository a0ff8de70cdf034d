"""Kept photos on their own: one pass over the records decides which of many candidates no face names any more."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from cluster.collections.photos import UPLOAD, KeptPhotos, photo_sha256
from cluster.storage import LocalStore


def _records(store: LocalStore, key: str, rows: list[tuple[str, str]]) -> None:
    table = pa.table({"face_id": [r[0] for r in rows], "source_key": [r[1] for r in rows]})
    store.put_parquet(key, table)


def test_photos_go_with_their_last_face_in_one_pass(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    photos = KeptPhotos(store, "c")
    shas = [hashlib.sha256(bytes([n])).hexdigest() for n in range(4)]
    for sha in shas:
        photos.keep(sha, b"jpeg")
    # Photo 0: no face names it. Photo 1: only an erased face. Photo 2: a live face. Photo 3: never asked about.
    _records(store, "collections/c/faces/a.parquet", [("f1", UPLOAD + shas[1]), ("f2", UPLOAD + shas[2])])
    _records(store, "collections/c/log/b.parquet", [("f3", "s3://bucket/x.jpg")])
    files = ["collections/c/faces/a.parquet", "collections/c/log/b.parquet", "collections/c/log/gone.parquet"]
    deleted = photos.drop_unnamed(set(shas[:3]), lambda: files, erased={"f1"})
    assert deleted == sorted(shas[:2])
    assert [photos.exists(sha) for sha in shas] == [False, False, True, True]
    assert photos.drop_unnamed(set(shas[:2]), lambda: files, erased={"f1"}) == []  # a retry finds them gone


def test_only_an_uploads_location_names_a_photo() -> None:
    sha = "ab" * 32
    assert photo_sha256(UPLOAD + sha) == sha
    assert photo_sha256("s3://bucket/" + sha) is None and photo_sha256(UPLOAD + "../x") is None
