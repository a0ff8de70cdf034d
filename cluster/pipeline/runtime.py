"""Inference sessions: ONNX Runtime with providers chosen from what the installed runtime offers, and OpenVINO where a
recipe runs its embedder in bfloat16 and the CPU computes in it (AVX-512 BF16 or AMX). Both answer the same three
calls the pipeline makes: `run(output_names, feeds)`, `get_outputs()` and `get_providers()`."""

from __future__ import annotations

import importlib.util
import threading
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from cluster.settings import RuntimeSettings

# CUDA first where onnxruntime-gpu is installed and a GPU is visible; the CPU provider is always last as the fallback.
PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")
Precision = Literal["fp32", "bf16"]
# What get_providers() names for a graph OpenVINO runs in bfloat16 on the CPU.
OPENVINO_BF16 = "OpenVINO-CPU-bf16"


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    """Order the providers to use: the requested ones that exist, else the preferred ones that exist."""
    wanted = requested or list(PROVIDER_PREFERENCE)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" in available and "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if not chosen:
        raise RuntimeError(f"none of the providers {wanted} is available (have {available})")
    return chosen


def choose_runtime(precision: Precision, providers: list[str], openvino_capabilities: list[str] | None) -> str:
    """Who runs a graph: OpenVINO for bfloat16 when no GPU provider leads, OpenVINO is installed
    (`openvino_capabilities` is None where it is not) and the CPU computes in bfloat16; ONNX Runtime otherwise,
    in fp32 (a bfloat16 recipe's embeddings are within a cosine of 0.9995 of fp32's, so one collection may hold
    both: README, "Recipes")."""
    if precision == "bf16" and providers[0] == "CPUExecutionProvider" and "BF16" in (openvino_capabilities or []):
        return "openvino"
    return "onnxruntime"


@cache
def openvino_capabilities() -> list[str] | None:
    """The CPU's OPTIMIZATION_CAPABILITIES as OpenVINO reports them ("BF16" among them where it computes in it),
    or None where OpenVINO is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino

    return list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def create_session(path: Path, settings: RuntimeSettings, precision: Precision = "fp32") -> Any:
    providers = choose_providers(ort.get_available_providers(), settings.providers)
    if choose_runtime(precision, providers, openvino_capabilities()) == "openvino":
        return OpenVinoSession(path, settings.intra_op_threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    # One inter-op thread: our graphs are chains, and parallel branches only add contention on small machines.
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class _Output:
    def __init__(self, name: str) -> None:
        self.name = name


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU in bfloat16, answering as an ONNX Runtime session does. One
    infer request per thread: a request holds its buffers, and the server embeds probes on a pool of threads."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import openvino

        # No pinning: OpenVINO pins its threads to cores by default, and the embedder actors of one machine (a
        # thread each) then all ran on the same core (bench index: bf16 no faster than fp32 end to end).
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16",
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        # OpenVINO gives an output every name its tensor had in the graph; callers ask by the graph's output names.
        graph_outputs = {output.name for output in onnx.load(str(path), load_external_data=False).graph.output}
        self.names = [next(iter(set(o.get_names()) & graph_outputs)) for o in self.compiled.outputs]
        self.local = threading.local()

    def get_outputs(self) -> list[_Output]:
        return [_Output(name) for name in self.names]

    def get_providers(self) -> list[str]:
        return [OPENVINO_BF16]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        results = request.infer(feeds, share_inputs=False, share_outputs=False).to_tuple()
        by_name = dict(zip(self.names, results, strict=True))
        return [np.asarray(by_name[name]) for name in (output_names or self.names)]
