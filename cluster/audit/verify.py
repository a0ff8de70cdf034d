"""Checking the audit chain: every record, link, segment and the head, with the place of the first damage."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from cluster.audit.log import GENESIS, HEAD, PREFIX, SEGMENT, head, iter_records, read_pointer, record_hash
from cluster.errors import AuditUnavailable
from cluster.storage import ObjectStore


@dataclass
class Problem:
    segment: str
    line: int
    seq: int | None
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def verify(store: ObjectStore, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Walk the chain; name the first record that was modified, removed, reordered or appended out of chain,
    or the damaged HEAD. Never raises for what it reads: every damage is a finding with its place.

    The chain must reach the head HEAD.json names (read first, so appends during the walk do no harm): a cut
    at the end is found there. With a `checkpoint` (`head()` saved earlier), the record at its seq must carry
    its hash: proof that nothing up to it was removed or changed, even if HEAD.json was rewritten too."""
    if checkpoint is not None and not (isinstance(checkpoint.get("seq"), int) and "hash" in checkpoint):
        return _failed(0, Problem("checkpoint", 0, None, "the checkpoint is not a head (seq and hash)"))
    walk = _Walk(checkpoint)
    try:
        walk.run(store)
    except AuditUnavailable as exc:
        walk.problem = walk.problem or Problem(HEAD, 0, None, exc.message)
    except Exception as exc:  # a store error, or damage of a shape not foreseen: still a finding, with its place
        walk.problem = Problem(walk.at[0], walk.at[1], None, f"could not be read: {type(exc).__name__}: {exc}")
    if walk.problem is not None:
        return _failed(walk.count, walk.problem)
    result: dict[str, Any] = {"ok": True, "records": walk.count, "head": walk.last_hash}
    if checkpoint is not None:
        result["checkpoint"] = {"seq": checkpoint["seq"], "hash": checkpoint["hash"], "verified": True}
    return result


class _Walk:
    """One pass over the chain: the records verified, the last hash, the first problem and where it was."""

    def __init__(self, checkpoint: dict[str, Any] | None) -> None:
        self.checkpoint = checkpoint
        self.count, self.last_hash = 0, GENESIS
        self.problem: Problem | None = None
        self.at: tuple[str, int] = (HEAD, 0)

    def run(self, store: ObjectStore) -> None:
        head_problem = None
        try:
            pointer = read_pointer(store)
            # One read of HEAD serves both checks (an older HEAD without seq: its segment's last record).
            expected = None if pointer is None else pointer if "seq" in pointer else head(store)
            if pointer is not None and not store.exists(pointer["segment"]):
                what = f"HEAD.json names segment {pointer['segment']}, which is missing (removed, or HEAD rewritten)"
                head_problem = Problem(HEAD, 0, None, what)
        except AuditUnavailable as exc:
            expected, head_problem = None, Problem(HEAD, 0, None, exc.message)
        checkpoint = self.checkpoint
        checkpoint_seen = checkpoint is None or checkpoint["seq"] == 0
        for key, number, line in iter_records(store):
            self.at = (key, number)
            self.problem = self._check(line, expected)
            if self.problem is not None:
                return
            checkpoint_seen = checkpoint_seen or (checkpoint is not None and self.count == checkpoint["seq"])
        if head_problem is not None:
            self.problem = head_problem
            return
        strays = [i.key for i in store.list(PREFIX) if i.key.endswith(".jsonl") and not SEGMENT.fullmatch(i.key)]
        if strays:
            self.problem = Problem(strays[0], 0, None, "a file in the log that no append writes (added)")
            return
        end = Problem("end of log", 0, self.count + 1, "")
        if expected is None and self.count:
            self.problem = replace(end, problem="HEAD.json is missing: the end of the chain cannot be checked")
        elif expected is not None and self.count < expected["seq"]:
            what = f"records {self.count + 1}..{expected['seq']} are missing (removed from the end)"
            self.problem = replace(end, problem=what)
        elif not checkpoint_seen:
            assert checkpoint is not None
            what = f"records {self.count + 1}..{checkpoint['seq']} are missing (removed, up to the checkpoint)"
            self.problem = replace(end, problem=what)

    def _check(self, line: str, expected: dict[str, Any] | None) -> Problem | None:
        key, number = self.at
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return Problem(key, number, None, "record is not valid JSON (modified)")
        if not isinstance(record, dict):
            return Problem(key, number, None, f"record is a JSON {type(record).__name__}, not an object (modified)")
        seq, expected_seq = record.get("seq"), self.count + 1
        if record.get("hash") != record_hash(record):
            return Problem(key, number, seq, "record content does not match its hash (modified)")
        if record.get("prev_hash") != self.last_hash:
            what = "a record before it was removed, reordered or this one appended out of chain"
            if isinstance(seq, int) and seq > expected_seq:
                what = f"records {expected_seq}..{seq - 1} are missing (removed)"
            elif isinstance(seq, int) and seq < expected_seq:
                what = f"seq {seq} comes after seq {expected_seq - 1} (reordered)"
            return Problem(key, number, seq, f"prev_hash does not link to the record before: {what}")
        if seq != expected_seq:
            return Problem(key, number, seq, f"expected seq {expected_seq}")
        for anchor, name in ((expected, "HEAD.json"), (self.checkpoint, "the checkpoint")):
            if anchor is not None and seq == anchor["seq"] and record["hash"] != anchor["hash"]:
                return Problem(key, number, seq, f"record differs from the one {name} names (rewritten)")
        self.last_hash, self.count = record["hash"], expected_seq
        return None


def _failed(verified: int, problem: Problem) -> dict[str, Any]:
    return {"ok": False, "records_verified": verified, "first_bad_record": problem.as_dict()}
