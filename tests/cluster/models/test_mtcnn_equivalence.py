"""Our MTCNN ONNX graphs against an independent numpy forward pass of the same Keras weights, on real photos."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import joblib
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cluster.pipeline.decode import decode_image
from cluster.pipeline.detect import DetectFaces
from cluster.settings import DetectorSettings
from tests.conftest import lfw_photos


def _weights(net: str) -> list[np.ndarray]:
    path = importlib.metadata.distribution("mtcnn").locate_file(f"mtcnn/assets/weights/{net}.lz4")
    return list(joblib.load(str(path)))


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    kh, kw = kernel.shape[:2]
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))  # N, H', W', C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias


def _prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, x * alpha.reshape(-1))


def _maxpool(x: np.ndarray, size: int, stride: int, same: bool) -> np.ndarray:
    if same:
        # TensorFlow's SAME: pad so that out = ceil(in / stride), the extra row/column at the end, with -inf.
        pads = []
        for dim in x.shape[1:3]:
            total = max((-(-dim // stride) - 1) * stride + size - dim, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    windows = sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    return windows.max(axis=(-1, -2))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _reference(net: str):  # type: ignore[no-untyped-def]
    w = _weights(net)
    pools = {
        "pnet": [(2, 2, True), None, None],
        "rnet": [(3, 2, True), (3, 2, False), None],
        "onet": [(3, 2, True), (3, 2, False), (2, 2, True), None],
    }[net]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        x = x.astype(np.float64)
        i = 0
        for pool in pools:
            x = _prelu(_conv(x, w[i], w[i + 1]), w[i + 2])
            i += 3
            if pool:
                x = _maxpool(x, *pool)
        if net == "pnet":
            return {"bbox_reg": _conv(x, w[i], w[i + 1]), "prob": _softmax(_conv(x, w[i + 2], w[i + 3]))}
        x = x.transpose(0, 2, 1, 3).reshape(len(x), -1)  # Keras Permute((2, 1, 3)) then Flatten
        x = _prelu(x @ w[i] + w[i + 1], w[i + 2])
        heads = [x @ w[j] + w[j + 1] for j in range(i + 3, len(w), 2)]
        names = ["bbox_reg", "landmarks", "prob"] if net == "onet" else ["bbox_reg", "prob"]
        heads[-1] = _softmax(heads[-1])
        return dict(zip(names, heads, strict=True))

    return run


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detections_match_numpy_reference(lfw_images: Path, pipeline) -> None:  # type: ignore[no-untyped-def]
    reference = DetectFaces(_reference("pnet"), _reference("rnet"), _reference("onet"), DetectorSettings())
    images = [decode_image(p.read_bytes(), 10**8) for p in lfw_photos(lfw_images, people=8)]
    compared = 0
    for ours, theirs in zip(pipeline.detect(images), reference(images), strict=True):
        assert len(ours) == len(theirs)
        for box, marks in zip(theirs.boxes, theirs.landmarks, strict=True):
            best = max(range(len(ours)), key=lambda i: _iou(ours.boxes[i], box))
            assert _iou(ours.boxes[best], box) >= 0.95
            assert np.abs(ours.landmarks[best] - marks).max() <= 2.0
            compared += 1
    assert compared >= 8
