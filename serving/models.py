"""The embedding models a server holds: each model's face pipeline and calibration, and the thresholds they give."""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.calibration import estimated_false_match_rate, floor_similarity
from cluster.errors import ThresholdBelowFloor
from cluster.manifest import Manifest
from cluster.models.registry import DEFAULT_EMBEDDER, ModelRegistry, embedding_of
from cluster.pipeline.faces import FacePipeline
from cluster.settings import Settings


class EmbeddingModels:
    """Loaded on first use, once per model: a collection is embedded, floored and rated with its own model only."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._pipelines: dict[str, FacePipeline] = {}
        self._calibrations: dict[str, dict[str, Any]] = {}

    def pipeline(self, model_id: str = DEFAULT_EMBEDDER) -> FacePipeline:
        pipeline = self._pipelines.get(model_id)
        if pipeline is None:  # FacePipeline refuses ids this build does not know
            pipeline = self._pipelines[model_id] = FacePipeline(self.settings, self.registry, model_id)
        return pipeline

    def calibration(self, model_id: str) -> dict[str, Any]:
        calibration = self._calibrations.get(model_id)
        if calibration is None:
            embedding_of(model_id)
            calibration = self._calibrations[model_id] = self.registry.calibration(model_id)
        return calibration

    def floor_similarity(self, model_id: str, max_false_match_rate: float) -> float:
        return floor_similarity(max_false_match_rate, self.calibration(model_id))

    def false_match_rates(self, model_id: str, similarities: np.ndarray | float) -> np.ndarray:
        return estimated_false_match_rate(similarities, self.calibration(model_id))

    def applied_threshold(self, manifest: Manifest, requested: float | None) -> dict[str, Any]:
        """The threshold a search of this collection uses: the one asked for, never looser than the floor."""
        floor = self.floor_similarity(manifest.model_id, manifest.max_false_match_rate)
        if requested is not None and requested < floor:
            raise ThresholdBelowFloor(
                f"threshold {requested:g} is looser than this collection's floor {floor:.4f} "
                f"(at most {manifest.max_false_match_rate:g} false matches per comparison)",
                floor=round(floor, 6),
                max_false_match_rate=manifest.max_false_match_rate,
            )
        return {
            "requested": requested,
            "applied": round(max(floor, requested or floor), 6),
            "floor": round(floor, 6),
            "max_false_match_rate": manifest.max_false_match_rate,
        }
