"""The statistics of a study (its report and its stage decisions): confidence intervals, paired comparisons, importances.

Most numbers here are over the repeats of a configuration (one value per seed), so "the noise"
is the spread between seeds of one configuration. The intervals are those of scipy's t-tests
(``ttest_1samp`` for a mean, ``ttest_rel`` for a paired difference), read from their results'
``confidence_interval()``.

The verdicts between two trials (:func:`verdict`, :func:`ranking`) pair what both ran. Where they
share at least :data:`MIN_CASES` cases, they compare case by case: each case's difference is the
mean over the seeds and folds both ran it in, the interval of the mean difference is a bootstrap
one over cases (no normality assumed: per-case Dice is bounded and skewed) and the test is
Wilcoxon's signed-rank test on the per-case differences (robust to the few failed cases that
dominate a mean). With fewer cases (the demo's validation blocks, a handful of test volumes) a
rank test has too little to rank, and the verdict is the paired t-test over the shared seeds.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
# scipy.stats is imported in the functions that use it: it takes about a second, and every command imports this module

import optuna

CONFIDENCE = 0.95  # the level of every interval in a report
MIN_CASES = 10  # shared cases from which verdicts compare case by case (Wilcoxon), not seed by seed
N_BOOTSTRAP = 4000  # resamples of the bootstrap interval of a mean per-case difference


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
    from scipy import stats
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
    from scipy import stats
    seeds = tuple(sorted(set(best) & set(other)))
    if len(seeds) < 2:
        return None
    ours, theirs = [best[s] for s in seeds], [other[s] for s in seeds]
    first, second = (ours, theirs) if maximize else (theirs, ours)  # a positive difference favours the best
    diffs = [a - b for a, b in zip(first, second)]
    result = _quiet(stats.ttest_rel, first, second)
    p_value = float(result.pvalue) if statistics.pstdev(diffs) > 0 else None
    return PairedComparison(other_number, seeds, _with_interval(diffs, result, confidence), p_value)


CaseKey = tuple[int, "int | None", str]  # (seed, fold, case id): one evaluation of one case


@dataclass(frozen=True)
class Verdict:
    """Trial ``a`` against trial ``b`` on what both ran; ``difference`` is oriented so that a
    positive value favours ``a`` (for a minimised objective: ``b - a``)."""

    a: int
    b: int
    test: str  # "Wilcoxon signed-rank over N cases" or "paired t over N seeds"
    n: int  # the cases (or seeds) compared
    difference: MeanCI
    p_value: float | None
    confidence: float = CONFIDENCE

    @property
    def separated(self) -> bool:
        """Whether the interval of the difference excludes 0 (and the test's p is below 1 - confidence)."""
        d = self.difference
        if d.low is None or d.low <= 0.0 <= d.high:
            return False
        return self.p_value is None or self.p_value < 1 - self.confidence

    @property
    def sign(self) -> str:
        """``>`` (a is better), ``<`` (a is worse) or ``=`` (within the noise)."""
        return "=" if not self.separated else (">" if self.difference.mean > 0 else "<")

    @property
    def word(self) -> str:
        """``better``, ``worse`` or ``no difference``, of ``a``."""
        return {">": "better", "<": "worse", "=": "no difference"}[self.sign]


def _case_differences(a: Mapping[CaseKey, float], b: Mapping[CaseKey, float], maximize: bool) -> list[float]:
    """One difference per case shared by ``a`` and ``b``: the mean over the (seed, fold) both ran it in."""
    by_case: dict[str, list[float]] = {}
    for key in sorted(set(a) & set(b), key=str):
        diff = a[key] - b[key] if maximize else b[key] - a[key]
        by_case.setdefault(key[2], []).append(diff)
    return [statistics.fmean(v) for v in by_case.values()]


def bootstrap_mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE) -> MeanCI:
    """The mean of ``values`` and its bootstrap (BCa, :data:`N_BOOTSTRAP` resamples, seed 0) interval."""
    from scipy import stats
    if statistics.pstdev(values) == 0:
        return MeanCI(statistics.fmean(values), values[0], values[0], len(values))
    result = stats.bootstrap((np.asarray(values),), np.mean, confidence_level=confidence, n_resamples=N_BOOTSTRAP,
                             random_state=np.random.default_rng(0))
    interval = result.confidence_interval
    return MeanCI(statistics.fmean(values), float(interval.low), float(interval.high), len(values))


def verdict(a: int, b: int, *, seeds: tuple[Mapping[int, float], Mapping[int, float]],
            cases: tuple[Mapping[CaseKey, float], Mapping[CaseKey, float]] = ({}, {}), maximize: bool = True,
            confidence: float = CONFIDENCE) -> Verdict | None:
    """Compare trial ``a`` with trial ``b``: case by case where they share :data:`MIN_CASES` cases, else seed by seed.

    Args:
        a, b: the trial numbers.
        seeds: the objective per seed of ``a`` and of ``b``.
        cases: the objective's per-case value of ``a`` and of ``b``, keyed by (seed, fold, case id).
        maximize: the study's direction.
        confidence: the level of the interval (and 1 - the test's threshold).

    Returns:
        The :class:`Verdict`, or None when they share fewer than two seeds and too few cases.

    Example:
        >>> verdict(1, 2, seeds=({0: 0.90, 1: 0.91, 2: 0.90}, {0: 0.70, 1: 0.71, 2: 0.71})).word
        'better'
    """
    from scipy import stats
    diffs = _case_differences(*cases, maximize)
    if len(diffs) >= MIN_CASES:
        nonzero = [d for d in diffs if d != 0]
        p = float(_quiet(stats.wilcoxon, nonzero).pvalue) if len(nonzero) >= 1 else 1.0
        return Verdict(a, b, f"Wilcoxon signed-rank over {len(diffs)} cases", len(diffs),
                       bootstrap_mean_ci(diffs, confidence=confidence), p, confidence)
    compared = paired_comparison(dict(seeds[0]), dict(seeds[1]), other_number=b, maximize=maximize,
                                 confidence=confidence)
    if compared is None:
        return None
    return Verdict(a, b, f"paired t over {len(compared.seeds)} seeds", len(compared.seeds), compared.difference,
                   compared.p_value, confidence)


def ranking(entries: Sequence[tuple[int, Mapping[int, float], Mapping[CaseKey, float]]], *,
            maximize: bool = True, confidence: float = CONFIDENCE) -> tuple[str, list[Verdict | None]]:
    """A ranking with ties, ``#3 = #1 > #5``, of trials given best first.

    Each trial is compared (:func:`verdict`) with the first trial of the current group: within
    the noise of it, it joins the group (``=``); separated from it, it starts the next group (``>``).
    A lower mean that is better on the runs both share (racing gives trials different seeds) is
    shown as ``<`` and stays in the group: the two disagree, so neither is put ahead.

    Args:
        entries: ``(trial number, objective per seed, per-case values)`` of each trial, best mean first.
        maximize, confidence: as :func:`verdict`.

    Returns:
        The ranking text, and the verdict behind each step (None where the two could not be compared,
        shown as ``?``).
    """
    if not entries:
        return "", []
    text, steps = f"#{entries[0][0]}", []
    head = entries[0]
    for entry in entries[1:]:
        v = verdict(head[0], entry[0], seeds=(head[1], entry[1]), cases=(head[2], entry[2]), maximize=maximize,
                    confidence=confidence)
        steps.append(v)
        if v is not None and v.sign == ">":
            head = entry
        text += f" {'?' if v is None else v.sign} #{entry[0]}"  # '<': better on the runs both share
    return text, steps


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


__all__ = ["CONFIDENCE", "MIN_CASES", "N_BOOTSTRAP", "CaseKey", "MeanCI", "PairedComparison", "Verdict",
           "bootstrap_mean_ci", "importances", "mean_ci", "paired_comparison", "ranking", "verdict"]
