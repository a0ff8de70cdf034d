"""Fitting a fused recipe's weight (`Recipe.fused_with`) on half of a data set's people, checked on the other half."""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.models.calibration import fnmr_at_rate
from jobs.evaluate import LabelNoise, Pair, halves, impostor_similarities

FUSION_GRID = np.round(np.linspace(0.0, 1.0, 41), 3)


def fit_fusion(
    first: dict[str, np.ndarray], second: dict[str, np.ndarray], pairs: list[Pair], rate: float = 1e-5
) -> dict[str, Any]:
    """The weight w of a fused score w * s1 + (1 - w) * s2 (`Recipe.fused_with`), fitted on one half of the people
    (`halves`: no one in both) as the w with the fewest missed mates at this false match rate, then checked on the
    other half beside each model alone. Photos where either model found no face are left out of both."""
    names = sorted(set(first) & set(second))
    noise = LabelNoise.load()
    sides = halves({n: first[n] for n in names}, noise)

    def scores(side: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        kept = [p for p in pairs if p.same and p.a in side and p.b in side]
        genuine = [np.array([float(e[p.a] @ e[p.b]) for p in kept]) for e in (first, second)]
        impostor = [impostor_similarities({n: e[n] for n in side}, noise) for e in (first, second)]
        return genuine[0], genuine[1], impostor[0], impostor[1]

    def fnmr(genuine: np.ndarray, impostor: np.ndarray) -> float:
        """As a calibration counts it, without fitting a tail per weight."""
        return float(fnmr_at_rate(genuine, np.sort(impostor), rate) or 0.0)

    fit, check = scores(sides[0]), scores(sides[1])
    by_weight = {float(w): fnmr(w * fit[0] + (1 - w) * fit[1], w * fit[2] + (1 - w) * fit[3]) for w in FUSION_GRID}
    weight = min(by_weight, key=lambda w: (by_weight[w], abs(w - 0.5)))

    def figures(side: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
        g1, g2, i1, i2 = side
        return {
            "genuine_pairs": len(g1),
            "impostor_comparisons": len(i1),
            "fnmr_first": round(fnmr(g1, i1), 4),
            "fnmr_second": round(fnmr(g2, i2), 4),
            "fnmr_fused": round(fnmr(weight * g1 + (1 - weight) * g2, weight * i1 + (1 - weight) * i2), 4),
        }

    return {
        "rate": rate,
        "weight": weight,
        "fitted_on": figures(fit),
        "checked_on": figures(check),
        "fnmr_by_weight_on_fitted_half": {str(w): round(f, 4) for w, f in by_weight.items()},
    }
