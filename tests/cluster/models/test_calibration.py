"""Per-match rates read from a calibration: the floor's margin, and a bound where the calibration cannot resolve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.errors import InvalidCalibration, InvalidRequest, ModelMismatch, RateNotSupported
from cluster.models.calibration import FLOOR_MARGIN, MIN_EVENTS, Rates, build_calibration, check_calibration
from cluster.models.registry import PUBLISHED_CALIBRATIONS, SFACE_ID


@pytest.fixture(scope="module")
def rates() -> Rates:
    return Rates(json.loads((PUBLISHED_CALIBRATIONS / f"{SFACE_ID}.json").read_text()))


def test_a_match_at_the_floor_reads_as_the_promised_rate(rates: Rates) -> None:
    floor = rates.floor(1e-5)
    rate, bound = rates.at(floor)
    assert rate == pytest.approx(1e-5, rel=0.02) and not bound
    assert rates.in_sample(floor) == pytest.approx(1e-5 / FLOOR_MARGIN, rel=0.02)


def test_the_tail_is_a_bound_not_a_value(rates: Rates) -> None:
    lowest = FLOOR_MARGIN * MIN_EVENTS / rates.n
    rate, bound = rates.at(np.array([0.6, 0.8, 0.99]))
    assert bound.all() and np.allclose(rate, lowest)  # never the 7.9e-8 of a clamped table, shown as an estimate
    loose, loose_bound = rates.at(0.3)
    assert not loose_bound and lowest < loose <= 1.0


def test_a_floor_the_calibration_cannot_support_is_refused(rates: Rates) -> None:
    with pytest.raises(RateNotSupported, match="cannot be promised"):
        rates.floor(1e-7)


def test_check_calibration_refuses_what_is_not_one() -> None:
    made = {"model_id": SFACE_ID, **build_calibration(np.full(10, 0.8), np.linspace(-0.2, 0.4, 100_000))}
    assert check_calibration(made, SFACE_ID) == made
    with pytest.raises(ModelMismatch, match="measured for"):
        check_calibration(made, "dlib-resnet-v1")
    # A calibration names the recipe it was measured with; one that names none was measured with the plain one.
    assert check_calibration(made, SFACE_ID, "mtcnn-sface") == made
    with pytest.raises(ModelMismatch, match="measured with recipe mtcnn-sface; this collection's faces are mtcnn-sf"):
        check_calibration(made, SFACE_ID, "mtcnn-sface-mirror")
    assert check_calibration({**made, "recipe": "mtcnn-sface-mirror"}, SFACE_ID, "mtcnn-sface-mirror")
    shapes = ({}, [], {"table": [[0.1, 0.2]], "impostor_comparisons": 10}, {**made, "impostor_comparisons": "10"})
    values = ({**made, "impostor_comparisons": 0}, {**made, "table": [[0.1, 0.2], [0.01, 1.5]]})
    values += ({**made, "impostor_comparisons": 10**400}, {**made, "table": [[0.1, 0.2], [10**400, 0.3]]})
    for broken in (*shapes, *values):
        with pytest.raises(InvalidRequest):
            check_calibration(broken, SFACE_ID)
    with pytest.raises(InvalidCalibration, match="must go from high rates"):
        check_calibration({**made, "table": made["table"][::-1]}, SFACE_ID)
    assert check_calibration({**made, "impostor_comparisons": 1e5}, SFACE_ID)  # JSON's integers include 1e5
