"""Shadow comparison: the same searches against the live version and an upgrade's shadow, exactly (every face
compared), so that the difference shown is the recipes' and not an index's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.collections.erasures import ErasureRegister
from cluster.collections.live import all_faces
from cluster.collections.manifest import Collections, Manifest
from cluster.collections.records import deduplicate
from cluster.collections.snapshot import vectors_of
from cluster.collections.versions import LISTED, Shadow, Versions
from cluster.storage import ObjectStore

TOP = 10
COLUMNS = ["face_id", "external_image_id", "embedding", "indexed_at"]


class Version:
    """One version's faces in memory: ids, external image ids, unit vectors, and its floor similarity."""

    def __init__(self, table: pa.Table, dim: int, floor: float) -> None:
        self.ids: list[str] = table.column("face_id").to_pylist()
        self.external: list[str] = table.column("external_image_id").to_pylist()
        self.vectors = vectors_of(table.column("embedding").combine_chunks(), dim)
        self.row = {face_id: row for row, face_id in enumerate(self.ids)}
        self.floor = floor

    def search(self, query: np.ndarray, skip: str | None) -> tuple[list[str], set[str]]:
        """(the top 10 face ids, every face id above the floor), the query's own face left out."""
        scores = self.vectors @ query
        order = np.argsort(-scores, kind="stable")
        top = [self.ids[i] for i in order[: TOP + 1] if self.ids[i] != skip][:TOP]
        above = {self.ids[i] for i in np.flatnonzero(scores >= self.floor) if self.ids[i] != skip}
        return top, above


def _shadow_faces(store: ObjectStore, shadow: Shadow) -> pa.Table:
    files = Versions(store, shadow.collection).record_files(shadow)
    tables = [store.get_parquet(key, COLUMNS) for key in files]
    if not tables:
        raise ValueError("the upgrade holds no faces")
    table = deduplicate(pa.concat_tables(tables))
    erased = pa.array(sorted(ErasureRegister(store, shadow.collection).erased_ids()), pa.string())
    return table.filter(pc.invert(pc.is_in(table.column("face_id"), erased)))


def compare_versions(
    store: ObjectStore,
    manifest: Manifest,
    shadow: Shadow,
    sample: int,
    probes: list[tuple[str, np.ndarray, np.ndarray]],
    floors: tuple[float, float],
    mates_by_folder: bool = False,
) -> dict[str, Any]:
    """Per probe and in total: overlap of the two top 10s, faces gained and lost above the floors. The probes are
    a seeded sample of the faces both versions hold (each searched with its own vector in each version), then
    the probe photos given (`probes`: label, live vector, shadow vector). With `mates_by_folder`, faces whose
    external image ids share a folder (LFW's layout: person/photo) are mates, and each version's mates found
    above its floor are counted too."""
    live = Version(all_faces(Collections(store), manifest, COLUMNS), manifest.dim, floors[0])
    new = Version(_shadow_faces(store, shadow), int(shadow.target["dim"]), floors[1])
    common = sorted(set(live.ids) & set(new.ids))
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(common), size=min(sample, len(common)), replace=False).tolist()) if common else []
    queries: list[tuple[str, str | None, np.ndarray, np.ndarray]] = [
        (common[i], common[i], live.vectors[live.row[common[i]]], new.vectors[new.row[common[i]]]) for i in chosen
    ]
    queries += [(label, None, a, b) for label, a, b in probes]
    rows = []
    for label, own, a, b in queries:
        top_live, above_live = live.search(np.asarray(a, np.float32), own)
        top_new, above_new = new.search(np.asarray(b, np.float32), own)
        row: dict[str, Any] = {
            "probe": label,
            "top10_overlap": len(set(top_live) & set(top_new)),
            "above_floor_live": len(above_live),
            "above_floor_shadow": len(above_new),
            "gained_count": len(above_new - above_live),
            "lost_count": len(above_live - above_new),
            "gained": sorted(above_new - above_live)[:LISTED],
            "lost": sorted(above_live - above_new)[:LISTED],
        }
        if mates_by_folder and own is not None:
            folder = _folder(live.external[live.row[own]])
            row["mates"] = sum(_folder(live.external[live.row[f]]) == folder for f in common if f != own)
            row["mates_live"] = sum(_folder(live.external[live.row[f]]) == folder for f in above_live)
            row["mates_shadow"] = sum(_folder(new.external[new.row[f]]) == folder for f in above_new)
        rows.append(row)
    total: dict[str, Any] = {
        "probes": len(rows),
        "faces_live": len(live.ids),
        "faces_shadow": len(new.ids),
        "faces_both": len(common),
        "mean_top10_overlap": round(float(np.mean([r["top10_overlap"] for r in rows])) if rows else 0.0, 3),
        "gained": sum(r["gained_count"] for r in rows),
        "lost": sum(r["lost_count"] for r in rows),
        "floor_live": round(live.floor, 6),
        "floor_shadow": round(new.floor, 6),
        "recipe_live": manifest.face_recipe.name,
        "recipe_shadow": shadow.recipe,
    }
    if mates_by_folder:
        for key in ("mates", "mates_live", "mates_shadow"):
            total[key] = sum(r.get(key, 0) for r in rows)
    return {"total": total, "probes": rows}


def _folder(external_image_id: str) -> str:
    return external_image_id.rsplit("/", 1)[0] if "/" in external_image_id else external_image_id
