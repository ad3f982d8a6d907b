"""Intervals on comparisons: the paired t interval against a hand-computed one, verdict words, n = 1."""

from __future__ import annotations

import math

import pytest

from pcl.analysis.intervals import (
    BETTER,
    NO_VERDICT,
    NOISE,
    WORSE,
    Interval,
    binomial_se,
    paired_interval,
    single_interval,
    verdict,
)


def test_paired_t_interval_matches_the_hand_computed_one() -> None:
    diffs = [1.0, 2.0, 4.0]  # mean 7/3, sample sd sqrt(7/3), t_{0.975, 2} = 4.302652729911275 (tables)
    iv = paired_interval(diffs)
    half = 4.302652729911275 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (iv.n, iv.method) == (3, "paired t")
    assert iv.mean == pytest.approx(7 / 3)
    assert iv.lo == pytest.approx(7 / 3 - half, abs=1e-9) and iv.hi == pytest.approx(7 / 3 + half, abs=1e-9)
    assert verdict(iv) == NOISE  # lo = -1.46 < 0
    tight = paired_interval([2.0, 2.1, 1.9])
    assert verdict(tight) == BETTER and verdict(tight, higher_is_better=False) == WORSE
    assert verdict(paired_interval([-2.0, -2.1, -1.9])) == WORSE


def test_one_pair_draws_no_verdict_and_many_pairs_bootstrap() -> None:
    one = paired_interval([5.0])
    assert not one.defined and one.method == "n = 1" and verdict(one) == NO_VERDICT
    many = paired_interval([1.0 + 0.1 * i for i in range(12)])
    assert many.method == "bootstrap" and many.lo < many.mean < many.hi and verdict(many) == BETTER
    assert paired_interval([1.0 + 0.1 * i for i in range(12)]) == many  # seeded


def test_single_interval_of_two_evaluations() -> None:
    se = binomial_se(50.0, 100)
    assert se == pytest.approx(5.0)
    iv = single_interval(60.0, se, 50.0, se)
    half = 1.959963984540054 * math.sqrt(50.0)
    assert (iv.lo, iv.hi) == (pytest.approx(10 - half), pytest.approx(10 + half)) and verdict(iv) == NOISE
    assert verdict(single_interval(90.0, 1.0, 50.0, 1.0)) == BETTER
    assert Interval(1, 0.4, None, None, "n = 1").text() == "+0.40"
