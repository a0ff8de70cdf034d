"""Align faces to model chips: a 5-point similarity transform onto the layout each embedding model was trained on."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# dlib's layout: unit-face positions of left eye, right eye, nose tip, mouth left, mouth right (DESIGN.md, Models),
# padded by 0.25 on each side into a 150 px chip.
UNIT_TEMPLATE = np.array(
    [[0.2253, 0.2062], [0.7747, 0.2062], [0.5, 0.5224], [0.2594, 0.8027], [0.7406, 0.8027]], dtype=np.float64
)
CHIP_SIZE = 150
CHIP_PADDING = 0.25
TEMPLATE = (UNIT_TEMPLATE + CHIP_PADDING) / (1 + 2 * CHIP_PADDING) * CHIP_SIZE
# ArcFace's 112x112 layout (insightface's `arcface_dst`), which OpenCV's FaceRecognizerSF.alignCrop also uses.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclass(frozen=True, eq=False)
class Aligner:
    """A chip layout: where the five landmarks land, in pixels of a square chip. One aligner per collection."""

    aligner_id: str
    chip_size: int
    template: np.ndarray


DLIB_ALIGNER = Aligner("dlib-5pt-150", CHIP_SIZE, TEMPLATE)
ARCFACE_ALIGNER = Aligner("arcface-5pt-112", 112, ARCFACE_TEMPLATE)


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
    """Batch stage: (image, landmarks (n, 5, 2)) -> uint8 chips (n, size, size, 3) in the aligner's layout."""

    def __init__(self, aligner: Aligner = DLIB_ALIGNER) -> None:
        self.aligner = aligner

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        size = self.aligner.chip_size
        chips = np.empty((len(landmarks), size, size, 3), dtype=np.uint8)
        for i, points in enumerate(landmarks):
            matrix = similarity_transform(points.astype(np.float64), self.aligner.template)
            chips[i] = cv2.warpAffine(
                image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        return chips
