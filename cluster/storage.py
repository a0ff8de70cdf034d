"""Object access over S3-compatible storage (MinIO client) and a local folder with the same layout."""

from __future__ import annotations

import functools
import io
import itertools
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.settings import Settings

T = TypeVar("T")

# S3 error codes that mean "try again" and those that mean "your credentials are wrong".
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed"}
LIST_PAGE = 1000  # S3's own page size for ListObjectsV2
_AUTH_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "ExpiredToken"}


class StorageError(Exception):
    """Object storage failed in a way the user can act on."""


class StorageAuthError(StorageError):
    """The storage refused the credentials."""


class ObjectNotFound(StorageError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A file beside `path` to write, renamed onto it when the block ends: readers never see half a file (and a
    LocalStore listing skips the `.tmp` name meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{random.getrandbits(32):x}")
    yield tmp
    os.replace(tmp, path)


class ObjectStore:
    """What every store offers; keys are '/'-separated and relative to the store's root."""

    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def info(self, key: str) -> ObjectInfo:
        """The object's size and etag (as `list` gives them)."""
        for found in self.list(key):
            if found.key == key:
                return found
        raise ObjectNotFound(key)

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
        except ObjectNotFound:
            return False
        return True

    def append(self, key: str, data: bytes) -> None:
        """Add bytes at the end of an object; object stores cannot append, so the object is rewritten."""
        try:
            current = self.get(key)
        except ObjectNotFound:
            current = b""
        self.put(key, current + data)

    def last_line(self, key: str) -> bytes:
        return self.get(key).rstrip(b"\n").rsplit(b"\n", 1)[-1]

    def download(self, key: str, path: Path) -> None:
        """Copy an object to a local file."""
        with _replacing(path) as tmp:
            tmp.write_bytes(self.get(key))

    def put_parquet(self, key: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.put(key, buffer.getvalue())

    def get_parquet(self, key: str, columns: Sequence[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get(key)), columns=None if columns is None else [*columns])


def _etag(stat: os.stat_result) -> str:
    # Size and modification time change whenever the content is replaced: a cheap etag.
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        # normpath, not resolve: no file-system calls on a hot path (audit appends), and ".." still cannot escape.
        path = os.path.normpath(os.path.join(self.uri, key))
        if path != self.uri and not path.startswith(self.uri + os.sep):
            raise StorageError(f"key {key!r} escapes the store root")
        return Path(path)

    def path_of(self, key: str) -> Path:
        """The file behind a key, for readers that map it rather than copy it."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in {self.uri}")
        return path

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in sorted(filenames):
                if ".tmp" in name:
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue  # removed since the directory was read (a folded log segment)
                    yield ObjectInfo(key, stat.st_size, _etag(stat))

    def info(self, key: str) -> ObjectInfo:
        try:
            stat = self._path(key).stat()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        return ObjectInfo(key, stat.st_size, _etag(stat))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {key!r} in {self.uri}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        with _replacing(self._path(key)) as tmp:
            tmp.write_bytes(data)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def last_line(self, key: str) -> bytes:
        """Reads backwards from the end, so the cost does not grow with the object."""
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from exc
        with handle:
            end = handle.seek(0, os.SEEK_END)
            chunk, start = b"", end
            while start > 0 and chunk.rstrip(b"\n").count(b"\n") == 0:
                start = max(0, start - 4096)
                handle.seek(start)
                chunk = handle.read(end - start)
        return chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1]

    def append(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.write(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def _retry(action: Callable[[], T], what: str, attempts: int = 5) -> T:
    """Run an S3 call, retrying transient failures with jittered exponential backoff."""
    from minio.error import InvalidResponseError, S3Error, ServerError
    from urllib3.exceptions import HTTPError

    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except InvalidResponseError as exc:
            # Some servers answer errors with a content type minio does not parse; the code is still in the body.
            found = re.search(r"<Code>([^<]+)</Code>", str(exc))
            code = found.group(1) if found else ""
            if code in _AUTH_CODES or exc._code == 403:
                raise StorageAuthError(
                    f"S3 refused the credentials for {what} ({code or 403}): check FACEGRID_S3_ACCESS_KEY and "
                    "FACEGRID_S3_SECRET_KEY"
                ) from exc
            if code == "NoSuchBucket":
                raise StorageError(f"bucket does not exist for {what}") from exc
            if code in ("NoSuchKey", "NoSuchObject") or exc._code == 404:
                raise ObjectNotFound(f"no object for {what}") from exc
            if exc._code < 500 or attempt == attempts:
                raise StorageError(f"S3 error on {what}: HTTP {exc._code} {code}") from exc
        except S3Error as exc:
            if exc.code in _AUTH_CODES:
                raise StorageAuthError(
                    f"S3 refused the credentials for {what} ({exc.code}): check FACEGRID_S3_ACCESS_KEY and "
                    "FACEGRID_S3_SECRET_KEY"
                ) from exc
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(f"no object for {what}") from exc
            if exc.code == "NoSuchBucket":
                raise StorageError(f"bucket does not exist for {what}") from exc
            if exc.code not in _TRANSIENT_CODES or attempt == attempts:
                raise StorageError(f"S3 error on {what}: {exc.code}: {exc.message}") from exc
        except (ServerError, HTTPError, ConnectionError, TimeoutError) as exc:
            if attempt == attempts:
                raise StorageError(f"S3 unreachable for {what} after {attempts} attempts: {exc}") from exc
        time.sleep(delay * (1 + random.random()))
        delay *= 2
    raise AssertionError("unreachable")


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        import urllib3
        from minio import Minio
        from minio.helpers import check_bucket_name

        if not settings.s3_endpoint:
            raise StorageError("an s3:// location needs FACEGRID_S3_ENDPOINT (host:port of MinIO or S3)")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            rule = "3-63 lowercase letters, digits, '.' and '-'"
            raise StorageError(f"s3://{bucket}: not a valid bucket name ({rule})") from exc
        endpoint = settings.s3_endpoint
        secure = settings.s3_secure
        if "://" in endpoint:
            parsed = urlparse(endpoint)
            endpoint, secure = parsed.netloc, parsed.scheme == "https"
        self.client = Minio(
            endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=secure,
            region=settings.s3_region,
            # Retries are ours (_retry): urllib3's own would multiply them and hide auth errors behind waits.
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=60), retries=urllib3.Retry(total=0), maxsize=16
            ),
        )
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}"

    def _full(self, key: str) -> str:
        return self.prefix + key

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Keys in lexicographic order, a page at a time: memory stays flat, and a failed page is retried alone."""
        after: str | None = None
        while True:
            page = _retry(functools.partial(self._page, prefix, after), f"listing {self.uri}{prefix}")
            for obj in page:
                if not obj.is_dir and obj.object_name is not None:
                    yield ObjectInfo(obj.object_name[len(self.prefix) :], obj.size or 0, (obj.etag or "").strip('"'))
            if len(page) < LIST_PAGE:
                return
            after = page[-1].object_name

    def _page(self, prefix: str, after: str | None) -> Sequence[Any]:
        listing = self.client.list_objects(self.bucket, prefix=self._full(prefix), recursive=True, start_after=after)
        return tuple(itertools.islice(listing, LIST_PAGE))

    def get(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, self._full(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return _retry(read, f"{self.uri}{key}")

    def put(self, key: str, data: bytes) -> None:
        _retry(
            lambda: self.client.put_object(self.bucket, self._full(key), io.BytesIO(data), len(data)),
            f"{self.uri}{key}",
        )

    def exists(self, key: str) -> bool:
        """A metadata read (HEAD), not a download."""
        from minio.error import S3Error

        def stat() -> bool:
            try:
                self.client.stat_object(self.bucket, self._full(key))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return False
                raise
            return True

        return _retry(stat, f"{self.uri}{key}")

    def download(self, key: str, path: Path) -> None:
        """Streamed to disk: a shard's records file can be larger than what its process should hold."""
        with _replacing(path) as tmp:
            _retry(lambda: self.client.fget_object(self.bucket, self._full(key), str(tmp)), f"{self.uri}{key}")

    def delete(self, key: str) -> None:
        _retry(lambda: self.client.remove_object(self.bucket, self._full(key)), f"{self.uri}{key}")

    def ensure_bucket(self) -> None:
        if not _retry(lambda: self.client.bucket_exists(self.bucket), f"bucket {self.bucket}"):
            _retry(lambda: self.client.make_bucket(self.bucket), f"bucket {self.bucket}")


def open_store(uri: str, settings: Settings) -> ObjectStore:
    """s3://bucket/prefix (with FACEGRID_S3_* settings) or a local folder path."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket")
        return S3Store(parsed.netloc, parsed.path, settings)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported store {uri!r}: use s3://bucket/prefix or a folder")
    return LocalStore(Path(uri.removeprefix("file://")))
