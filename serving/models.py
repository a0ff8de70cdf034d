"""The embedding models a server holds: each model's face pipeline, and the calibrations floors and rates come from."""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE, Manifest
from cluster.errors import ThresholdBelowFloor
from cluster.models.calibration import Rates
from cluster.models.faces import FacePipeline
from cluster.models.recipes import Recipe, plain_recipe
from cluster.models.registry import DEFAULT_EMBEDDER, ModelRegistry
from cluster.settings import Settings


class EmbeddingModels:
    """Loaded on first use, once per recipe: a collection is embedded with its own recipe, floored and rated with
    its own pinned calibration (its model's, for collections made before calibrations were pinned)."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._pipelines: dict[str, FacePipeline] = {}
        self._rates: dict[str, Rates] = {}  # by calibration sha256, or by model id for a model's own

    def pipeline(self, of: Recipe | str = DEFAULT_EMBEDDER) -> FacePipeline:
        """A recipe's pipeline, or a model's plain recipe's (what compare uses)."""
        recipe = of if isinstance(of, Recipe) else plain_recipe(of)
        pipeline = self._pipelines.get(recipe.name)
        if pipeline is None:
            pipeline = self._pipelines[recipe.name] = FacePipeline(self.settings, self.registry, recipe=recipe)
        return pipeline

    def calibration(self, of: Recipe | str) -> dict[str, Any]:
        """A recipe's calibration on this machine (what a new collection pins), or a model's plain recipe's (what
        compare uses)."""
        recipe = of if isinstance(of, Recipe) else plain_recipe(of)  # refuses ids this build does not know
        return self.registry.calibration(recipe.calibration_name)

    def rates(self, of: Manifest | str) -> Rates:
        """A collection's pinned calibration (a manifest), or a model's own (a model id)."""
        if isinstance(of, Manifest) and of.calibration is not None and of.calibration_sha256 is not None:
            key, source = of.calibration_sha256, of.calibration
        else:
            key = of.model_id if isinstance(of, Manifest) else of
            source = None
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = Rates(source if source is not None else self.calibration(key))
        return rates

    def floor_similarity(self, of: Manifest | str, max_false_match_rate: float | None = None) -> float:
        """The floor of a collection (a manifest), or of a model at `max_false_match_rate` (default: 1e-5)."""
        return self.rates(of).floor(_max_rate(of, max_false_match_rate))

    def false_match_rates(self, of: Manifest | str, similarities: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Per comparison, with the floor's margin; and whether each is a bound (see Rates.at)."""
        return self.rates(of).at(similarities)

    def applied_threshold(
        self, of: Manifest | str, requested: float | None, faces: int | None = None
    ) -> dict[str, Any]:
        """The threshold a search of a collection (or a comparison with a model) uses: the strictest of the one
        asked for, the floor, and, for a collection with a per-search promise, the similarity that keeps a search
        of `faces` faces to at most that many expected strangers above it. Never looser than the floor."""
        rate = _max_rate(of, None)
        floor = self.floor_similarity(of)
        if requested is not None and requested < floor:
            whose = "this collection's" if isinstance(of, Manifest) else f"{of}'s default"
            raise ThresholdBelowFloor(
                f"threshold {requested:g} is looser than {whose} floor {floor:.4f} "
                f"(at most {rate:g} false matches per comparison)",
                floor=round(floor, 6),
                max_false_match_rate=rate,
            )
        applied = max(floor, requested or floor)
        promise = of.max_false_candidates_per_search if isinstance(of, Manifest) else None
        kept: dict[str, Any] = {"max_false_candidates_per_search": promise, "faces_searched": faces}
        if promise is not None and faces is not None:
            rates = self.rates(of)
            implied = rates.search_threshold(promise, faces)  # refuses a size the calibration cannot keep it for
            applied = max(applied, implied)
            kept["promise_similarity"] = round(implied, 6)
            kept["expected_false_candidates"] = float(f"{faces * rates.rate_bound(applied):.3g}")
        return {
            "requested": requested,
            "applied": round(applied, 6),
            "floor": round(floor, 6),
            "max_false_match_rate": rate,
            **kept,
        }


def _max_rate(of: Manifest | str, given: float | None) -> float:
    if given is not None:
        return given
    return of.max_false_match_rate if isinstance(of, Manifest) else DEFAULT_MAX_FALSE_MATCH_RATE
