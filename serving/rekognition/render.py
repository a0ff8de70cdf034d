"""Our answers in Rekognition's shapes: face ids as UUIDs, boxes and landmarks as ratios of the image, confidence
and quality on 0-100, collection timestamps and pagination tokens."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

from serving.rekognition.shapes import InvalidParameter
from serving.schemas import FaceDetail, FaceRecord, Match

# Ours: 16 lowercase hex digits. Rekognition's: a lowercase UUID. The map pads ours with a fixed tail, so it is
# reversible and a UUID that does not end so is no face of ours.
UUID_TAIL = "-0000-000000000000"
LANDMARKS = ("eyeLeft", "eyeRight", "nose", "mouthLeft", "mouthRight")


def face_uuid(face_id: str) -> str:
    return f"{face_id[:8]}-{face_id[8:12]}-{face_id[12:16]}{UUID_TAIL}"


def face_id_of(uuid: str) -> str:
    """Our face id for a Rekognition FaceId ('' for one that cannot be ours: it then matches no face)."""
    return uuid[:8] + uuid[9:13] + uuid[14:18] if uuid.endswith(UUID_TAIL) and len(uuid) == 36 else ""


def image_uuid(source: str | None) -> str | None:
    if source is None:
        return None
    digest = hashlib.sha256(source.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def box(bbox: list[float], size: tuple[int, int] | None) -> dict[str, float] | None:
    if size is None or len(bbox) != 4:
        return None
    width, height = size
    x1, y1, x2, y2 = bbox
    return {
        "Width": round((x2 - x1) / width, 6),
        "Height": round((y2 - y1) / height, 6),
        "Left": round(x1 / width, 6),
        "Top": round(y1 / height, 6),
    }


def detail(face: FaceDetail, size: tuple[int, int] | None) -> dict[str, Any]:
    """A detected face as Rekognition's FaceDetail (BoundingBox, Landmarks, Pose, Quality, Confidence)."""
    quality = face.quality
    out: dict[str, Any] = {"Confidence": round(face.confidence * 100, 4)}
    framed = box(face.bbox, size)
    if framed is not None and size is not None:
        out["BoundingBox"] = framed
        out["Landmarks"] = [
            {"Type": name, "X": round(x / size[0], 6), "Y": round(y / size[1], 6)}
            for name, (x, y) in zip(LANDMARKS, face.landmarks, strict=False)
        ]
    if quality:
        out["Pose"] = {k.title(): quality.get(k, 0.0) for k in ("roll", "yaw", "pitch")}
        out["Quality"] = {
            "Brightness": round(min(100.0, quality.get("brightness", 0.0) / 2.55), 4),
            "Sharpness": round(min(100.0, quality.get("sharpness", 0.0)), 4),
        }
    return out


def compared(face: FaceDetail, size: tuple[int, int] | None) -> dict[str, Any]:
    """Rekognition's ComparedFace: a FaceDetail without the attributes CompareFaces does not return."""
    return {
        k: v
        for k, v in detail(face, size).items()
        if k in ("BoundingBox", "Confidence", "Landmarks", "Pose", "Quality")
    }


def face(found: FaceRecord | Match, model_id: str, user_id: str | None = None) -> dict[str, Any]:
    """A collection's face (Rekognition's Face), from its record or a search's match. Its box needs the source
    image's size, which records do not keep: left out."""
    out: dict[str, Any] = {
        "FaceId": face_uuid(found.face_id),
        "ImageId": image_uuid(found.source),
        "IndexFacesModelVersion": model_id,
    }
    if found.external_image_id:
        out["ExternalImageId"] = found.external_image_id
    if isinstance(found, FaceRecord):  # a match carries its similarity instead
        out["Confidence"] = round(found.confidence * 100, 4)
    if user_id is not None:
        out["UserId"] = user_id
    return out


def timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def offset_of(next_token: str | None) -> int:
    """The offset a NextToken stands for; a token this server did not issue is refused."""
    if not next_token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(next_token.encode()).decode().partition(":")
        if kind == "offset" and int(value) >= 0:
            return int(value)
    except ValueError:
        pass
    raise InvalidParameter("NextToken is not a token this server issued")
