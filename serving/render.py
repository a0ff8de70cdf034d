"""How search, compare and detect answers are written: faces, matches and the search answer as plain JSON types."""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.collection import Manifest
from cluster.pipeline.faces import Face
from serving.accountable import SearchRequest
from serving.fanout import Hit

LEADS_NOTICE = (
    "Matches are investigative leads, not identifications. Each needs review by a trained person before any action; "
    "estimated_false_match_rate is per comparison, expected_false_matches_in_collection is for this whole search."
)


def face_json(face: Face) -> dict[str, Any]:
    return {
        "bbox": [round(float(v), 1) for v in face.bbox],
        "landmarks": np.round(face.landmarks, 1).tolist(),
        "confidence": round(face.confidence, 4),
        "quality": face.quality.as_dict(),
        "skip_reasons": [str(r) for r in face.skip_reasons],
    }


def match_json(hit: Hit, rate: float, manifest: Manifest) -> dict[str, Any]:
    record = hit.record
    return {
        "face_id": record.get("face_id", f"{hit.faiss_id:016x}"),
        "external_image_id": record.get("external_image_id"),
        "source": record.get("source_key"),
        "bbox": [round(float(v), 1) for v in record.get("bbox") or []],
        "similarity": round(hit.similarity, 6),
        "estimated_false_match_rate": rate,
        "expected_false_matches_in_collection": rate * manifest.face_count,
        "shard": hit.shard,
    }


def answer_json(
    manifest: Manifest,
    limits: dict[str, Any],
    matches: list[dict[str, Any]],
    missing: list[int],
    request: SearchRequest,
) -> dict[str, Any]:
    return {
        "collection": manifest.name,
        "model_id": manifest.model_id,
        "matches": matches,
        "threshold": limits,
        "collection_faces": manifest.face_count,
        "partial": bool(missing),
        "missing_shards": missing,
        "purpose": request.purpose,
        "case_id": request.case_id,
        "notice": LEADS_NOTICE,
    }
