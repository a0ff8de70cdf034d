"""Align faces to 150x150 chips with a 5-point similarity transform, the layout dlib's face ResNet was trained on."""

from __future__ import annotations

import cv2
import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25
# Unit-face positions of left eye, right eye, nose tip, mouth left, mouth right (DESIGN.md, Models).
UNIT_TEMPLATE = np.array(
    [[0.2253, 0.2062], [0.7747, 0.2062], [0.5, 0.5224], [0.2594, 0.8027], [0.7406, 0.8027]], dtype=np.float64
)
TEMPLATE = (UNIT_TEMPLATE + CHIP_PADDING) / (1 + 2 * CHIP_PADDING) * CHIP_SIZE


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping src points onto dst; a 2x3 matrix."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(axis=0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


class AlignFaces:
    """Batch stage: (image, landmarks (n, 5, 2)) -> uint8 chips (n, 150, 150, 3)."""

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        chips = np.empty((len(landmarks), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
        for i, points in enumerate(landmarks):
            matrix = similarity_transform(points.astype(np.float64), TEMPLATE)
            chips[i] = cv2.warpAffine(
                image, matrix, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        return chips
