"""Model cache: build once, verify sha256, rebuild a corrupt file; model cards say where each model came from."""

from __future__ import annotations

from pathlib import Path

from cluster.models.registry import MODELS, ModelRegistry


def test_build_writes_cards_and_reuses_verified_files(registry: ModelRegistry) -> None:
    for model_id in MODELS:
        card = registry.card(model_id)
        assert card is not None
        assert card["licence"] and card["source_package"] and card["source_version"]
        assert len(card["sha256"]) == 64
        assert card["inputs"] and card["outputs"]
        assert registry.is_valid(model_id)
    before = registry.onnx_path("mtcnn-pnet").stat().st_mtime_ns
    registry.ensure("mtcnn-pnet")
    assert registry.onnx_path("mtcnn-pnet").stat().st_mtime_ns == before


def test_corrupt_model_is_rebuilt(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    path = registry.ensure("mtcnn-rnet")
    good = registry.card("mtcnn-rnet")
    assert good is not None
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    assert not registry.is_valid("mtcnn-rnet")
    registry.ensure("mtcnn-rnet")
    assert registry.is_valid("mtcnn-rnet")
    assert registry.card("mtcnn-rnet")["sha256"] == good["sha256"]  # type: ignore[index]
