"""Map similarity to an estimated false match rate, from impostor and genuine comparisons of evaluated photos."""

from __future__ import annotations

from typing import Any

import numpy as np

# Cosine similarity of unit dlib descriptors at which two faces are called the same person by default: the
# equivalent of dlib's published Euclidean threshold of 0.6 on raw descriptors, set on lfw-dev (README, Accuracy).
DEFAULT_MATCH_SIMILARITY = 0.91
FMR_POINTS = ("1e-1", "1e-2", "1e-3", "1e-4", "1e-5", "1e-6", "1e-7")


def build_calibration(genuine: np.ndarray, impostor: np.ndarray, failed_genuine: int = 0) -> dict[str, Any]:
    """Similarity thresholds for FMR targets that the number of impostor comparisons can support."""
    impostor = np.sort(impostor)
    n = len(impostor)
    n_genuine = len(genuine) + failed_genuine
    similarity_at: dict[str, float | None] = {}
    fnmr_at: dict[str, float | None] = {}
    for label in FMR_POINTS:
        rate = float(label)
        allowed = int(np.floor(rate * n))
        if n == 0 or rate * n < 1:
            similarity_at[label] = fnmr_at[label] = None  # fewer comparisons than 1/rate: not measurable
            continue
        # Threshold just above the (allowed+1)-th highest impostor similarity: at most `allowed` false matches.
        threshold = float(np.nextafter(impostor[n - allowed - 1], np.float64(np.inf)))
        similarity_at[label] = round(threshold, 6)
        misses = int((genuine < threshold).sum()) + failed_genuine
        fnmr_at[label] = round(misses / n_genuine, 6) if n_genuine else None
    return {
        "metric": "cosine",
        "impostor_comparisons": n,
        "genuine_comparisons": n_genuine,
        "similarity_at_fmr": similarity_at,
        "fnmr_at_fmr": fnmr_at,
    }


def estimated_false_match_rate(similarity: float | np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Interpolated FMR for a similarity; above the highest measured threshold, the smallest measured rate (a bound)."""
    points = [(v, float(k)) for k, v in calibration["similarity_at_fmr"].items() if v is not None]
    points.sort()
    sims = np.array([p[0] for p in points])
    log_rates = np.log10([p[1] for p in points])
    return np.asarray(10 ** np.interp(similarity, sims, log_rates, left=0.0, right=log_rates[-1]))


def similarity_for_rate(rate: float, calibration: dict[str, Any]) -> float:
    """Smallest similarity whose estimated FMR is at most `rate` (refuses rates the calibration cannot support)."""
    points = sorted((float(k), v) for k, v in calibration["similarity_at_fmr"].items() if v is not None)
    if not points or rate < points[0][0]:
        raise ValueError(f"false match rate {rate:g} is below what the calibration measured")
    rates = np.log10([p[0] for p in points])
    sims = np.array([p[1] for p in points])
    return float(np.interp(np.log10(rate), rates, sims))
