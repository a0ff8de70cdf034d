"""Our ONNX conversion of dlib's ResNet against dlib's own compute_face_descriptor on aligned chips of real photos."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from cluster.models.registry import DLIB_ID, MODELS
from cluster.pipeline.decode import decode_image
from tests.conftest import lfw_photos

dlib = pytest.importorskip("dlib", reason="dlib-bin is the reference; install the dev extra")


def test_descriptors_match_dlib(lfw_images: Path, dlib_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline = dlib_pipeline
    chips = []
    for photo in lfw_photos(lfw_images, people=12):
        image = decode_image(photo.read_bytes(), 10**8)
        chips.extend(pipeline.align(image, pipeline.detect([image])[0].landmarks))
    assert len(chips) >= 12
    batch = np.stack(chips)
    spec = MODELS[DLIB_ID]
    source = importlib.metadata.distribution(spec.package).locate_file(spec.source)
    reference = dlib.face_recognition_model_v1(str(source))
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in batch])
    ours = pipeline.embed(batch)
    print(f"\nmax abs difference over {len(batch)} chips: {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() <= 1e-4
