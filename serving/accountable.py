"""What makes every action answerable: audit records (refusals included), purpose checks, audit reads, the report."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cluster.access import Action, Caller, KeyStore, authorize
from cluster.audit import read_records
from cluster.errors import REFUSAL_CODES, FacegridError, InvalidRequest, PurposeRequired
from cluster.index_spec import SearchKnobs
from cluster.pipeline.errors import ImageError
from cluster.raycluster import append_audit
from cluster.settings import Settings
from cluster.storage import LocalStore, ObjectStore
from cluster.transparency import transparency_report

# Larger nprobe or efSearch than this only burns CPU: at 4,096 an IVF search is close to exhaustive.
MAX_KNOB = 4096
# A case reference, not a document: every search's audit record carries it (a 1 MB one slowed every later append).
MAX_CASE_ID = 128
MAX_PURPOSE = 64


def clipped(text: str | None, limit: int) -> str | None:
    """Text as given up to `limit` characters; longer text cut there and its length said."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Accountable:
    """Base of the service: every public method takes the Caller, checks its role, and records what it did.

    `accountable=False` exists only for benchmarks that measure what auth and audit cost; no setting reaches it.
    """

    def __init__(self, settings: Settings, store: ObjectStore, accountable: bool) -> None:
        self.settings = settings
        self.store = store
        self.accountable = accountable
        self.keys = KeyStore(store)
        # Model inference releases the GIL; two threads keep the event loop free on a two-core machine.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="facegrid-work")

    async def audit(self, caller: Caller, entry: dict[str, Any]) -> None:
        if not self.accountable:
            return
        record = {"key_id": caller.key_id, "role": str(caller.role), "client": caller.client, **entry}
        if isinstance(self.store, LocalStore):
            # A local append takes about 0.3 ms, less than handing it to a thread would.
            append_audit(self.settings, self.store, record)
            return
        await asyncio.get_running_loop().run_in_executor(self.executor, append_audit, self.settings, self.store, record)

    @asynccontextmanager
    async def audited(self, caller: Caller, entry: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Record the action whatever happens: the body adds its results to the entry; refusals are recorded too."""
        try:
            yield entry
        except (FacegridError, ImageError) as exc:
            code = exc.code if isinstance(exc, FacegridError) else str(exc.reason)
            outcome = "refused" if code in REFUSAL_CODES else "error"
            await self.audit(caller, {**entry, "outcome": outcome, "code": code})
            raise
        await self.audit(caller, {**entry, "outcome": "ok"})

    async def audit_records(
        self, caller: Caller, start: datetime | None, end: datetime | None, limit: int
    ) -> dict[str, Any]:
        authorize(caller, Action.AUDIT_READ)
        start, end = (t.replace(tzinfo=UTC) if t and t.tzinfo is None else t for t in (start, end))
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(self.executor, read_records, self.store, start, end)
        entry = {"action": "export", "from": str(start), "to": str(end), "records": min(len(records), limit)}
        await self.audit(caller, {**entry, "outcome": "ok"})
        return {"records": records[:limit], "total": len(records), "truncated": len(records) > limit}

    async def transparency(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return transparency_report(await loop.run_in_executor(self.executor, read_records, self.store))

    def check_purpose(self, purpose: str | None, case_id: str | None) -> None:
        if not purpose:
            raise PurposeRequired(f"a purpose is required; one of {self.settings.serving.purposes}")
        if purpose not in self.settings.serving.purposes:
            allowed = self.settings.serving.purposes
            raise PurposeRequired(f"purpose {clipped(purpose, MAX_PURPOSE)!r} is not allowed here; one of {allowed}")
        if not case_id or not case_id.strip():
            raise PurposeRequired("a case_id is required: the reference of the case this search serves")
        if len(case_id) > MAX_CASE_ID:
            raise InvalidRequest(f"case_id is {len(case_id)} characters; at most {MAX_CASE_ID}")


@dataclass(frozen=True)
class SearchRequest:
    """What a search asks, besides the probe: why, for which case, how strict, how many, how thorough."""

    purpose: str | None
    case_id: str | None
    threshold: float | None = None
    max_results: int = 10
    max_faces: int = 1
    knobs: SearchKnobs = field(default_factory=SearchKnobs)

    def check(self, max_results: int) -> None:
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:  # NaN fails this too
            raise InvalidRequest("threshold must be a cosine similarity between -1 and 1")
        if not 1 <= self.max_results <= max_results:
            raise InvalidRequest(f"max_results must be between 1 and {max_results}")
        if self.max_faces < 1:
            raise InvalidRequest("max_faces must be at least 1")
        for name, value in (("nprobe", self.knobs.nprobe), ("ef_search", self.knobs.ef_search)):
            if value is not None and not 1 <= value <= MAX_KNOB:
                raise InvalidRequest(f"{name} must be between 1 and {MAX_KNOB}")


def search_entry(action: str, collection: str | None, request: SearchRequest, probe: str) -> dict[str, Any]:
    return {
        "action": action,
        "collection": collection,
        "purpose": clipped(request.purpose, MAX_PURPOSE),
        "case_id": clipped(request.case_id, MAX_CASE_ID),
        "probe_sha256": probe,
        # As asked; NaN and infinity as text, so that the audit stays strict JSON.
        "threshold_requested": request.threshold
        if request.threshold is None or math.isfinite(request.threshold)
        else str(request.threshold),
    }


def record_results(entry: dict[str, Any], result: dict[str, Any], searched: list[dict[str, Any]]) -> None:
    entry["threshold_applied"] = result["threshold"]["applied"]
    entry["partial"] = result["partial"]
    entry["results"] = [
        [{"face_id": m["face_id"], "similarity": m["similarity"]} for m in face["matches"]] for face in searched
    ]
