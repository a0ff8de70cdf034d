"""Rekognition's 0-100 similarity from our calibrated false match rate, and back.

Up to the calibration's resolution the number states a false match rate: `S = 30 - 10 * log10(FMR)`, with FMR the
per-comparison rate as every match reports it (the floor's margin included). So 80 means 1e-5 (the default floor,
and Rekognition's default threshold), 70 means 1e-4, 90 means 1e-6. Above the similarity where the calibration can
no longer resolve the rate (SFace: FMR 7.5e-6, S 81.25), S rises linearly with the cosine to 100 at cosine 1: every
such match has an FMR of at most that bound, and higher numbers rank stronger matches. The map is monotone in the
cosine, so thresholds and orderings carry over exactly.
"""

from __future__ import annotations

import math

import numpy as np

from cluster.models.calibration import FLOOR_MARGIN, Rates

SCALE = 10.0
OFFSET = 30.0


def _resolution(rates: Rates) -> tuple[float, float]:
    """(cosine, S) where the calibration stops resolving rates."""
    rate = FLOOR_MARGIN * rates.resolved
    return rates.floor(rate), OFFSET - SCALE * math.log10(rate)


def percent(cosine: float | np.ndarray, rates: Rates) -> np.ndarray:
    """Rekognition's Similarity for cosines, rounded to 4 decimals."""
    cosine = np.asarray(cosine, dtype=np.float64)
    at_cos, at_s = _resolution(rates)
    rate, _bound = rates.at(cosine)
    by_rate = np.clip(OFFSET - SCALE * np.log10(np.maximum(rate, 1e-300)), 0.0, 100.0)
    above = at_s + (100.0 - at_s) * (cosine - at_cos) / max(1e-9, 1.0 - at_cos)
    return np.round(np.where(cosine > at_cos, np.minimum(above, 100.0), np.minimum(by_rate, at_s)), 4)


def cosine_for(similarity: float, rates: Rates) -> float:
    """The cosine a Similarity threshold stands for (the inverse of `percent`)."""
    at_cos, at_s = _resolution(rates)
    if similarity > at_s:
        return at_cos + (similarity - at_s) / (100.0 - at_s) * (1.0 - at_cos)
    rate = rate_of(similarity)
    return -1.0 if rate >= 1.0 else rates.floor(rate)


def rate_of(similarity: float) -> float:
    """The false match rate per comparison a Similarity at or below the resolution states."""
    return float(10 ** ((OFFSET - similarity) / SCALE))


def of_rate(rate: float) -> float:
    return round(OFFSET - SCALE * math.log10(rate), 4)
