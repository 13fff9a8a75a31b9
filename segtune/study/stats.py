"""The statistics of a study (its report and its stage decisions): confidence intervals, paired comparisons, importances.

Every number here is over the repeats of a configuration (one value per seed), so "the noise"
is the spread between seeds of one configuration. The intervals are those of scipy's t-tests
(``ttest_1samp`` for a mean, ``ttest_rel`` for a paired difference), read from their results'
``confidence_interval()``.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from scipy import stats

CONFIDENCE = 0.95  # the level of every interval in a report


@dataclass(frozen=True)
class MeanCI:
    """A mean and its confidence interval; ``low``/``high`` are None with fewer than two values."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (the ± of :meth:`text`); None without an interval."""
        return None if self.low is None else (self.high - self.low) / 2

    def text(self, digits: int = 4) -> str:
        """``0.8123 ± 0.0100`` (or the mean alone for one value)."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE) -> MeanCI:
    """The mean of ``values`` and its t-distribution confidence interval.

    Args:
        values: one value per repeat (seed); at least one.
        confidence: the interval's level, e.g. 0.95.

    Returns:
        A :class:`MeanCI`; with one value the interval is unknown (None).

    Example:
        >>> mean_ci([0.80, 0.82, 0.81]).text(3)
        '0.810 ± 0.025'
    """
    if not values:
        raise ValueError("mean_ci needs at least one value")
    if len(values) < 2:
        return MeanCI(statistics.fmean(values), None, None, len(values))
    return _with_interval(values, _quiet(stats.ttest_1samp, values, 0.0), confidence)


def _quiet(ttest: Callable[..., Any], *samples: Any) -> Any:
    """scipy's t-test of ``samples``; equal values (an interval of width 0) make scipy warn of a
    precision loss that does not matter here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ttest(*samples)


def _with_interval(values: Sequence[float], result: Any, confidence: float) -> MeanCI:
    """The mean of ``values`` and the interval of the mean from scipy's t-test ``result`` on them."""
    interval = result.confidence_interval(confidence_level=confidence)
    return MeanCI(statistics.fmean(values), float(interval.low), float(interval.high), len(values))


@dataclass(frozen=True)
class PairedComparison:
    """The best configuration against another one over the seeds both ran."""

    other: int  # the other trial's number
    seeds: tuple[int, ...]
    difference: MeanCI  # best minus other (for a minimised objective: other minus best), per seed
    p_value: float | None

    @property
    def within_noise(self) -> bool:
        """True when the interval of the difference contains 0 (or is unknown)."""
        d = self.difference
        return bool(d.low is None or d.low <= 0.0 <= d.high)


def paired_comparison(best: dict[int, float], other: dict[int, float], *, other_number: int,
                      maximize: bool = True, confidence: float = CONFIDENCE) -> PairedComparison | None:
    """Compare two configurations seed by seed (a paired t-test on the shared seeds).

    Args:
        best: objective value per seed of the best configuration.
        other: objective value per seed of the configuration compared with it.
        other_number: the other trial's number, kept in the result.
        maximize: the study's direction; the difference is oriented so that positive means
            "the best is better".
        confidence: the level of the difference's interval.

    Returns:
        The comparison, or None when the two share fewer than two seeds.
    """
    seeds = tuple(sorted(set(best) & set(other)))
    if len(seeds) < 2:
        return None
    ours, theirs = [best[s] for s in seeds], [other[s] for s in seeds]
    first, second = (ours, theirs) if maximize else (theirs, ours)  # a positive difference favours the best
    diffs = [a - b for a, b in zip(first, second)]
    result = _quiet(stats.ttest_rel, first, second)
    p_value = float(result.pvalue) if statistics.pstdev(diffs) > 0 else None
    return PairedComparison(other_number, seeds, _with_interval(diffs, result, confidence), p_value)


def importances(study: optuna.Study) -> tuple[dict[str, dict[str, float]], str | None]:
    """Hyperparameter importances of the completed trials by fANOVA and mean decrease in impurity.

    Returns:
        ``({evaluator: {parameter: importance}}, None)``, or ``({}, reason)`` where the study
        is too small or too uniform for importances (the reason is a sentence for the report).
    """
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3:
        return {}, (f"Importances need at least 3 completed trials with the same parameters; "
                    f"this study has {len(done)}.")
    shared = set.intersection(*(set(t.params) for t in done))
    varied = sorted(p for p in shared if len({repr(t.params[p]) for t in done}) > 1)
    if not varied:
        return {}, "Importances need a parameter that every completed trial sampled and that took several values."
    evaluators = {"fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=0),
                  "mean decrease in impurity": optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)}
    result: dict[str, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, evaluator in evaluators.items():
            try:
                result[name] = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
            except (RuntimeError, ValueError, ZeroDivisionError) as err:
                return {}, f"Importances could not be computed ({name}: {err})."
    return result, None


__all__ = ["CONFIDENCE", "MeanCI", "PairedComparison", "importances", "mean_ci", "paired_comparison"]
