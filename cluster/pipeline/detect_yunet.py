"""YuNet face detection (cluster/models/onnx_yunet.py builds the graph): one pass per batch of images padded to a
common size, each cell decoded into a face as OpenCV's `cv2.FaceDetectorYN` does, then non-maximum suppression."""

from __future__ import annotations

from collections import defaultdict

import cv2
import numpy as np

from cluster.pipeline.detect import Detections, Net, ONetStage, for_detection
from cluster.settings import DetectorSettings

STRIDES = (8, 16, 32)
HEADS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
# What OpenCV's FaceDetectorYN keeps by default: cells scoring at least this, boxes overlapping less than this.
SCORE_THRESHOLD = 0.9
NMS_THRESHOLD = 0.3
TOP_K = 5000


def padded_size(height: int, width: int, multiple: int = 32) -> tuple[int, int]:
    """The size an image is padded to (bottom and right, with zeros) for YuNet's strides, as OpenCV does."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def decode(
    heads: dict[str, np.ndarray],
    index: int,
    height: int,
    width: int,
    score_threshold: float = SCORE_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
    top_k: int = TOP_K,
) -> Detections:
    """Faces of image `index` of a batch run at (height, width), best first: each cell's score is
    sqrt(class x objectness) (both clipped to [0, 1]), its box centre and landmarks are offsets in cells of its
    stride, its size exp(offset) strides; then non-maximum suppression."""
    boxes, landmarks, scores = [], [], []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        grid_col, grid_row = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
        col, row = grid_col.reshape(-1), grid_row.reshape(-1)
        cls = np.clip(heads[f"cls_{stride}"][index, :, 0], 0, 1)
        obj = np.clip(heads[f"obj_{stride}"][index, :, 0], 0, 1)
        bbox, kps = heads[f"bbox_{stride}"][index], heads[f"kps_{stride}"][index]
        cx, cy = (col + bbox[:, 0]) * stride, (row + bbox[:, 1]) * stride
        w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        points = kps.reshape(-1, 5, 2)
        xs, ys = (col[:, None] + points[..., 0]) * stride, (row[:, None] + points[..., 1]) * stride
        landmarks.append(np.stack([xs, ys], axis=-1))
        scores.append(np.sqrt(cls * obj))
    all_boxes, all_landmarks, all_scores = np.concatenate(boxes), np.concatenate(landmarks), np.concatenate(scores)
    as_xywh = np.concatenate([all_boxes[:, :2], all_boxes[:, 2:] - all_boxes[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxes(as_xywh.tolist(), all_scores.tolist(), score_threshold, nms_threshold, top_k=top_k)
    order = np.asarray(kept, dtype=np.int64).reshape(-1)
    return Detections(
        all_boxes[order].astype(np.float32),
        all_landmarks[order].astype(np.float32),
        all_scores[order].astype(np.float32),
    )


class DetectFacesYuNet:
    """Batch stage, as DetectFaces: RGB uint8 images in, one Detections per image out (boxes x1 y1 x2 y2, the
    five landmarks in MTCNN's order: the eye on the image's left first). Images of one padded size run together."""

    def __init__(self, net: Net, config: DetectorSettings) -> None:
        self.net, self.config = net, config

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        shrunk = [for_detection(image, self.config.max_pixels) for image in images]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (image, _) in enumerate(shrunk):
            groups[padded_size(*image.shape[:2])].append(i)
        found: list[Detections] = [Detections.empty()] * len(images)
        for (height, width), members in groups.items():
            batch = np.zeros((len(members), height, width, 3), np.uint8)
            for row, i in enumerate(members):
                image = shrunk[i][0]
                batch[row, : image.shape[0], : image.shape[1]] = image
            heads = self.net(batch)
            for row, i in enumerate(members):
                detections = decode(heads, row, height, width, self.config.yunet_score_threshold)
                factor = shrunk[i][1]
                found[i] = detections if factor == 1.0 else detections.scaled(factor)
        return found


class DetectFacesYuNetONet:
    """YuNet finds the faces (single shot, about half MTCNN's time), MTCNN's O-Net places their five landmarks on
    each found face (landmarks within a pixel of MTCNN's on lfw-dev, where YuNet's own are about 3 px away)."""

    def __init__(self, yunet: DetectFacesYuNet, onet: ONetStage) -> None:
        self.yunet, self.onet = yunet, onet

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        return self.onet.refine(images, self.yunet(images))
