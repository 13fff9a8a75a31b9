"""Statistics of a report: t intervals over seeds and paired comparisons."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from segtune.study.stats import MeanCI, mean_ci, paired_comparison


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


def _textbook_interval(values, confidence=0.95):
    """The interval the report wrote before it asked scipy's t-test for it: mean ± t * s / sqrt(n)."""
    n, mean = len(values), statistics.fmean(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


@pytest.mark.parametrize("values, confidence", [
    ([0.80, 0.82, 0.81, 0.79], 0.95),
    ([0.61, 0.64], 0.95),                      # two seeds: the widest interval
    ([0.3, 0.7, 0.5, 0.45, 0.52, 0.9], 0.99),  # another level
    ([0.5, 0.5, 0.5], 0.95),                   # equal values: an interval of width 0, not NaN
    ([-0.005, 0.005, 0.001], 0.9),             # differences of a paired comparison
])
def test_mean_ci_equals_the_textbook_t_interval(values, confidence):
    ci = mean_ci(values, confidence=confidence)
    low, high = _textbook_interval(values, confidence)
    assert ci.mean == statistics.fmean(values) and ci.n == len(values)
    assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12


@pytest.mark.parametrize("maximize", [True, False])
def test_paired_difference_is_the_t_interval_of_the_per_seed_differences(maximize):
    best, other = {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.79}, {0: 0.70, 1: 0.75, 2: 0.74, 3: 0.72, 9: 0.1}
    comparison = paired_comparison(best, other, other_number=7, maximize=maximize)
    # oriented so that a positive difference favours the best: for a minimised objective, other - best
    diffs = [(1 if maximize else -1) * (best[s] - other[s]) for s in (0, 1, 2, 3)]
    low, high = _textbook_interval(diffs)
    assert comparison.seeds == (0, 1, 2, 3) and comparison.other == 7
    assert abs(comparison.difference.mean - statistics.fmean(diffs)) < 1e-12
    assert abs(comparison.difference.low - low) < 1e-12 and abs(comparison.difference.high - high) < 1e-12
    assert comparison.p_value == pytest.approx(stats.ttest_rel([0.80, 0.82, 0.81, 0.79], [0.70, 0.75, 0.74, 0.72]).pvalue)
    assert (comparison.difference.mean > 0) is maximize and comparison.within_noise is False


def test_fewer_than_two_values_have_no_interval():
    # one value: the mean alone, no interval and no width; none: an error that says so
    assert mean_ci([0.5]) == MeanCI(0.5, None, None, 1) and mean_ci([0.5]).half_width is None
    with pytest.raises(ValueError, match="mean_ci needs at least one value"):
        mean_ci([])
    # a paired comparison of equal differences has an interval of width 0 and no p-value
    same = paired_comparison({0: 0.75, 1: 0.5}, {0: 0.5, 1: 0.25}, other_number=1)
    assert same.p_value is None and same.difference == MeanCI(0.25, 0.25, 0.25, 2)
