"""ONNX Runtime sessions with providers chosen from what the installed runtime offers."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from cluster.settings import RuntimeSettings

# CUDA first where onnxruntime-gpu is installed and a GPU is visible; the CPU provider is always last as the fallback.
PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    """Order the providers to use: the requested ones that exist, else the preferred ones that exist."""
    wanted = requested or list(PROVIDER_PREFERENCE)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" in available and "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if not chosen:
        raise RuntimeError(f"none of the providers {wanted} is available (have {available})")
    return chosen


def create_session(path: Path, settings: RuntimeSettings) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    # One inter-op thread: our graphs are chains, and parallel branches only add contention on small machines.
    options.inter_op_num_threads = 1
    providers = choose_providers(ort.get_available_providers(), settings.providers)
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
