"""Batched face embedding on ONNX Runtime: aligned uint8 chips -> raw descriptors of the collection's model."""

from __future__ import annotations

import numpy as np

# The width of the face records' embedding column; every shipped embedder writes 128 numbers.
EMBEDDING_DIM = 128
# On a GPU a call costs about the same for 1 chip as for many: batch as the index job's read batch allows.
GPU_EMBED_BATCH = 64


def embed_batch_size(requested: int | None, cpu_batch_size: int, providers: list[str]) -> int:
    """Chips per call: what the settings ask, else the model's best on a CPU, or a large batch under CUDA."""
    if requested:
        return requested
    return GPU_EMBED_BATCH if providers and providers[0] == "CUDAExecutionProvider" else cpu_batch_size


class EmbedFaces:
    """Batch stage: uint8 chips (n, size, size, 3) -> float32 (n, dim) raw descriptors."""

    def __init__(self, session: object, batch_size: int, dim: int = EMBEDDING_DIM) -> None:
        self.session = session
        self.batch_size = batch_size
        self.dim = dim

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [
            self.session.run(["descriptors"], {"chips": chips[i : i + self.batch_size]})[0]  # type: ignore[attr-defined]
            for i in range(0, len(chips), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows, so that inner product is cosine similarity."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
