"""Intervals on comparisons: the paired difference of two encoders over seeds, and the words a table shows for it.

``paired_interval(diffs)``: the mean of ``n`` paired differences (run - reference, one per seed) with a 95 %
interval: Student t on the differences (``mean +- t_{0.975, n-1} * sd / sqrt(n)``, ``scipy.stats.t``) below
:data:`BOOTSTRAP_MIN` pairs, a seeded percentile bootstrap of the mean (``scipy.stats.bootstrap``) from there
on, where resampling has enough values to work with. One pair gives no interval and no verdict.
``single_interval(a, se_a, b, se_b)``: the difference of two single evaluations with a normal interval from
their standard errors (``normal`` method; e.g. a test-set accuracy's binomial error, :func:`binomial_se`).
``verdict`` words an interval: *better* / *worse* when it lies wholly on one side of 0, *within noise* when it
contains 0, and nothing for n = 1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
BOOTSTRAP_MIN = 10  # pairs from which the bootstrap is used instead of Student t
BETTER, WORSE, NOISE, NO_VERDICT = "better", "worse", "within noise", "no verdict"


@dataclass(frozen=True)
class Interval:
    """A difference with its interval: ``n`` values (pairs), their mean, the bounds (None when n = 1) and the
    method (``paired t``, ``bootstrap``, ``normal``, or ``n = 1`` for none)."""

    n: int
    mean: float
    lo: float | None
    hi: float | None
    method: str

    @property
    def defined(self) -> bool:
        return self.lo is not None and self.hi is not None

    def text(self, digits: int = 2) -> str:
        """``-1.77 [-4.10, +0.56]`` (``+0.40`` alone when there is no interval)."""
        if not self.defined:
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)`` of ``values`` (n >= 2; sd the sample std)."""
    from scipy import stats

    n = len(values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def bootstrap_interval(values: Sequence[float], level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of the mean of ``values`` (``scipy.stats.bootstrap``, 9,999 resamples)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if np.all(x == x[0]):  # no spread: every resample has the same mean
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=9999, method="percentile",
                          random_state=np.random.default_rng(seed))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean paired difference with its interval (module docstring); ``diffs`` one value per pair (seed)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("no paired values")
    mean = statistics.fmean(diffs)
    if n == 1:
        return Interval(1, mean, None, None, "n = 1")
    if n >= BOOTSTRAP_MIN:
        return Interval(n, mean, *bootstrap_interval(diffs, level), "bootstrap")
    return Interval(n, mean, *t_interval(diffs, level), "paired t")


def binomial_se(percent: float, n: int) -> float:
    """Standard error (in points) of an accuracy of ``percent`` % measured on ``n`` images: ``sqrt(p(1-p)/n)``."""
    p = min(max(percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / max(n, 1))


def single_interval(a: float, se_a: float, b: float, se_b: float, level: float = LEVEL) -> Interval:
    """``a - b`` with the normal interval ``+- z * sqrt(se_a^2 + se_b^2)`` (two single evaluations, their standard
    errors treated as independent: conservative when both share test images or draws)."""
    from scipy import stats

    half = float(stats.norm.ppf(0.5 + level / 2)) * math.hypot(se_a, se_b)
    d = a - b
    return Interval(1, d, d - half, d + half, "normal")


def verdict(iv: Interval, higher_is_better: bool | None = True) -> str:
    """*better* / *worse* (the interval excludes 0; ``higher_is_better`` None: *higher* / *lower*), *within noise*
    (it contains 0), *no verdict* (no interval: n = 1)."""
    if not iv.defined:
        return NO_VERDICT
    assert iv.lo is not None and iv.hi is not None
    if iv.lo <= 0.0 <= iv.hi:
        return NOISE
    up = iv.lo > 0.0
    if higher_is_better is None:
        return "higher" if up else "lower"
    return BETTER if up == higher_is_better else WORSE
