"""Map similarity to an estimated false match rate, from impostor and genuine comparisons of evaluated photos."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from cluster.errors import InvalidCalibration, InvalidRequest, ModelMismatch, PromiseNotSupported, RateNotSupported
from cluster.models.recipes import plain_recipe
from cluster.models.tail import Tail, fit_tail
from cluster.text import is_finite_number

FMR_POINTS = ("1e-1", "1e-2", "1e-3", "1e-4", "1e-5", "1e-6", "1e-7")
# The floor's threshold is the one measured for half the promised rate: on lfw-dev, people not in the calibration
# set showed up to 1.5x the in-sample rate at the same threshold, and at most 0.9x with this margin (README).
FLOOR_MARGIN = 2.0
# A rate is only measurable with enough impostor comparisons above its threshold.
MIN_EVENTS = 50
_GRID = np.round(np.arange(-1.0, -8.01, -0.1), 1)


def _threshold(impostor_sorted: np.ndarray, rate: float) -> float:
    """Smallest threshold with at most rate * n impostor similarities at or above it."""
    n = len(impostor_sorted)
    allowed = int(np.floor(rate * n))
    return float(np.nextafter(impostor_sorted[n - allowed - 1], np.float64(np.inf)))


def fnmr_at_rate(
    genuine: np.ndarray, impostor_sorted: np.ndarray, rate: float, failed_genuine: int = 0
) -> float | None:
    """The share of mates missed at the threshold of this false match rate (below it; failed ones are missed), as
    a calibration states it; None where the comparisons cannot measure the rate or there are no mates."""
    n, n_genuine = len(impostor_sorted), len(genuine) + failed_genuine
    if n == 0 or rate * n < 1 or not n_genuine:
        return None
    misses = int((genuine < _threshold(impostor_sorted, rate)).sum()) + failed_genuine
    return round(misses / n_genuine, 6)


def build_calibration(genuine: np.ndarray, impostor: np.ndarray, failed_genuine: int = 0) -> dict[str, Any]:
    """Similarity thresholds for FMR targets that the number of impostor comparisons can support, and the fitted
    tail beyond them where there are enough comparisons to fit one (cluster/models/tail.py)."""
    impostor = np.sort(impostor)
    n = len(impostor)
    n_genuine = len(genuine) + failed_genuine
    table = [[float(10**e), round(_threshold(impostor, float(10**e)), 6)] for e in _GRID if 10**e * n >= 1]
    similarity_at: dict[str, float | None] = {}
    fnmr_at: dict[str, float | None] = {}
    for label in FMR_POINTS:
        rate = float(label)
        if n == 0 or rate * n < 1:
            similarity_at[label] = fnmr_at[label] = None  # fewer comparisons than 1/rate: not measurable
            continue
        similarity_at[label] = round(_threshold(impostor, rate), 6)
        fnmr_at[label] = fnmr_at_rate(genuine, impostor, rate, failed_genuine)
    calibration = {
        "metric": "cosine",
        "impostor_comparisons": n,
        "genuine_comparisons": n_genuine,
        "similarity_at_fmr": similarity_at,
        "fnmr_at_fmr": fnmr_at,
        "table": table,
    }
    tail = fit_tail(impostor)
    if tail is not None:
        calibration["tail"] = tail
    return calibration


def calibration_sha256(calibration: dict[str, Any]) -> str:
    """What names a calibration: sha256 over its canonical JSON."""
    return hashlib.sha256(json.dumps(calibration, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_calibration(calibration: Any, model_id: str, recipe: str | None = None) -> dict[str, Any]:
    """A calibration fit to apply to a collection of `model_id` (and `recipe`): the shape `build_calibration`
    writes, enough rows to interpolate, rates falling as similarity rises, and made for that model and recipe when
    it says which (one that names no recipe was measured with the model's plain one, as before recipes)."""
    given: dict[str, Any] = calibration if isinstance(calibration, dict) else {}
    table, made_for = given.get("table"), given.get("model_id", model_id)
    n: Any = given.get("impostor_comparisons")
    rows = table if isinstance(table, list) else []
    if not (
        len(rows) >= 2
        and all(isinstance(row, list) and len(row) == 2 and all(map(is_finite_number, row)) for row in rows)
        and is_finite_number(n)
        and float(n).is_integer()  # JSON's integers include 1e9 and 1000.0
        and isinstance(made_for, str)
    ):
        raise InvalidRequest("not a calibration: a table of at least 2 [rate, similarity] rows, and a count")
    if made_for != model_id:
        raise ModelMismatch(f"the calibration was measured for {made_for}; this collection holds {model_id} faces")
    measured_with = given.get("recipe") or (plain_recipe(model_id).name if recipe is not None else None)
    if recipe is not None and measured_with != recipe:
        raise ModelMismatch(
            f"the calibration was measured with recipe {measured_with}; this collection's faces are {recipe}'s"
        )
    rates, sims = np.array([r for r, _ in rows], dtype=np.float64), np.array([s for _, s in rows], dtype=np.float64)
    n = int(n)
    if n <= 0 or not ((rates > 0) & (rates <= 1)).all() or not ((sims >= -1) & (sims <= 1)).all():
        raise InvalidRequest("a calibration needs impostor comparisons, rates in (0, 1] and similarities in [-1, 1]")
    if (np.diff(rates) > 0).any() or (np.diff(sims) < 0).any():
        raise InvalidCalibration("a calibration's rows must go from high rates at low similarity to low rates at high")
    if "tail" in given:
        _check_tail(given["tail"])
    return dict(calibration)


def _check_tail(tail: Any) -> None:
    """A fitted tail as `fit_tail` writes it: rows of [rate, estimate, upper bound], rates falling, similarities
    rising, the bound never below the estimate."""
    rows = tail.get("table") if isinstance(tail, dict) else None
    if not (
        isinstance(rows, list)
        and len(rows) >= 2
        and all(isinstance(row, list) and len(row) == 3 and all(map(is_finite_number, row)) for row in rows)
    ):
        raise InvalidRequest("a calibration's tail needs a table of at least 2 [rate, similarity, upper bound] rows")
    table = np.array(rows, dtype=np.float64)
    rates, estimate, upper = table[:, 0], table[:, 1], table[:, 2]
    if not ((rates > 0) & (rates <= 1)).all() or not ((table[:, 1:] >= -1) & (table[:, 1:] <= 1)).all():
        raise InvalidRequest("a calibration's tail needs rates in (0, 1] and similarities in [-1, 1]")
    if (np.diff(rates) >= 0).any() or (np.diff(estimate) < 0).any() or (np.diff(upper) < 0).any():
        raise InvalidCalibration("a calibration's tail must go from high rates at low similarity to low rates at high")
    if (upper < estimate).any():
        raise InvalidCalibration("a calibration's tail bound must be at least its estimate at every rate")


class Rates:
    """A calibration ready to read: the floor a promised rate needs, and what a similarity's false match rate is.

    Per-match figures carry the floor's margin: `FLOOR_MARGIN` times the in-sample rate, the same care the floor
    takes. Where fewer than `MIN_EVENTS` impostor comparisons scored as high, the calibration cannot tell the
    rate apart from smaller ones: the figure is then the bound `FLOOR_MARGIN * MIN_EVENTS / n`, marked as a bound.
    """

    def __init__(self, calibration: dict[str, Any]) -> None:
        self.calibration = calibration
        rows = sorted(calibration["table"], key=lambda r: r[1])
        self.sims = np.array([r[1] for r in rows], dtype=np.float64)
        self.log_rates = np.log10([r[0] for r in rows])
        self.n = int(calibration["impostor_comparisons"])
        self.resolved = MIN_EVENTS / self.n  # the smallest rate measured with MIN_EVENTS impostors above it
        self.tail = Tail(calibration["tail"]) if calibration.get("tail") else None

    def in_sample(self, similarity: float | np.ndarray) -> np.ndarray:
        """Interpolated rate among the calibration's own impostor comparisons (no margin)."""
        return np.asarray(10 ** np.interp(similarity, self.sims, self.log_rates, left=0.0, right=self.log_rates[-1]))

    def at(self, similarity: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(false match rate per comparison with the margin, whether it is a bound rather than an estimate)."""
        rate = self.in_sample(similarity)
        bound = rate < self.resolved
        return np.minimum(1.0, FLOOR_MARGIN * np.maximum(rate, self.resolved)), bound

    def floor(self, rate: float) -> float:
        """The similarity a collection promising at most `rate` false matches per comparison must enforce."""
        target = rate / FLOOR_MARGIN
        if target < self.resolved:
            raise RateNotSupported(
                f"a floor of {rate:g} false matches per comparison cannot be promised: the calibration's {self.n} "
                f"impostor comparisons support floors of {FLOOR_MARGIN * self.resolved:.2g} or more"
            )
        # log-rate falls as similarity rises; interpolate on the reversed arrays.
        return float(np.interp(np.log10(target), self.log_rates[::-1], self.sims[::-1]))

    def finest_rate(self) -> float:
        """The smallest false match rate per comparison this calibration states a similarity for, with the margin."""
        return FLOOR_MARGIN * (self.tail.end if self.tail is not None else self.resolved)

    def search_threshold(self, promise: float, faces: int) -> float:
        """The similarity that keeps a search of `faces` faces to at most `promise` expected strangers above it:
        that of the rate promise / faces, from the tail's upper bound, and never looser than the measured table
        where the table resolves that rate; both with the floor's margin (people the calibration never saw score
        up to 1.7 times as many impostors above a threshold: README)."""
        needed = promise / max(faces, 1)
        if needed < self.finest_rate():
            largest = int(promise / self.finest_rate())
            raise PromiseNotSupported(
                f"a search of {faces:,} faces cannot keep this collection's promise of at most {promise:g} expected "
                f"false candidates per search: that needs {needed:.2g} false matches per comparison, finer than its "
                f"calibration states ({self.finest_rate():.2g}); the promise holds for collections of up to "
                f"{largest:,} faces. An admin may set a looser promise (`facegrid collections promise`, audited).",
                faces_searched=faces,
                max_false_candidates_per_search=promise,
                largest_collection=largest,
            )
        candidates = []
        target = needed / FLOOR_MARGIN
        if self.tail is not None and target <= self.tail.start:
            candidates.append(self.tail.similarity(target))
        if target >= self.resolved:
            candidates.append(self.floor(needed))
        if not candidates:  # between the table's reach and the tail's start: the tail's first row is stricter
            assert self.tail is not None
            candidates.append(self.tail.similarity(self.tail.start))
        return max(candidates)

    def rate_bound(self, similarity: float) -> float:
        """A false match rate per comparison at least as high as the true one at this similarity, as carefully as
        the promise is kept: the tail's upper bound where it reaches, else the floor's margin over the table."""
        if self.tail is not None and similarity >= self.tail.upper[0]:
            return min(1.0, FLOOR_MARGIN * float(self.tail.rate(similarity)))
        return float(self.at(similarity)[0])


def floor_similarity(rate: float, calibration: dict[str, Any]) -> float:
    return Rates(calibration).floor(rate)
