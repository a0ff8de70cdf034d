"""Execution provider choice, against faked provider lists (no GPU needed)."""

from __future__ import annotations

import pytest

from cluster.pipeline import runtime
from cluster.pipeline.embed import GPU_EMBED_BATCH, embed_batch_size


def test_cuda_first_when_offered() -> None:
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtime.choose_providers(offered) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_only_machine() -> None:
    assert runtime.choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_requested_providers_keep_cpu_fallback() -> None:
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtime.choose_providers(offered, ["CUDAExecutionProvider"]) == offered
    assert runtime.choose_providers(offered, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_no_usable_provider_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="none of the providers"):
        runtime.choose_providers(["OpenVINOExecutionProvider"], ["CUDAExecutionProvider"])


def test_session_uses_the_chosen_providers(monkeypatch: pytest.MonkeyPatch, registry) -> None:  # type: ignore[no-untyped-def]
    seen = {}

    class FakeSession:
        def __init__(self, path: str, sess_options: object, providers: list[str]) -> None:
            seen["providers"] = providers

    monkeypatch.setattr(
        runtime.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(runtime.ort, "InferenceSession", FakeSession)
    from cluster.settings import RuntimeSettings

    runtime.create_session(registry.onnx_path("mtcnn-pnet"), RuntimeSettings())
    assert seen["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_embed_batch_follows_the_provider() -> None:
    cpu, cuda = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert embed_batch_size(None, 8, cpu) == 8  # the model's best on a CPU
    assert embed_batch_size(None, 8, cuda) == GPU_EMBED_BATCH
    assert embed_batch_size(2, 8, cuda) == 2  # what the settings ask wins
