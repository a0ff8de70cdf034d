"""Transparency report from the audit log: searches per purpose, role and month, refusals, deletions, index jobs."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cluster.audit.log import head, records_from
from cluster.storage import ObjectStore

SEARCH_ACTIONS = ("search", "search-vector", "search-face", "search-users", "compare")


def returned_faces(record: dict[str, Any]) -> list[str]:
    """Face ids a search's record says were returned, in rank order (per searched face, or per person); none for
    a comparison, whose results are the target photo's faces."""
    out = []
    for group in record.get("results") or []:
        if isinstance(group, list):
            out += [m["face_id"] for m in group if isinstance(m, dict) and "face_id" in m]
    return out


class Tally:
    """The report's counts, folded one record at a time: a server keeps one and folds only records appended
    since its last look, so a report costs the same at 7,000 records as at 7 million (it used to re-read the log
    on every request, and 8 clients asking for it stalled every search)."""

    def __init__(self) -> None:
        self.seq = 0  # the last record folded
        self.records = 0
        self.first_time: str | None = None
        self.last_time: str | None = None
        self.by_purpose: Counter[str] = Counter()
        self.by_role: Counter[str] = Counter()
        self.by_month: Counter[str] = Counter()
        self.refused_by_reason: Counter[str] = Counter()
        self.searches = self.refused = self.failed = 0
        self.faces_deleted = self.deletion_requests = self.index_jobs = self.exports = self.key_changes = 0
        # Human review: the latest decision per (search, face), and each search's faces still undecided.
        self.decisions: dict[tuple[int, str], tuple[str, bool]] = {}
        self.by_decision: Counter[str] = Counter()
        self.undecided: dict[int, set[str]] = {}
        self.with_candidates = self.reviewed = 0
        # Per collection: its per-search promise, the searches answered under it, those it refused as beyond reach.
        self.promises: dict[str, dict[str, Any]] = {}

    def fold(self, records: Iterable[dict[str, Any]]) -> Tally:
        for record in records:
            self._fold(record)
        return self

    def _fold(self, record: dict[str, Any]) -> None:
        self.seq = max(self.seq, int(record.get("seq") or 0))
        self.records += 1
        self.first_time = self.first_time or record.get("time")
        self.last_time = record.get("time")
        action, outcome = record.get("action"), record.get("outcome")
        self._promise(record, action, outcome)
        if action in SEARCH_ACTIONS:
            if outcome == "ok":
                self.searches += 1
                self.by_purpose[record.get("purpose") or "none"] += 1
                self.by_role[str(record.get("role"))] += 1
                self.by_month[str(record.get("time", ""))[:7]] += 1
                faces = returned_faces(record)
                if faces:
                    self.with_candidates += 1
                    self.undecided[int(record["seq"])] = set(faces)
            elif outcome == "refused":
                self.refused += 1
                self.refused_by_reason[str(record.get("code"))] += 1
            else:
                self.failed += 1
        elif action == "delete-faces" and outcome == "ok":
            self.faces_deleted += len(record.get("deleted_faces", []))
            self.deletion_requests += 1
        elif action == "index" and outcome == "ok":
            self.index_jobs += 1
        elif action == "export":
            self.exports += 1
        elif action == "review" and outcome == "ok":
            self._decided(int(record["search_seq"]), str(record["face_id"]), record)
        if str(action or "").startswith("key-"):
            self.key_changes += 1

    def _promise(self, record: dict[str, Any], action: Any, outcome: Any) -> None:
        collection, promise = record.get("collection"), record.get("max_false_candidates_per_search")
        if not isinstance(collection, str):
            return
        if not isinstance(promise, int | float) or isinstance(promise, bool):
            promise = None
        if action == "delete-collection" and outcome == "ok":
            self.promises.pop(collection, None)
            return
        held = self.promises.setdefault(
            collection,
            {"max_false_candidates_per_search": None, "searches_under_promise": 0, "refused_beyond_its_reach": 0},
        )
        if action in ("create-collection", "promise-collection") and outcome == "ok":
            held["max_false_candidates_per_search"] = promise
        elif action in SEARCH_ACTIONS and outcome == "ok" and promise is not None:
            held["searches_under_promise"] += 1
        elif action in SEARCH_ACTIONS and record.get("code") == "PROMISE_NOT_SUPPORTED":
            held["refused_beyond_its_reach"] += 1

    def _decided(self, search_seq: int, face_id: str, record: dict[str, Any]) -> None:
        """A reviewer's decision; a later one on the same face of the same search replaces it."""
        old = self.decisions.get((search_seq, face_id))
        if old is not None:
            self.by_decision[old[0]] -= 1
        self.decisions[(search_seq, face_id)] = (str(record["decision"]), record.get("rank") == 1)
        self.by_decision[str(record["decision"])] += 1
        waiting = self.undecided.get(search_seq)
        if waiting is not None:
            waiting.discard(face_id)
            if not waiting:
                self.reviewed += 1
                del self.undecided[search_seq]

    def report(self) -> dict[str, Any]:
        top = [decision for decision, is_top in self.decisions.values() if is_top]
        return {
            "records": self.records,
            "period": {"from": self.first_time, "to": self.last_time},
            "searches": self.searches,
            "searches_by_purpose": dict(self.by_purpose.most_common()),
            "searches_by_role": dict(self.by_role.most_common()),
            "searches_by_month": dict(sorted(self.by_month.items())),
            "refused_searches": self.refused,
            "refused_by_reason": dict(self.refused_by_reason.most_common()),
            "failed_searches": self.failed,
            "faces_deleted": self.faces_deleted,
            "deletion_requests": self.deletion_requests,
            "index_jobs": self.index_jobs,
            "exports": self.exports,
            "key_changes": self.key_changes,
            "reviews": len(self.decisions),
            "decisions": dict((+self.by_decision).most_common()),
            "searches_with_candidates": self.with_candidates,
            "searches_reviewed": self.reviewed,
            "top_candidates_decided": len(top),
            "top_candidates_rejected": top.count("not a match"),
            "promises": {name: dict(held) for name, held in sorted(self.promises.items())},
        }


def transparency_report(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return Tally().fold(records).report()


class FollowedReport:
    """A tally that follows the store's chain: each refresh reads HEAD, then only the records appended since."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.tally = Tally()
        self.head: dict[str, Any] = {"seq": 0, "hash": None, "time": None}
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, Any]:
        with self._lock:
            self.head = head(self.store)
            if self.head["seq"] > self.tally.seq:
                self.tally.fold(r for r in records_from(self.store, self.tally.seq + 1) if r["seq"] <= self.head["seq"])
            return {**self.tally.report(), "head": self.head}


def write_chart(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (by_month, by_purpose) = plt.subplots(1, 2, figsize=(11, 4))
    months = report["searches_by_month"]
    by_month.bar(list(months), list(months.values()), color="#3b6ea5")
    by_month.set_title(f"searches per month ({report['refused_searches']} refused)")
    by_month.tick_params(axis="x", rotation=45)
    purposes = report["searches_by_purpose"]
    by_purpose.barh(list(purposes), list(purposes.values()), color="#a55b3b")
    by_purpose.set_title("searches per purpose")
    fig.suptitle(f"facegrid transparency: {report['faces_deleted']} faces deleted, {report['index_jobs']} index jobs")
    fig.tight_layout()
    path = out / "transparency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
