"""Tamper-evident audit log: hash-chained JSON records in append-only segments in object storage."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cluster.errors import AuditUnavailable
from cluster.storage import LocalStore, ObjectNotFound, ObjectStore

PREFIX = "audit/"
HEAD = "audit/HEAD.json"
GENESIS = "0" * 64
SEGMENT = re.compile(r"audit/\d{4}/\d{2}/\d{2}/\d{12}\.jsonl")
REPAIR_HINT = "an admin runs `facegrid audit repair` (audited; the damaged part is kept for inspection)"
# Records per segment in a local folder (appended to in place).
SEGMENT_RECORDS = 256
# On an object store a segment is rewritten whole on every group commit (no appends there), so it stays small.
SMALL_SEGMENT_RECORDS = 16


def record_hash(record: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything but the hash itself."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _segment_key(at: datetime, seq: int) -> str:
    # Zero-padded sequence numbers make the lexical order of keys the order of the chain.
    return f"{PREFIX}{at:%Y/%m/%d}/{seq:012d}.jsonl"


class AuditLog:
    """Appends to the chain. Each append re-reads the head pointer under a lock, so several processes sharing a
    local folder extend one chain; on S3 the cluster runs one writer (a named Ray actor) for the same reason, and
    that writer (`single_writer`) keeps the head and the current segment in memory instead of reading them back.

    Appends come in groups (`append_many`, one group commit): on an object store, which cannot append, a group
    costs one write of the current segment (kept under SMALL_SEGMENT_RECORDS) and one of HEAD, however many
    records it holds; it used to be a rewrite of a 256-record segment per record."""

    def __init__(self, store: ObjectStore, single_writer: bool = False) -> None:
        self.store = store
        self.single_writer = single_writer
        self._held: tuple[dict[str, Any], bytes] | None = None  # a single writer's head and current segment

    def _head(self) -> dict[str, Any]:
        """Where the chain ends. HEAD.json holds the last record's seq and hash (rewritten on every append, after
        the record), so a cut at the end stays visible: appends chain on from HEAD, never from a shortened
        segment. A record whose HEAD update a crash lost (one past HEAD, linked to it) is adopted. A damaged
        HEAD, or none beside records, raises AuditUnavailable: a new chain must not overwrite the old one."""
        pointer = read_pointer(self.store, locked=True)
        if pointer is None:
            if any(i.key.endswith(".jsonl") for i in self.store.list(PREFIX)):
                raise AuditUnavailable(f"{HEAD} is missing but the log holds records: {REPAIR_HINT}")
            return {"seq": 0, "hash": GENESIS, "segment": None, "segment_records": 0}
        segment = pointer["segment"]
        try:
            last = json.loads(self.store.last_line(segment))
        except ObjectNotFound as exc:
            raise AuditUnavailable(f"the segment {HEAD} names, {segment}, is missing: {REPAIR_HINT}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError):
            last = {}
        last = last if isinstance(last, dict) else {}
        first_seq = segment_seq(segment)
        seq, digest = pointer.get("seq"), pointer.get("hash")
        if seq is None or (last.get("seq") == seq + 1 and last.get("prev_hash") == digest):
            seq, digest = last.get("seq", first_seq - 1), last.get("hash", GENESIS)  # an older HEAD, or a lost update
        if not isinstance(seq, int) or not isinstance(digest, str):
            raise AuditUnavailable(f"the end of {segment} is damaged: {REPAIR_HINT}")
        return {"seq": seq, "hash": digest, "segment": segment, "segment_records": max(0, seq - first_seq + 1)}

    def check_appendable(self) -> None:
        """AuditUnavailable unless an append would chain on a sound head: checked before an audited action runs,
        so that nothing happens that could not be recorded: on a folder a read of HEAD and a stat under the lock;
        a single writer that holds its head knows it already."""
        with audit_lock(self.store):
            self._current()

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        return self.append_many([entry])[0]

    def append_many(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain these records on in order and write them together; each one's seq and hash."""
        with audit_lock(self.store):
            try:
                return self._append(entries)
            except BaseException:
                forget_head(self)  # what was written is unknown: read the store again next time
                raise

    def _current(self) -> dict[str, Any]:
        """The head to chain on: a single writer's own; on a folder, the one this process wrote last while HEAD
        still holds the very bytes it wrote (no other process appended since), which saves parsing HEAD and
        reading the segment's end on every search."""
        if self._held:
            return self._held[0]
        if isinstance(self.store, LocalStore):
            cached = _LOCAL_HEADS.get(self.store.root)
            # HEAD unchanged since this process wrote it, and its segment still there (a stat: an end that was
            # removed must not be recreated by an append).
            fresh = cached is not None and cached[0] == _read_local_head(self.store)
            if fresh and cached is not None and self.store.exists(cached[1]["segment"]):
                return dict(cached[1])
        return self._head()

    def _append(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        head = self._current()
        now = datetime.now(UTC)
        at = now.isoformat(timespec="microseconds")
        records, previous = [], head["hash"]
        for n, entry in enumerate(entries, head["seq"] + 1):
            record = {"seq": n, "time": at, **entry, "prev_hash": previous}
            record["hash"] = previous = record_hash(record)
            records.append(record)
        lines = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records).encode()
        appendable = isinstance(self.store, LocalStore)
        key, count = head["segment"], head["segment_records"]
        limit = SEGMENT_RECORDS if appendable else SMALL_SEGMENT_RECORDS
        if key is None or count >= limit or f"/{now:%Y/%m/%d}/" not in key:
            key, count, body = _segment_key(now, records[0]["seq"]), 0, lines
            self.store.put(key, body)
        elif appendable:
            self.store.append(key, lines)
            body = b""
        else:
            body = (self._held[1] if self._held else self.store.get(key)) + lines
            self.store.put(key, body)
        last = records[-1]
        pointer = {"segment": key, "seq": last["seq"], "hash": last["hash"], "time": last["time"]}
        held = {"seq": last["seq"], "hash": last["hash"], "segment": key, "segment_records": count + len(records)}
        if isinstance(self.store, LocalStore):
            _LOCAL_HEADS[self.store.root] = (_write_local_head(self.store, pointer), held)
        else:
            self.store.put(HEAD, json.dumps(pointer).encode())
        if self.single_writer:
            self._held = (held, body)
        return [{"seq": r["seq"], "hash": r["hash"]} for r in records]


def head(store: ObjectStore) -> dict[str, Any]:
    """A checkpoint of the chain as it stands: the last record's seq, hash and time. Published somewhere the
    store's writers cannot reach, it lets `verify --checkpoint` prove later that nothing up to it changed.
    AuditUnavailable where HEAD is damaged."""
    pointer = read_pointer(store)
    if pointer is None:
        return {"seq": 0, "hash": GENESIS, "time": None}
    if "seq" not in pointer:  # written before HEAD held the head: the current segment's last record
        try:
            last = json.loads(store.last_line(pointer["segment"]))
            return {"seq": last["seq"], "hash": last["hash"], "time": last["time"]}
        except (ObjectNotFound, ValueError, TypeError, KeyError) as exc:
            raise AuditUnavailable(f"the segment {HEAD} names cannot be read: {REPAIR_HINT}") from exc
    return {"seq": pointer["seq"], "hash": pointer["hash"], "time": pointer.get("time")}


def read_pointer(store: ObjectStore, locked: bool = False) -> dict[str, Any] | None:
    """HEAD.json checked: None where there is none, AuditUnavailable where it is not what appends write.
    `locked`: the caller holds the append lock already."""
    try:
        if isinstance(store, LocalStore) and not locked:
            with audit_lock(store):  # HEAD is rewritten in place there: never read half an update
                raw = store.get(HEAD)
        else:
            raw = store.get(HEAD)
    except ObjectNotFound:
        return None
    try:
        pointer = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditUnavailable(f"{HEAD} is not valid JSON (damaged): {REPAIR_HINT}") from exc
    segment = pointer.get("segment") if isinstance(pointer, dict) else None
    sound = isinstance(segment, str) and SEGMENT.fullmatch(segment) is not None
    if sound and "seq" in pointer:
        sound = isinstance(pointer["seq"], int) and isinstance(pointer.get("hash"), str)
    if not sound:
        raise AuditUnavailable(f"{HEAD} does not name a segment, seq and hash (damaged): {REPAIR_HINT}")
    return dict(pointer)


def segment_seq(key: str) -> int:
    """The first seq of a segment, from its name."""
    return int(key.rsplit("/", 1)[1].split(".")[0])


# Per folder store: the bytes of HEAD this process wrote last, and the head they describe.
_LOCAL_HEADS: dict[Path, tuple[bytes, dict[str, Any]]] = {}
# HEAD on a folder: JSON padded to a fixed width and rewritten in place, under the append lock (readers take it
# too). Replacing it by a rename, as object stores do, cost 130 us of ext4's data flush on every search.
HEAD_WIDTH = 512


def _read_local_head(store: LocalStore) -> bytes:
    try:
        with open(os.path.join(store.uri, HEAD), "rb") as handle:
            return handle.read(HEAD_WIDTH + 1)
    except FileNotFoundError:
        return b""


def _write_local_head(store: LocalStore, pointer: dict[str, Any]) -> bytes:
    data = json.dumps(pointer).encode()
    if len(data) > HEAD_WIDTH:
        raise ValueError(f"audit HEAD of {len(data)} bytes is over {HEAD_WIDTH}")
    data = data.ljust(HEAD_WIDTH)
    path = os.path.join(store.uri, HEAD)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(handle, data, 0)
        if os.fstat(handle).st_size != HEAD_WIDTH:
            os.ftruncate(handle, HEAD_WIDTH)
    finally:
        os.close(handle)
    return data


_LOCKS: dict[Path, tuple[threading.RLock, TextIO]] = {}
_LOCKS_GUARD = threading.Lock()
_depth = threading.local()  # how deep this thread holds each folder's lock: the flock is taken once, outermost


@contextmanager
def audit_lock(store: ObjectStore) -> Iterator[None]:
    """Threads of this process take a mutex, processes an flock on a file kept open (no open/mkdir per append);
    the thread that holds it may take it again (a repair verifies, and reads HEAD, under it)."""
    if not isinstance(store, LocalStore):
        yield
        return
    path = store.root / "audit" / ".lock"
    with _LOCKS_GUARD:
        if path not in _LOCKS:
            path.parent.mkdir(parents=True, exist_ok=True)
            _LOCKS[path] = (threading.RLock(), path.open("a"))
        mutex, handle = _LOCKS[path]
    depths: dict[Path, int] = _depth.__dict__.setdefault("held", {})
    with mutex:
        outermost = depths.get(path, 0) == 0
        if outermost:
            fcntl.flock(handle, fcntl.LOCK_EX)
        depths[path] = depths.get(path, 0) + 1
        try:
            yield
        finally:
            depths[path] -= 1
            if outermost:
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_pointer(store: ObjectStore, pointer: dict[str, Any]) -> None:
    """Set HEAD (a repair's anchor); the caller holds the append lock."""
    if isinstance(store, LocalStore):
        _write_local_head(store, pointer)
    else:
        store.put(HEAD, json.dumps(pointer).encode())


def forget_head(log: AuditLog) -> None:
    """Read the head from the store on the next append: someone else (a repair) set it."""
    log._held = None
    if isinstance(log.store, LocalStore):
        _LOCAL_HEADS.pop(log.store.root, None)


def segments(store: ObjectStore) -> list[str]:
    """The log's segment keys, in chain order (a .jsonl file under audit/ by any other name is a stray, which
    `verify` names)."""
    return sorted(i.key for i in store.list(PREFIX) if SEGMENT.fullmatch(i.key))


def iter_records(store: ObjectStore) -> Iterator[tuple[str, int, str]]:
    """(segment key, line number from 1, raw line) in chain order."""
    for key in segments(store):
        for number, line in enumerate(store.get(key).decode(errors="replace").splitlines(), 1):
            yield key, number, line


def _segments_from(store: ObjectStore, seq: int) -> list[str]:
    """The segments that may hold records from `seq` on: keys sort by date, then first seq, and seqs only grow,
    so they are the last one starting at or before seq and every one after it."""
    keys = segments(store)
    starts = [segment_seq(k) for k in keys]
    before = [n for n, start in enumerate(starts) if start <= seq]
    return keys[before[-1] if before else 0 :]


def records_from(store: ObjectStore, seq: int) -> Iterator[dict[str, Any]]:
    """Records with seq at least `seq`, in chain order, reading only the segments that hold them."""
    for key in _segments_from(store, seq):
        for line in store.get(key).decode(errors="replace").splitlines():
            record = _parsed(line)
            if record is not None and isinstance(record.get("seq"), int) and record["seq"] >= seq:
                yield record


def record_at(store: ObjectStore, seq: int) -> dict[str, Any] | None:
    """The record with this seq (segments are named by their first seq), or None."""
    if seq < 1:
        return None
    for record in records_from(store, seq):
        return dict(record) if record["seq"] == seq else None
    return None


def read_records(
    store: ObjectStore, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """Records whose time lies in [start, end), in chain order; unparseable lines are skipped (verify names them)."""
    out = []
    for _, _, line in iter_records(store):
        record = _parsed(line)
        try:
            at = datetime.fromisoformat(record["time"]) if record else None
        except (TypeError, ValueError, KeyError):
            continue
        if record is not None and at is not None and (start is None or at >= start) and (end is None or at < end):
            out.append(record)
    return out


def _parsed(line: str) -> dict[str, Any] | None:
    """A line as a record, or None where it is not one (damage: `verify` names it; readers pass over it)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
