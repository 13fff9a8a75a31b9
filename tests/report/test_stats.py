"""Statistics of a report: t intervals over seeds and paired comparisons."""

from __future__ import annotations

import statistics

import pytest
from scipy import stats

from segtune.report.stats import mean_ci, paired_comparison


def test_mean_ci_is_the_t_interval():
    values = [0.80, 0.82, 0.81, 0.79]
    ci = mean_ci(values)
    low, high = stats.t.interval(0.95, 3, loc=statistics.fmean(values), scale=stats.sem(values))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    # one value: the interval is unknown, not zero
    assert mean_ci([0.5]).low is None and mean_ci([0.5]).text() == "0.5000"


@pytest.mark.parametrize("other, within_noise", [
    ({0: 0.805, 1: 0.815, 2: 0.809}, True),   # differences -0.005, +0.005, +0.001: noise
    ({0: 0.60, 1: 0.625, 2: 0.61}, False),    # about 0.2 lower on every seed
])
def test_paired_comparison_says_when_the_difference_is_noise(other, within_noise):
    best = {0: 0.80, 1: 0.82, 2: 0.81}
    assert paired_comparison(best, other, other_number=1).within_noise is within_noise
    # fewer than two shared seeds: no comparison
    assert paired_comparison(best, {5: 0.1}, other_number=1) is None
