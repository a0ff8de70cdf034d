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


@pytest.mark.parametrize(
    ("precision", "providers", "capabilities", "chosen"),
    [
        ("bf16", ["CPUExecutionProvider"], ["FP32", "BF16", "INT8"], "openvino"),
        ("bf16", ["CPUExecutionProvider"], ["FP32", "INT8"], "onnxruntime"),  # a CPU without bfloat16
        ("bf16", ["CPUExecutionProvider"], None, "onnxruntime"),  # OpenVINO not installed
        ("bf16", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["FP32", "BF16"], "onnxruntime"),  # a GPU leads
        ("fp32", ["CPUExecutionProvider"], ["FP32", "BF16"], "onnxruntime"),
    ],
)
def test_bf16_runs_on_openvino_only_where_the_cpu_computes_in_it(
    precision: runtime.Precision, providers: list[str], capabilities: list[str] | None, chosen: str
) -> None:
    assert runtime.choose_runtime(precision, providers, capabilities) == chosen


def test_bf16_without_openvino_is_an_onnx_runtime_session(monkeypatch: pytest.MonkeyPatch, registry) -> None:  # type: ignore[no-untyped-def]
    from cluster.settings import RuntimeSettings

    monkeypatch.setattr(runtime, "openvino_capabilities", lambda: None)
    session = runtime.create_session(registry.onnx_path("sface-2021dec"), RuntimeSettings(), "bf16")
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_a_bf16_session_embeds_as_fp32_does(registry, lfw_images) -> None:  # type: ignore[no-untyped-def]
    """Where this CPU computes in bfloat16, OpenVINO's embeddings of real chips stay within a cosine of 0.999 of
    ONNX Runtime's fp32 ones (measured minimum 0.9998 on 200 lfw-dev chips)."""
    import numpy as np

    from cluster.models.faces import FacePipeline
    from cluster.pipeline.embed import normalize
    from cluster.settings import RuntimeSettings, Settings
    from tests.conftest import lfw_photos

    if "BF16" not in (runtime.openvino_capabilities() or []):
        pytest.skip("this CPU (or this install) has no bfloat16 through OpenVINO: the fp32 path is the one used")
    path = registry.onnx_path("sface-2021dec")
    settings = RuntimeSettings(intra_op_threads=1)
    fp32, bf16 = runtime.create_session(path, settings), runtime.create_session(path, settings, "bf16")
    assert bf16.get_providers() == [runtime.OPENVINO_BF16]
    pipeline = FacePipeline(Settings(model_dir=registry.model_dir), registry)
    chips = []
    for image in pipeline.decode([p.read_bytes() for p in lfw_photos(lfw_images, 12)]):
        found = pipeline.detect([image])[0]
        chips += list(pipeline.align(image, found.landmarks[:1]))
    chips = np.stack(chips)
    a = normalize(fp32.run(["descriptors"], {"chips": chips})[0])
    b = normalize(bf16.run(["descriptors"], {"chips": chips})[0])
    assert float(np.min(np.sum(a * b, axis=1))) > 0.999
