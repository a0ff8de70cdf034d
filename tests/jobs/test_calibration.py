"""The floor keeps its promise: evaluated on every lfw-dev pair, in sample and on people the calibration never saw."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.calibration import floor_similarity
from cluster.collection import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.models.registry import EMBEDDER_ID, ModelRegistry
from jobs.evaluate import evaluate_lfw
from tests.conftest import LFW


@pytest.fixture(scope="module")
def evaluation(lfw_images: Path, pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[no-untyped-def]
    return evaluate_lfw(pipeline, lfw_images, LFW / "pairs.tsv", None, tmp_path_factory.mktemp("eval"))


def test_accuracy_and_figures(evaluation: dict) -> None:  # type: ignore[type-arg]
    assert evaluation["pairs"] == 6000 and evaluation["failed_pairs"] <= 20
    # The target is 0.99; dlib's own pipeline reaches 0.966 on these greyscale photos (README): hold our ground.
    assert evaluation["accuracy"] >= 0.98
    assert evaluation["impostor_comparisons"] > 10_000_000


def test_default_floor_holds(evaluation: dict) -> None:  # type: ignore[type-arg]
    check = evaluation["floor_check"]
    rate = DEFAULT_MAX_FALSE_MATCH_RATE
    assert check["promised_fmr"] == rate
    assert check["listed_different_pairs"] >= 2990
    assert check["listed_false_matches"] / check["listed_different_pairs"] <= rate
    assert check["all_impostor_false_matches"] / check["all_impostor_comparisons"] <= rate
    assert check["heldout"], "half of lfw-dev should support some floor"
    for row in check["heldout"]:
        assert row["fmr"] <= row["promised_fmr"], row


def test_shipped_calibration_agrees(evaluation: dict, registry: ModelRegistry) -> None:  # type: ignore[type-arg]
    shipped = registry.calibration(EMBEDDER_ID)
    fresh = evaluation["calibration"]
    assert abs(floor_similarity(1e-4, shipped) - floor_similarity(1e-4, fresh)) < 0.005
