"""The deep tail of the impostor scores: similarities for false match rates far below what the calibration's own
comparisons can count (a search of a million faces needs about 1e-8 per comparison).

Peaks over a threshold: the highest impostor similarities (those above `u`, a fraction `p_u` of all) are fitted
with a generalised Pareto distribution, so that P(S > s) = p_u * (1 + xi (s - u) / sigma) ** (-1 / xi) for s > u.
The fit's uncertainty is carried by a bootstrap (the count above `u` drawn again, the excesses resampled, the fit
repeated): each rate's similarity is given as the estimate and as its upper confidence bound, and what promises
per search is the bound. Cosine scores end at 1, so the fitted shape is negative (a finite end point), and no rate
is extrapolated past `MIN_TAIL_RATE`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Rates the tail is stated for; a search needing a finer one is refused (see Rates.search_threshold).
MIN_TAIL_RATE = 1e-9
# Fraction of the impostor comparisons above the tail's threshold, and the fewest exceedances a fit uses.
TAIL_FRACTION = 2e-4
MIN_EXCEEDANCES = 500
# Fewer impostor comparisons than this give no tail: extrapolating 1e-9 from them would be a guess.
MIN_COMPARISONS = 1_000_000
CONFIDENCE = 0.95
BOOTSTRAP = 200
STEP = 0.1  # decades between the table's rates


def _quantile(rate: np.ndarray, u: float, p_u: float, xi: float, sigma: float) -> np.ndarray:
    """The similarity exceeded with probability `rate` (< p_u) under the fitted tail."""
    ratio = np.asarray(rate, dtype=np.float64) / p_u
    if abs(xi) < 1e-9:
        return np.asarray(u - sigma * np.log(ratio))
    return np.asarray(u + sigma / xi * (ratio ** (-xi) - 1.0))


def _fit(excess: np.ndarray) -> tuple[float, float]:
    from scipy.stats import genpareto

    xi, _, sigma = genpareto.fit(excess, floc=0.0)
    return float(xi), float(sigma)


def fit_tail(impostor: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
    """The tail of these impostor similarities, or None where there are too few to fit one."""
    n = len(impostor)
    k = max(MIN_EXCEEDANCES, round(TAIL_FRACTION * n))
    if n < MIN_COMPARISONS:
        return None
    top = np.sort(np.partition(np.asarray(impostor, dtype=np.float64), n - k - 1)[n - k - 1 :])
    u, excess = float(top[0]), top[1:] - top[0]
    p_u = len(excess) / n
    xi, sigma = _fit(excess)
    exponents = np.round(np.arange(np.ceil(np.log10(p_u) / STEP) * STEP, np.log10(MIN_TAIL_RATE) - 1e-9, -STEP), 1)
    rates = 10.0**exponents
    estimate = np.minimum(_quantile(rates, u, p_u, xi, sigma), 1.0)
    rng = np.random.default_rng(seed)
    drawn = np.empty((BOOTSTRAP, len(rates)))
    for b in range(BOOTSTRAP):
        count = max(MIN_EXCEEDANCES // 2, int(rng.binomial(n, p_u)))
        sample = rng.choice(excess, size=count, replace=True)
        bxi, bsigma = _fit(sample)
        drawn[b] = _quantile(rates, u, count / n, bxi, bsigma)
    upper = np.minimum(np.maximum(np.quantile(drawn, CONFIDENCE, axis=0), estimate), 1.0)
    return {
        "method": "peaks over threshold, generalised Pareto (maximum likelihood), bootstrap upper bound",
        "threshold": round(u, 6),
        "exceedances": len(excess),
        "comparisons": n,
        "shape": round(xi, 6),
        "scale": round(sigma, 6),
        "confidence": CONFIDENCE,
        "bootstrap": BOOTSTRAP,
        "seed": seed,
        # [rate per comparison, similarity (estimate), similarity (upper bound)], from p_u down to MIN_TAIL_RATE.
        "table": [
            [float(f"{r:.3g}"), round(float(e), 6), round(float(h), 6)]
            for r, e, h in zip(rates, estimate, upper, strict=True)
        ],
    }


class Tail:
    """A fitted tail ready to read: the similarity a rate needs (its upper bound), and a similarity's rate."""

    def __init__(self, tail: dict[str, Any]) -> None:
        rows = sorted(tail["table"], key=lambda row: -row[0])  # rates falling, similarities rising
        self.log_rates = np.log10([row[0] for row in rows])
        self.estimate = np.maximum.accumulate(np.array([row[1] for row in rows], dtype=np.float64))
        self.upper = np.maximum.accumulate(np.array([row[2] for row in rows], dtype=np.float64))
        self.start = float(10 ** self.log_rates[0])  # the highest rate the tail states
        self.end = float(10 ** self.log_rates[-1])  # the lowest

    def similarity(self, rate: float, bound: bool = True) -> float:
        """The similarity at which at most `rate` impostors per comparison score as high (upper bound by
        default); `rate` between `end` and `start`."""
        sims = self.upper if bound else self.estimate
        return float(np.interp(-np.log10(rate), -self.log_rates, sims))

    def rate(self, similarity: float | np.ndarray) -> np.ndarray:
        """The rate at this similarity read from the upper-bound curve (so never below what the bound promises);
        `start` below the tail, `end` at or past its last row."""
        return np.asarray(10 ** np.interp(similarity, self.upper, self.log_rates))
