"""Transparency report from the audit log: searches per purpose, role and month, refusals, deletions, index jobs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

SEARCH_ACTIONS = ("search", "search-vector", "search-face", "search-users", "compare")


def transparency_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    searches = [r for r in records if r.get("action") in SEARCH_ACTIONS]
    done = [r for r in searches if r.get("outcome") == "ok"]
    refused = [r for r in searches if r.get("outcome") == "refused"]
    deletions = [r for r in records if r.get("action") == "delete-faces" and r.get("outcome") == "ok"]
    return {
        "records": len(records),
        "period": {"from": records[0]["time"] if records else None, "to": records[-1]["time"] if records else None},
        "searches": len(done),
        "searches_by_purpose": dict(Counter(r.get("purpose") or "none" for r in done).most_common()),
        "searches_by_role": dict(Counter(r.get("role") for r in done).most_common()),
        "searches_by_month": dict(sorted(Counter(r["time"][:7] for r in done).items())),
        "refused_searches": len(refused),
        "refused_by_reason": dict(Counter(r.get("code") for r in refused).most_common()),
        "failed_searches": len(searches) - len(done) - len(refused),
        "faces_deleted": sum(len(r.get("deleted_faces", [])) for r in deletions),
        "deletion_requests": len(deletions),
        "index_jobs": sum(1 for r in records if r.get("action") == "index" and r.get("outcome") == "ok"),
        "exports": sum(1 for r in records if r.get("action") == "export"),
        "key_changes": sum(1 for r in records if str(r.get("action", "")).startswith("key-")),
        **review_counts(records, done),
    }


def returned_faces(record: dict[str, Any]) -> list[str]:
    """Face ids a search's record says were returned, in rank order (per searched face, or per person); none for
    a comparison, whose results are the target photo's faces."""
    out = []
    for group in record.get("results") or []:
        if isinstance(group, list):
            out += [m["face_id"] for m in group if isinstance(m, dict) and "face_id" in m]
    return out


def review_counts(records: list[dict[str, Any]], searches: list[dict[str, Any]]) -> dict[str, Any]:
    """Human review: decisions by kind, searches whose every returned face was decided, and how often reviewers
    rejected the top candidate (the figure critics of face search ask for)."""
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for record in records:
        if record.get("action") == "review" and record.get("outcome") == "ok":
            latest[(record["search_seq"], record["face_id"])] = record
    returned = {s["seq"]: returned_faces(s) for s in searches}
    reviewed = sum(1 for seq, faces in returned.items() if faces and all((seq, f) in latest for f in faces))
    top = [r for r in latest.values() if r.get("rank") == 1]
    return {
        "reviews": len(latest),
        "decisions": dict(Counter(r["decision"] for r in latest.values()).most_common()),
        "searches_with_candidates": sum(1 for faces in returned.values() if faces),
        "searches_reviewed": reviewed,
        "top_candidates_decided": len(top),
        "top_candidates_rejected": sum(1 for r in top if r["decision"] == "not a match"),
    }


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
