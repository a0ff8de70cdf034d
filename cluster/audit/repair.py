"""Repairing a damaged audit log: a new chain anchored to the last verified record, the damaged part kept aside.

Nothing is deleted: the segment holding the first bad record, every segment after it, any file no append wrote,
and the damaged HEAD are copied to `audit-damaged/<when>/` (same names) before the live log is cut back to the
last verified record. Appends then chain on from that record; the repair itself is the next record (the caller
audits it), naming what it moved and why, so the cut is part of the chain."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cluster.audit.log import HEAD, SEGMENT, AuditLog, audit_lock, forget_head, iter_records, write_pointer
from cluster.audit.verify import verify
from cluster.storage import ObjectStore

DAMAGED = "audit-damaged/"


def repair(log: AuditLog) -> dict[str, Any]:
    """Cut the log back to its last verified record; what was moved aside and why (`repaired: False` when the
    chain verifies and nothing was done)."""
    store = log.store
    with audit_lock(store):
        checked = verify(store)
        if checked["ok"]:
            return {"repaired": False, "records": checked["records"]}
        kept, problem = checked["records_verified"], checked["first_bad_record"]
        aside = f"{DAMAGED}{datetime.now(UTC):%Y%m%dT%H%M%S%f}/"
        good: dict[str, list[str]] = {}  # segment -> its verified lines
        last: dict[str, Any] | None = None
        for number, (key, _, line) in enumerate(iter_records(store), 1):
            good.setdefault(key, [])
            if number <= kept:
                good[key].append(line)
                last = {"segment": key, "line": line}
        moved = []
        listed = sorted(i.key for i in store.list("audit/") if i.key.endswith(".jsonl") or i.key == HEAD)
        for key in listed:
            lines = good.get(key)
            whole = lines is not None and len(lines) == _line_count(store, key)
            if whole and SEGMENT.fullmatch(key) and key != HEAD:
                continue  # verified throughout: stays
            store.put(aside + key, store.get(key))
            moved.append(key)
            if lines:
                store.put(key, "".join(f"{line}\n" for line in lines).encode())
            else:
                store.delete(key)
        anchor = _anchor(last)
        if anchor is not None:
            write_pointer(store, anchor)
        forget_head(log)
        return {
            "repaired": True,
            "problem": problem,
            "anchored_seq": anchor["seq"] if anchor else 0,
            "anchored_hash": anchor["hash"] if anchor else None,
            "moved_to": aside,
            "moved": moved,
        }


def _line_count(store: ObjectStore, key: str) -> int:
    return len(store.get(key).decode(errors="replace").splitlines())


def _anchor(last: dict[str, Any] | None) -> dict[str, Any] | None:
    """HEAD for the last verified record (None: no record verified, the next append starts a new chain)."""
    if last is None:
        return None
    record = json.loads(last["line"])
    return {"segment": last["segment"], "seq": record["seq"], "hash": record["hash"], "time": record["time"]}
