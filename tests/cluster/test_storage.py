"""Storage against a real S3-protocol server and a local folder: the same behaviour, clear errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from cluster.settings import Settings
from cluster.storage import LocalStore, ObjectNotFound, ObjectStore, S3Store, StorageAuthError, StorageError, open_store
from tests.s3server import ACCESS_KEY, SECRET_KEY


@pytest.fixture(scope="module")
def endpoint(s3_endpoint: str) -> str:
    return s3_endpoint


def _s3(endpoint: str, secret: str = SECRET_KEY) -> S3Store:
    settings = Settings(s3_endpoint=endpoint, s3_access_key=ACCESS_KEY, s3_secret_key=secret)
    store = open_store("s3://unit/prefix", settings)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, endpoint: str) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = _s3(endpoint)
    s3.ensure_bucket()
    for info in s3.list():
        s3.delete(info.key)
    return s3


def test_put_get_list_delete(store: ObjectStore) -> None:
    store.put("a/one.bin", b"1")
    store.put("a/two.bin", b"22")
    store.put("b/three.bin", b"333")
    assert [(i.key, i.size) for i in store.list("a/")] == [("a/one.bin", 1), ("a/two.bin", 2)]
    assert store.get("b/three.bin") == b"333"
    etag = next(iter(store.list("b/"))).etag
    store.put("b/three.bin", b"changed")
    assert next(iter(store.list("b/"))).etag != etag
    store.delete("a/one.bin")
    assert not store.exists("a/one.bin") and store.exists("a/two.bin")
    with pytest.raises(ObjectNotFound):
        store.get("missing")


def test_parquet_round_trip(store: ObjectStore) -> None:
    table = pa.table({"face_id": ["x", "y"], "v": [[1.0, 2.0], [3.0, 4.0]]})
    store.put_parquet("t/faces.parquet", table)
    assert store.get_parquet("t/faces.parquet").equals(table)


def test_wrong_secret_is_a_clear_error(endpoint: str) -> None:
    with pytest.raises(StorageAuthError, match="refused the credentials"):
        _s3(endpoint, secret="not-the-secret").get("anything")


def test_unreachable_endpoint_is_retried_then_reported() -> None:
    settings = Settings(s3_endpoint="127.0.0.1:1", s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY)
    with pytest.raises(StorageError, match="unreachable"):
        open_store("s3://bucket", settings).get("k")


def test_local_keys_cannot_escape(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="escapes"):
        LocalStore(tmp_path).get("../outside")


def test_listing_pages_through_everything(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.storage

    monkeypatch.setattr(cluster.storage, "LIST_PAGE", 3)
    keys = [f"many/{i:03d}.bin" for i in range(10)]
    for key in keys:
        store.put(key, b"x")
    assert [i.key for i in store.list("many/")] == keys


def test_exists_reads_metadata_only(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put("e/there.bin", b"x" * 1000)
    monkeypatch.setattr(type(store), "get", lambda *_: pytest.fail("exists downloaded the object"))
    assert store.exists("e/there.bin") and not store.exists("e/missing.bin")


@pytest.mark.parametrize("bucket", ["ab", "Upper", "under_score", "x" * 64, "dot..dot"])
def test_a_bad_bucket_name_is_one_clear_error(bucket: str) -> None:
    settings = Settings(s3_endpoint="127.0.0.1:1", s3_access_key=ACCESS_KEY, s3_secret_key=SECRET_KEY)
    with pytest.raises(StorageError, match="not a valid bucket name"):
        open_store(f"s3://{bucket}/p", settings)
