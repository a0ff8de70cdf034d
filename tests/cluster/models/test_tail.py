"""The deep tail and the per-search promise it serves, on scores whose true tail is known: the bound is on the
careful side of the truth, the promise tightens the threshold as a collection grows, and a size the calibration
cannot keep the promise for is refused, naming the largest it can."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from cluster.errors import InvalidCalibration, InvalidRequest, PromiseNotSupported
from cluster.models.calibration import Rates, build_calibration, check_calibration
from cluster.models.tail import MIN_TAIL_RATE, Tail, fit_tail

# Impostor-like cosines: 2 * Beta(a, b) - 1 ends at 1 and falls off steeply towards it, as real ones do.
A, B = 4.0, 12.0


def true_rate(similarity: float) -> float:
    return float(beta.sf((similarity + 1) / 2, A, B))


@pytest.fixture(scope="module")
def impostor() -> np.ndarray:
    return 2 * np.random.default_rng(7).beta(A, B, 3_000_000) - 1


@pytest.fixture(scope="module")
def calibration(impostor: np.ndarray) -> dict:  # type: ignore[type-arg]
    return build_calibration(np.full(100, 0.8), impostor)


def test_the_bound_is_on_the_careful_side_down_to_a_billionth(calibration: dict) -> None:  # type: ignore[type-arg]
    tail = Tail(calibration["tail"])
    for rate in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        upper, estimate = tail.similarity(rate), tail.similarity(rate, bound=False)
        assert upper >= estimate
        assert true_rate(upper) <= rate * 1.05, (rate, upper, true_rate(upper))  # the bound holds what it promises
        assert true_rate(estimate) <= rate * 20 and true_rate(estimate) >= rate / 20  # and the fit is near the truth
    assert tail.end == pytest.approx(MIN_TAIL_RATE)
    assert calibration["tail"]["shape"] < 0  # scores end at 1: a finite end point


def test_too_few_comparisons_fit_no_tail() -> None:
    assert fit_tail(np.random.default_rng(0).random(50_000)) is None
    assert "tail" not in build_calibration(np.full(10, 0.9), np.random.default_rng(0).random(50_000))


def test_the_promise_tightens_as_the_collection_grows_and_refuses_past_its_reach(calibration: dict) -> None:  # type: ignore[type-arg]
    rates = Rates(calibration)
    sizes = [1_000, 100_000, 5_000_000]
    thresholds = [rates.search_threshold(0.01, n) for n in sizes]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    assert rates.search_threshold(0.01, 100) >= rates.floor(1e-4)  # never looser than the table where it reaches
    for n, threshold in zip(sizes, thresholds, strict=True):
        assert n * rates.rate_bound(threshold) <= 0.01 * 1.0001
        assert n * true_rate(threshold) <= 0.01 * 1.05
    with pytest.raises(PromiseNotSupported) as refused:
        rates.search_threshold(0.01, 100_000_000)
    assert refused.value.details["largest_collection"] == 5_000_000  # 0.01 / (the margin 2 x 1e-9)
    assert "5,000,000 faces" in refused.value.message and "collections promise" in refused.value.message


def test_without_a_tail_the_promise_reaches_only_as_far_as_the_table(impostor: np.ndarray) -> None:
    table_only = {k: v for k, v in build_calibration(np.full(10, 0.8), impostor).items() if k != "tail"}
    rates = Rates(table_only)
    reach = int(0.01 / rates.finest_rate())
    assert rates.search_threshold(0.01, reach // 2) == pytest.approx(rates.floor(0.01 / (reach // 2)))
    with pytest.raises(PromiseNotSupported):
        rates.search_threshold(0.01, reach * 2)


def test_a_forged_tail_is_refused(calibration: dict) -> None:  # type: ignore[type-arg]
    forged = {**calibration, "model_id": "m", "tail": {**calibration["tail"]}}
    rows = [list(row) for row in calibration["tail"]["table"]]
    rows[3][2] = rows[3][1] - 0.01  # a bound below its estimate
    forged["tail"]["table"] = rows
    with pytest.raises(InvalidCalibration):
        check_calibration(forged, "m")
    forged["tail"]["table"] = [[1e-5, 0.5, 0.6], [1e-6, 0.4, 0.5]]  # similarity falling as the rate falls
    with pytest.raises(InvalidCalibration):
        check_calibration(forged, "m")
    forged["tail"] = {"table": "no"}
    with pytest.raises(InvalidRequest):
        check_calibration(forged, "m")
    assert check_calibration({**calibration, "model_id": "m"}, "m")["tail"] == calibration["tail"]
