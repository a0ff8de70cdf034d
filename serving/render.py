"""How answers are written: faces, matches, records and the search answer as the API's response models."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from cluster.collections.manifest import Manifest
from cluster.models.faces import Face
from serving.fanout import Hit
from serving.schemas import FaceDetail, FaceRecord, Match, Threshold, VectorAnswer

LEADS_NOTICE = (
    "Matches are investigative leads, not identifications. Each needs review by a trained person before any action; "
    "estimated_false_match_rate is per comparison, expected_false_matches_in_collection is for this whole search."
)


def face_detail(face: Face) -> FaceDetail:
    return FaceDetail(
        bbox=[round(float(v), 1) for v in face.bbox],
        landmarks=np.round(face.landmarks, 1).tolist(),
        confidence=round(face.confidence, 4),
        quality=face.quality.as_dict(),
        skip_reasons=[str(r) for r in face.skip_reasons],
    )


def match(hit: Hit, rate: float, bound: bool, manifest: Manifest) -> Match:
    record = hit.record
    return Match(
        face_id=record.get("face_id", f"{hit.faiss_id:016x}"),
        external_image_id=record.get("external_image_id"),
        source=record.get("source_key"),
        bbox=[round(float(v), 1) for v in record.get("bbox") or []],
        similarity=round(hit.similarity, 6),
        estimated_false_match_rate=rate,
        false_match_rate_is_bound=bound,
        expected_false_matches_in_collection=rate * manifest.face_count,
        shard=hit.shard,
    )


def answer(
    manifest: Manifest,
    limits: dict[str, Any],
    matches: list[Match],
    missing: list[int],
    purpose: str | None,
    case_id: str | None,
) -> VectorAnswer:
    return VectorAnswer(
        collection=manifest.name,
        model_id=manifest.model_id,
        matches=matches,
        threshold=Threshold(**limits),
        collection_faces=manifest.face_count,
        partial=bool(missing),
        missing_shards=missing,
        purpose=purpose,
        case_id=case_id,
        notice=LEADS_NOTICE,
    )


def face_record(record: dict[str, Any]) -> FaceRecord:
    """A stored record as the API shows it: no embedding, quality decoded."""
    quality = record.get("quality")
    indexed_at = record.get("indexed_at")
    return FaceRecord(
        face_id=record["face_id"],
        external_image_id=record.get("external_image_id"),
        source=record.get("source_key"),
        source_etag=record.get("source_etag"),
        bbox=list(record.get("bbox") or []),
        confidence=float(record.get("confidence") or 0.0),
        quality=json.loads(quality) if isinstance(quality, str) else quality or {},
        indexed_at=None if indexed_at is None else str(indexed_at),
    )


def image_size(blob: bytes) -> tuple[int, int] | None:
    """(width, height) of the upright image, read from its header (None if it cannot be read)."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # the pipeline names what is wrong with an unreadable image
        return None
    return (height, width) if turned else (width, height)
