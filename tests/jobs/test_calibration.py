"""Each model on every lfw-dev pair: its accuracy, and its floor keeping its promise in sample and on people the
calibration never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.collections.manifest import DEFAULT_MAX_FALSE_MATCH_RATE
from cluster.models.calibration import floor_similarity
from cluster.models.faces import FacePipeline
from cluster.models.registry import DLIB_ID, SFACE_ID, ModelRegistry
from cluster.models.tail import Tail
from cluster.settings import Settings
from jobs.evaluate import evaluate_lfw
from tests.conftest import LFW

# What each model must reach on lfw-dev: accuracy at its threshold, FNMR at FMR 1e-4 and 1e-5. dlib's own pipeline
# reaches 0.966 on these greyscale photos (README); SFace's targets are the issue's.
TARGETS = {SFACE_ID: (0.993, 0.035, 0.08), DLIB_ID: (0.98, 0.27, 0.52)}


@pytest.fixture(scope="module", params=[SFACE_ID, DLIB_ID])
def evaluation(  # type: ignore[no-untyped-def]
    request, lfw_images: Path, settings: Settings, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory
) -> dict:  # type: ignore[type-arg]
    pipeline = FacePipeline(settings, registry, request.param)
    return evaluate_lfw(pipeline, lfw_images, LFW / "pairs.tsv", None, tmp_path_factory.mktemp("eval"))


def test_accuracy_and_figures(evaluation: dict) -> None:  # type: ignore[type-arg]
    accuracy, fnmr_1e4, fnmr_1e5 = TARGETS[evaluation["model_id"]]
    figures = ("accuracy", "fnmr_at_fmr_1e-4", "fnmr_at_fmr_1e-5")
    print(f"\n{evaluation['model_id']}: " + ", ".join(f"{k} {evaluation[k]}" for k in figures))
    assert evaluation["pairs"] == 6000 and evaluation["failed_pairs"] <= 20
    assert evaluation["accuracy"] >= accuracy
    assert evaluation["fnmr_at_fmr_1e-4"] <= fnmr_1e4
    assert evaluation["fnmr_at_fmr_1e-5"] <= fnmr_1e5
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
    shipped = registry.calibration(evaluation["model_id"])
    fresh = evaluation["calibration"]
    assert abs(floor_similarity(1e-4, shipped) - floor_similarity(1e-4, fresh)) < 0.005


def test_the_tail_holds_on_people_it_was_not_fitted_on(evaluation: dict) -> None:  # type: ignore[type-arg]
    """Fitted on half of lfw-dev's people, the other half's impostors above the thresholds promised for 1e-5,
    1e-6 and 1e-7 are within what a true rate at the promise would give (the 99th percentile of its count)."""
    check = evaluation["tail_check"]
    print(f"\n{evaluation['model_id']} tail check: {check}")
    assert check["heldout_comparisons"] > 3_000_000
    assert [row["rate"] for row in check["rates"]] == [1e-5, 1e-6, 1e-7]
    for row in check["rates"]:
        assert row["false_matches"] <= row["allowed"], row
    assert check["within"]


def test_the_shipped_tail_is_this_one_with_the_label_noise_left_out(  # type: ignore[no-untyped-def]
    evaluation: dict,  # type: ignore[type-arg]
    registry: ModelRegistry,
) -> None:
    shipped = Tail(registry.calibration(evaluation["model_id"])["tail"])
    fresh = Tail(evaluation["calibration"]["tail"])
    for rate in (1e-5, 1e-6, 1e-7, 1e-8):
        assert abs(shipped.similarity(rate) - fresh.similarity(rate)) < 0.01, rate
    tails = evaluation["tail"]
    assert tails["label_noise_removed"] and tails["as_filed"]  # the figures both ways, as README states them


def test_a_fusion_weight_is_fitted_on_half_the_people_and_checked_on_the_other() -> None:
    """Two models whose errors are independent: their fused score misses fewer mates than either, the weight of
    two equally good models is near the middle, and the check is on people the weight was not fitted on."""
    from jobs.evaluate import Pair
    from jobs.fusion import fit_fusion

    rng = np.random.default_rng(7)
    first: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}
    pairs = []
    for person in range(300):
        centre = rng.standard_normal(32)
        names = [f"P{person:03d}/P{person:03d}_{n:04d}.jpg" for n in range(3)]
        for name in names:
            for model in (first, second):
                vector = centre + 1.1 * rng.standard_normal(32)
                model[name] = (vector / np.linalg.norm(vector)).astype(np.float32)
        pairs += [Pair(names[0], names[1], True), Pair(names[1], names[2], True)]
    fitted = fit_fusion(first, second, pairs)
    assert 0.3 <= fitted["weight"] <= 0.7
    checked = fitted["checked_on"]
    assert checked["fnmr_fused"] < min(checked["fnmr_first"], checked["fnmr_second"])
    assert fitted["fitted_on"]["genuine_pairs"] + checked["genuine_pairs"] == len(pairs)
