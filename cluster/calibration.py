"""Map similarity to an estimated false match rate, from impostor and genuine comparisons of evaluated photos."""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.errors import InvalidRequest

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


def build_calibration(genuine: np.ndarray, impostor: np.ndarray, failed_genuine: int = 0) -> dict[str, Any]:
    """Similarity thresholds for FMR targets that the number of impostor comparisons can support."""
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
        threshold = _threshold(impostor, rate)
        similarity_at[label] = round(threshold, 6)
        misses = int((genuine < threshold).sum()) + failed_genuine
        fnmr_at[label] = round(misses / n_genuine, 6) if n_genuine else None
    return {
        "metric": "cosine",
        "impostor_comparisons": n,
        "genuine_comparisons": n_genuine,
        "similarity_at_fmr": similarity_at,
        "fnmr_at_fmr": fnmr_at,
        "table": table,
    }


_TABLES: dict[int, tuple[dict[str, Any], np.ndarray, np.ndarray]] = {}


def _table(calibration: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, log10 rates), ascending; built once per calibration object (every match is looked up)."""
    held = _TABLES.get(id(calibration))
    if held is None or held[0] is not calibration:
        rows = sorted(calibration["table"], key=lambda r: r[1])
        held = (calibration, np.array([r[1] for r in rows]), np.log10([r[0] for r in rows]))
        _TABLES[id(calibration)] = held
    return held[1], held[2]


def estimated_false_match_rate(similarity: float | np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Interpolated FMR for a similarity; above the highest measured threshold, the smallest measured rate (a bound)."""
    sims, log_rates = _table(calibration)
    return np.asarray(10 ** np.interp(similarity, sims, log_rates, left=0.0, right=log_rates[-1]))


def floor_similarity(rate: float, calibration: dict[str, Any]) -> float:
    """The similarity a collection promising at most `rate` false matches per comparison must enforce."""
    target = rate / FLOOR_MARGIN
    n = calibration["impostor_comparisons"]
    if target * n < MIN_EVENTS:
        lowest = FLOOR_MARGIN * MIN_EVENTS / n
        raise InvalidRequest(
            f"a floor of {rate:g} false matches per comparison cannot be promised: the calibration's {n} impostor "
            f"comparisons support floors of {lowest:.2g} or more"
        )
    sims, log_rates = _table(calibration)
    # log-rate falls as similarity rises; interpolate on the reversed arrays.
    return float(np.interp(np.log10(target), log_rates[::-1], sims[::-1]))
