"""Batched face embedding with dlib's ResNet on ONNX Runtime: aligned chips -> 128-D descriptors."""

from __future__ import annotations

import numpy as np

EMBEDDING_DIM = 128


class EmbedFaces:
    """Batch stage: uint8 chips (n, 150, 150, 3) -> float32 (n, 128) raw dlib descriptors."""

    def __init__(self, session: object, batch_size: int) -> None:
        self.session = session
        self.batch_size = batch_size

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        parts = [
            self.session.run(["descriptors"], {"chips": chips[i : i + self.batch_size]})[0]  # type: ignore[attr-defined]
            for i in range(0, len(chips), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows, so that inner product is cosine similarity."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
