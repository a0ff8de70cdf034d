"""Face quality: size, sharpness, brightness, pose from landmarks; Rekognition-style filter levels and reasons."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum

import cv2
import numpy as np

from cluster.pipeline.align import UNIT_TEMPLATE


class QualityFilter(StrEnum):
    NONE = "NONE"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class SkipReason(StrEnum):
    SMALL_BOUNDING_BOX = "SMALL_BOUNDING_BOX"
    LOW_SHARPNESS = "LOW_SHARPNESS"
    LOW_BRIGHTNESS = "LOW_BRIGHTNESS"
    EXTREME_POSE = "EXTREME_POSE"
    LOW_CONFIDENCE = "LOW_CONFIDENCE"
    EXCEEDS_MAX_FACES = "EXCEEDS_MAX_FACES"


@dataclass(frozen=True)
class QualityBar:
    min_face_px: float
    min_sharpness: float
    min_brightness: float
    max_yaw: float
    max_pitch: float
    max_roll: float
    min_confidence: float


# Measured on 421 lfw-dev faces (median: 97 px, sharpness 50, brightness 115, |yaw| 11, |roll| 2; 5th percentile of
# sharpness 19, of brightness 75). LOW drops only clear failures, MEDIUM about the worst 5%, HIGH keeps the best ~70%.
QUALITY_BARS = {
    QualityFilter.NONE: QualityBar(0, 0, 0, 180, 180, 180, 0),
    QualityFilter.LOW: QualityBar(20, 5, 30, 60, 60, 60, 0.90),
    QualityFilter.MEDIUM: QualityBar(40, 15, 50, 45, 45, 45, 0.95),
    QualityFilter.HIGH: QualityBar(80, 30, 70, 25, 25, 25, 0.99),
}

_TEMPLATE_EYE_NOSE = UNIT_TEMPLATE[2, 1] - UNIT_TEMPLATE[0, 1]
_TEMPLATE_NOSE_MOUTH = UNIT_TEMPLATE[3, 1] - UNIT_TEMPLATE[2, 1]


@dataclass(frozen=True)
class FaceQuality:
    face_px: float
    sharpness: float
    brightness: float
    yaw: float
    pitch: float
    roll: float
    confidence: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def estimate_pose(points: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees from 5 landmarks: a coarse geometric estimate, enough to reject profiles."""
    left_eye, right_eye, nose, mouth_left, mouth_right = points.astype(np.float64)
    roll = math.degrees(math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    # Undo the roll so that the remaining offsets are out-of-plane rotation.
    c, s = math.cos(math.radians(-roll)), math.sin(math.radians(-roll))
    rot = np.array([[c, -s], [s, c]])
    le, re, no, ml, mr = (rot @ p for p in (left_eye, right_eye, nose, mouth_left, mouth_right))
    eye_mid, mouth_mid = (le + re) / 2, (ml + mr) / 2
    half_eye = max((re[0] - le[0]) / 2, 1e-6)
    yaw = math.degrees(math.asin(float(np.clip((no[0] - eye_mid[0]) / half_eye, -1, 1))))
    upper, lower = no[1] - eye_mid[1], mouth_mid[1] - no[1]
    frontal = _TEMPLATE_EYE_NOSE / (_TEMPLATE_EYE_NOSE + _TEMPLATE_NOSE_MOUTH)
    ratio = upper / max(upper + lower, 1e-6)
    pitch = math.degrees(math.asin(float(np.clip((ratio - frontal) * 2, -1, 1))))
    return yaw, pitch, roll


def assess(box: np.ndarray, points: np.ndarray, confidence: float, chip: np.ndarray) -> FaceQuality:
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    yaw, pitch, roll = estimate_pose(points)
    return FaceQuality(
        face_px=float(min(box[2] - box[0], box[3] - box[1])),
        sharpness=float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        brightness=float(grey.mean()),
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        confidence=float(confidence),
    )


def reasons_to_skip(quality: FaceQuality, level: QualityFilter) -> list[SkipReason]:
    bar = QUALITY_BARS[level]
    reasons = []
    if quality.face_px < bar.min_face_px:
        reasons.append(SkipReason.SMALL_BOUNDING_BOX)
    if quality.sharpness < bar.min_sharpness:
        reasons.append(SkipReason.LOW_SHARPNESS)
    if quality.brightness < bar.min_brightness:
        reasons.append(SkipReason.LOW_BRIGHTNESS)
    if abs(quality.yaw) > bar.max_yaw or abs(quality.pitch) > bar.max_pitch or abs(quality.roll) > bar.max_roll:
        reasons.append(SkipReason.EXTREME_POSE)
    if quality.confidence < bar.min_confidence:
        reasons.append(SkipReason.LOW_CONFIDENCE)
    return reasons
