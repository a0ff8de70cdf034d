"""A collection's other versions: the shadow an upgrade builds (another recipe's records of the same faces, beside
the live version) and the version a cut-over replaced (kept for a rollback for a while).

In the store, under the collection:
- `upgrade/shadow.json`: the upgrade (target recipe and its pinned model and calibration, policy, summary);
  `upgrade/<id>/part-<digest>.parquet` its records and `part-<digest>.json` each part's result (the photos it
  settled), named by the photos the part holds.
- `versions/previous.json`: the manifest a cut-over or rollback replaced, and until when it is kept.
Both hold faces, so erasure reaches them (`held_record_files`), and neither is ever served until switched to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from cluster.collections.live import all_faces, live_segments, log_prefix
from cluster.collections.manifest import Collections, Manifest, now
from cluster.storage import ObjectNotFound, ObjectStore

MISSING_POLICIES = ("stop", "drop")
# How long the version a cut-over replaced stays ready for a rollback, unless the cut-over says otherwise.
DEFAULT_KEEP_PREVIOUS_S = 7 * 24 * 3600.0
# Entries a summary lists by name; its counts are always whole.
LISTED = 50


class Shadow(BaseModel):
    collection: str
    upgrade_id: str
    recipe: str
    # The manifest fields the new recipe pins (model and its file, fused model, width, calibration).
    target: dict[str, Any]
    from_version: int
    # Photos that cannot be read again (gone, changed, never kept): "stop" leaves them unsettled (the cut-over
    # waits until they are back), "drop" settles them without faces (their faces leave with the cut-over).
    missing: Literal["stop", "drop"] = "stop"
    started_at: str = Field(default_factory=now)
    by: str | None = None
    summary: dict[str, Any] | None = None

    @property
    def folder(self) -> str:
        return f"{Collections.prefix(self.collection)}upgrade/{self.upgrade_id}"

    @property
    def log(self) -> str:
        """The live log the version gets at its cut-over: its own, so no add embedded before lands in it."""
        return f"log-{self.upgrade_id}"


class Previous(BaseModel):
    manifest: Manifest
    replaced_at: str
    kept_until: str
    by: str | None = None


def live_photos(collections: Collections, manifest: Manifest) -> set[tuple[str, str]]:
    """(location, etag) of every photo the collection holds a face of now, live log included, erased left out."""
    table = all_faces(collections, manifest, ["face_id", "source_key", "source_etag"])
    return set(zip(table.column("source_key").to_pylist(), table.column("source_etag").to_pylist(), strict=True))


class Versions:
    def __init__(self, store: ObjectStore, collection: str) -> None:
        self.store = store
        self.collection = collection
        self.collections = Collections(store)
        prefix = Collections.prefix(collection)
        self.shadow_key = f"{prefix}upgrade/shadow.json"
        self.previous_key = f"{prefix}versions/previous.json"

    def shadow(self) -> Shadow | None:
        try:
            return Shadow.model_validate_json(self.store.get(self.shadow_key))
        except ObjectNotFound:
            return None

    def begin(self, wanted: Shadow) -> Shadow:
        """The upgrade to go on with: the stored one when it is to the same recipe with the same policy (a rerun
        resumes it), else `wanted`, replacing any other (whose records go)."""
        held = self.shadow()
        if held is not None and (held.recipe, held.missing) == (wanted.recipe, wanted.missing):
            return held
        if held is not None:
            self.drop_shadow(held)
        self.write_shadow(wanted)
        return wanted

    def write_shadow(self, shadow: Shadow) -> None:
        self.store.put(self.shadow_key, shadow.model_dump_json(indent=2).encode())

    def drop_shadow(self, shadow: Shadow, keep_records: bool = False) -> None:
        self.store.delete(self.shadow_key)
        for info in self.store.list(shadow.folder + "/"):
            if not keep_records or info.key.endswith(".json"):
                self.store.delete(info.key)

    def results(self, shadow: Shadow) -> list[dict[str, Any]]:
        """Every finished part's result, in part order."""
        found = []
        for info in self.store.list(shadow.folder + "/"):
            if info.key.endswith(".json"):
                try:
                    found.append(json.loads(self.store.get(info.key)))
                except ObjectNotFound:
                    continue  # a cut-over or another upgrade removed it meanwhile
        return sorted(found, key=lambda r: int(r["part"]))

    def record_files(self, shadow: Shadow) -> list[str]:
        return [r["face_file"] for r in self.results(shadow) if r.get("face_file")]

    def unsettled(self, shadow: Shadow, manifest: Manifest) -> list[tuple[str, str]]:
        """Photos the collection holds faces of now that no part of the upgrade settled."""
        settled = {(p[0], p[1]) for r in self.results(shadow) for p in r["photos"]}
        return sorted(live_photos(self.collections, manifest) - settled)

    def summarize(self, shadow: Shadow, seconds: float, embedded_now: int) -> dict[str, Any]:
        """Totals over every part, what is still unsettled, stored with the shadow and returned."""
        results = self.results(shadow)
        unsettled = self.unsettled(shadow, self.collections.get(self.collection))
        summary: dict[str, Any] = {
            "upgrade_id": shadow.upgrade_id,
            "collection": self.collection,
            "recipe": shadow.recipe,
            "model_id": shadow.target["model_id"],
            "photos": len({(p[0], p[1]) for r in results for p in r["photos"]}),
            "photos_embedded_now": embedded_now,
            "faces": sum(r["faces"] for r in results),
            "kept": sum(r["kept"] for r in results),
            "found_count": sum(len(r["found"]) for r in results),
            "lost_count": sum(len(r["lost"]) for r in results),
            "gone_count": len({g["source"] for r in results for g in r["gone"]}),
            "found": [f for r in results for f in r["found"]][:LISTED],
            "lost": [f for r in results for f in r["lost"]][:LISTED],
            "gone": list({g["source"]: g for r in results for g in r["gone"]}.values())[:LISTED],
            "unsettled_count": len(unsettled),
            "unsettled": [loc for loc, _ in unsettled][:LISTED],
            "ready": not unsettled,
            "seconds": round(seconds, 1),
        }
        shadow.summary = summary
        self.write_shadow(shadow)
        return summary

    def previous(self) -> Previous | None:
        try:
            return Previous.model_validate_json(self.store.get(self.previous_key))
        except ObjectNotFound:
            return None

    def keep_previous(self, manifest: Manifest, keep_s: float, by: str | None) -> None:
        until = datetime.now(UTC) + timedelta(seconds=keep_s)
        held = Previous(manifest=manifest, replaced_at=now(), kept_until=until.isoformat(timespec="seconds"), by=by)
        self.store.put(self.previous_key, held.model_dump_json(indent=2).encode())

    def held_record_files(self) -> list[str]:
        """Record files of the shadow and of the previous version that the current version does not name (for
        erasure: a face erased leaves every version)."""
        files: list[str] = []
        shadow = self.shadow()
        if shadow is not None:  # every part's records, a part still being written included (a listing, no reads)
            files += [i.key for i in self.store.list(shadow.folder + "/") if i.key.endswith(".parquet")]
        previous = self.previous()
        if previous is not None:
            files += previous.manifest.face_files
            files += [i.key for i in live_segments(self.collections, previous.manifest)]
        return files

    def prune(self, current: Manifest) -> bool:
        """Remove the previous version once its time is up: its record files and live log that the current version
        does not name. Whether it was removed."""
        previous = self.previous()
        if previous is None or datetime.fromisoformat(previous.kept_until) > datetime.now(UTC):
            return False
        named = set(current.face_files)
        shadow = self.shadow()
        if shadow is not None:
            named |= set(self.record_files(shadow))
        self.store.delete(self.previous_key)
        for key in previous.manifest.face_files:
            if key not in named:
                self.store.delete(key)
        if previous.manifest.log != current.log:
            for info in self.store.list(log_prefix(previous.manifest)):
                self.store.delete(info.key)
        return True
