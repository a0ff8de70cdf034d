"""MTCNN face detection (P-, R-, O-Net cascade) on ONNX Runtime: boxes, five landmarks and a confidence per face."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from cluster.settings import DetectorSettings

# A net maps an NHWC float32 batch to its named outputs.
Net = Callable[[np.ndarray], dict[str, np.ndarray]]

PNET_CELL = 12
PNET_STRIDE = 2


@dataclass
class Detections:
    """Faces in one image: boxes (n, 4) x1 y1 x2 y2; landmarks (n, 5, 2): eyes, nose, mouth corners (left first)."""

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def scaled(self, factor: float) -> Detections:
        return Detections(self.boxes * factor, self.landmarks * factor, self.scores)


def for_detection(image: np.ndarray, max_pixels: int) -> tuple[np.ndarray, float]:
    """The image detection runs on, and the factor that maps its coordinates back: a photo over `max_pixels` is
    scaled down first, so that one photo costs bounded CPU (P-Net's pyramid grows with the pixels: a 40-megapixel
    PNG took 10.6 s). Faces are still aligned from the full-resolution image."""
    height, width = image.shape[:2]
    if height * width <= max_pixels:
        return image, 1.0
    scale = math.sqrt(max_pixels / (height * width))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), width / size[0]


def onnx_net(session: object) -> Net:
    names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"images": batch}), strict=True))  # type: ignore[attr-defined]

    return run


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * np.stack([w, h, w, h], axis=1)


def _crop(image: np.ndarray, box: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
    """Crop box (`fill` outside the image) and resize to size x size, in float32."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
    patch = np.full((bh, bw, 3), fill, dtype=np.float32)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x1 + bw, width), min(y1 + bh, height)
    if sx2 > sx1 and sy2 > sy1:
        patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    interpolation = cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def _scales(height: int, width: int, config: DetectorSettings) -> list[float]:
    base = PNET_CELL / config.min_face_size
    scales = []
    side = min(height, width) * base
    scale = base
    while side >= PNET_CELL:
        scales.append(scale)
        scale *= config.scale_factor
        side *= config.scale_factor
    return scales


class DetectFaces:
    """Batch stage: RGB uint8 images in, one Detections per image out."""

    def __init__(self, pnet: Net, rnet: Net, onet: Net, config: DetectorSettings) -> None:
        self.pnet, self.rnet, self.output = pnet, rnet, ONetStage(onet, config)
        self.config = config

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        shrunk = [for_detection(img, self.config.max_pixels) for img in images]
        normalized = [(img.astype(np.float32) - 127.5) / 128.0 for img, _ in shrunk]
        found = self._cascade(normalized, self.config.thresholds)
        retry = self.config.retry_thresholds
        missed = [i for i, d in enumerate(found) if len(d) == 0]
        if retry is not None and missed:
            for i, again in zip(missed, self._cascade([normalized[i] for i in missed], retry), strict=True):
                found[i] = again
        return [d if factor == 1.0 else d.scaled(factor) for d, (_, factor) in zip(found, shrunk, strict=True)]

    def _cascade(self, normalized: list[np.ndarray], thresholds: tuple[float, float, float]) -> list[Detections]:
        candidates = [self._propose(img, thresholds[0]) for img in normalized]
        candidates = self._refine(normalized, candidates, thresholds[1])
        return self.output(normalized, candidates, thresholds[2])

    def _propose(self, image: np.ndarray, threshold: float) -> np.ndarray:
        """P-Net over the image pyramid -> square candidate boxes with scores, shape (n, 5)."""
        height, width = image.shape[:2]
        found = []
        for scale in _scales(height, width, self.config):
            size = (math.ceil(width * scale), math.ceil(height * scale))
            resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            out = self.pnet(resized[None])
            prob, reg = out["prob"][0, :, :, 1], out["bbox_reg"][0]
            ys, xs = np.nonzero(prob > threshold)
            if len(ys) == 0:
                continue
            x1, y1 = xs * PNET_STRIDE, ys * PNET_STRIDE
            boxes = np.stack([x1, y1, x1 + PNET_CELL, y1 + PNET_CELL], axis=1).astype(np.float32)
            boxes = (boxes + reg[ys, xs] * PNET_CELL) / scale
            scores = prob[ys, xs]
            keep = nms(boxes, scores, self.config.nms[0])
            found.append(np.column_stack([boxes[keep], scores[keep]]))
        if not found:
            return np.zeros((0, 5), np.float32)
        merged = np.concatenate(found)
        merged = merged[nms(merged[:, :4], merged[:, 4], self.config.nms[1])]
        merged[:, :4] = _square(merged[:, :4])
        return merged

    def _refine(self, images: list[np.ndarray], candidates: list[np.ndarray], threshold: float) -> list[np.ndarray]:
        patches = _patches(images, candidates, 24)
        if len(patches) == 0:
            return candidates
        out = self.rnet(patches)
        refined = []
        for boxes, prob, reg in zip(
            candidates, _split(candidates, out["prob"]), _split(candidates, out["bbox_reg"]), strict=True
        ):
            mask = prob[:, 1] > threshold
            boxes, scores, reg = boxes[mask, :4], prob[mask, 1], reg[mask]
            keep = nms(boxes, scores, self.config.nms[2])
            boxes = _square(_regress(boxes[keep], reg[keep]))
            refined.append(np.column_stack([boxes, scores[keep]]).astype(np.float32))
        return refined


def _patches(images: list[np.ndarray], candidates: list[np.ndarray], size: int, fill: float = 0.0) -> np.ndarray:
    crops = [_crop(img, box, size, fill) for img, boxes in zip(images, candidates, strict=True) for box in boxes[:, :4]]
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.float32)


def _split(candidates: list[np.ndarray], values: np.ndarray) -> list[np.ndarray]:
    bounds = np.cumsum([len(c) for c in candidates])[:-1]
    return np.split(values, bounds)


class ONetStage:
    """MTCNN's last stage: O-Net on candidate boxes -> faces with five landmarks. The cascade's end, and on its own
    the landmark stage for faces another detector found (`refine`)."""

    def __init__(self, onet: Net, config: DetectorSettings) -> None:
        self.onet, self.config = onet, config

    def refine(self, images: list[np.ndarray], found: list[Detections]) -> list[Detections]:
        """O-Net alone on faces another detector found (boxes in pixels of `images`): MTCNN's landmarks and box
        regression for each, its O-Net probability as the confidence. No face is dropped here: the other detector
        decided what is a face."""
        shrunk = [for_detection(img, self.config.max_pixels) for img in images]
        candidates = [
            np.column_stack([_square(d.boxes / factor), d.scores]).astype(np.float32)
            for d, (_, factor) in zip(found, shrunk, strict=True)
        ]
        # Crops of the uint8 image, normalized after: the same patches as cropping a normalized copy (grey, 127.5,
        # outside the image) without normalizing a whole photo for a few 48 px crops.
        pixels = [img for img, _ in shrunk]
        crops = _patches(pixels, candidates, 48, fill=127.5)
        refined = self(pixels, candidates, threshold=-1.0, merge=False, patches=(crops - 127.5) / 128.0)
        return [d if factor == 1.0 else d.scaled(factor) for d, (_, factor) in zip(refined, shrunk, strict=True)]

    def __call__(
        self,
        images: list[np.ndarray],
        candidates: list[np.ndarray],
        threshold: float,
        merge: bool = True,
        patches: np.ndarray | None = None,
    ) -> list[Detections]:
        """O-Net on the candidates' 48 px crops of normalized `images` (or on `patches` already cut)."""
        patches = _patches(images, candidates, 48) if patches is None else patches
        if len(patches) == 0:
            return [Detections.empty() for _ in images]
        out = self.onet(patches)
        results = []
        for boxes, prob, reg, marks in zip(
            candidates,
            _split(candidates, out["prob"]),
            _split(candidates, out["bbox_reg"]),
            _split(candidates, out["landmarks"]),
            strict=True,
        ):
            mask = prob[:, 1] > threshold
            boxes, scores, reg, marks = boxes[mask, :4], prob[mask, 1], reg[mask], marks[mask]
            w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points = np.stack([boxes[:, 0:1] + marks[:, 0:5] * w, boxes[:, 1:2] + marks[:, 5:10] * h], axis=2)
            boxes = _regress(boxes, reg)
            keep = nms(boxes, scores, self.config.nms[2], method="min") if merge else np.arange(len(boxes))
            results.append(
                Detections(
                    boxes[keep].astype(np.float32), points[keep].astype(np.float32), scores[keep].astype(np.float32)
                )
            )
        return results
