"""Adaptive repeats (racing): extra seeds, one round at a time, only for configurations still level with the leader.

``repeats: {min: 2, max: 5, alpha: 0.05, margin: 0.0}`` in a study file. Every configuration the
study samples trains ``min`` seeds. Once every sampled configuration has finished (the grid
covered, ``n_trials`` reached), the study races them, in rounds:

1. the configurations still in the race all ran the same ``n`` seeds; the leader is the one with
   the best mean over them;
2. every other one is compared with the leader by Hsu's multiple comparison with the best (MCB)
   for a two-way (configuration x seed) model on the ``k`` configurations in the race and their
   ``n`` seeds, at the level ``1 - alpha / (max - min)`` (:func:`look`): a half-width ``h`` that
   bounds, for all of them at once, how far a configuration's true mean can lie above the best of
   the others';
3. one more than ``h`` behind the leader cannot be the best: it is *separated* and stops; with a
   ``margin``, one less than ``margin - h`` behind it is a *practical tie*, within ``margin`` of the
   best (as in TOST equivalence testing): it stops too;
4. each configuration left, the leader included, trains one more seed (an Optuna trial queued
   with its parameters, see :func:`queue_round`); the race ends when one is left or all have ``max``,
   or with no winner when none is left (each left it: an objective not finite on a seed, a failed
   seed); :attr:`Race.end` says which, and the study keeps it (``race_end``).

What it controls. Under the model (per-seed objectives normal with one variance around a
configuration effect plus a seed effect shared by every configuration: the seeds pair the runs),
Hsu's MCB intervals cover, for every configuration of a look at once, the difference between its
true mean and the best true mean of the others, with probability at least ``1 - alpha / (max -
min)``, however the leader was picked (Hsu 1984; the critical value is the one-sided Dunnett
quantile of ``k - 1`` comparisons, :func:`mcb_critical`); over the ``max - min`` looks (Bonferroni),
every interval the race reads covers with probability at least ``1 - alpha``. So, with probability
at least ``1 - alpha``: a truly best configuration (one of them, if several tie at the top) is
never stopped as separated, and every practical tie is truly within ``margin`` of the best. It
does not promise that a separated configuration is truly behind its leader: with ties at the top,
one of the tied best can be separated from another. Each look's level is proved for the
configurations in it; which ones those are depends on the earlier looks, which read the same seeds.
Simulated races of this rule stayed below ``alpha`` (the test suite runs one).
The race asks only "can this one still be the best?", so it needs these ``k - 1`` one-sided
comparisons and not Tukey's all pairwise two-sided ones, whose intervals are 30 to 39 % wider at
``alpha`` 0.05 (6 configurations, 5 to 10 degrees of freedom). The pooled variance is what makes
two seeds enough to stop a clearly worse configuration (a paired t over two seeds has one degree
of freedom); it assumes the configurations are about equally noisy.

The study's trials (:func:`queue_round`) and the benchmark's replay both decide through :func:`race`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from segtune.study.records import (EXTENDS, HOME, NO_WINNER, RACE, RACE_END, RUNS, SAME_AS, SEPARATED, RunRecord,
                                   per_seed, requeued_on_resume)
from segtune.study.spec import Racing, StudySpec

__all__ = ["Look", "Race", "look", "look_confidence", "mcb_critical", "queue_round", "race", "race_table"]

NOT_FINITE = "left the race: its objective"


def look_confidence(racing: Racing) -> float:
    """The confidence level of each look: ``1 - alpha / (max - min)``."""
    return 1.0 - racing.alpha / (racing.max - racing.min)


@dataclass(frozen=True)
class Look:
    """One look of the race: the configurations in it, on their first ``n`` seeds."""

    n: int
    means: dict[int, float]  # oriented: higher is better
    leader: int
    half_width: float  # of every difference's interval; inf without residual degrees of freedom
    stopped: dict[int, str]  # configuration: why it stops here


def look(block: Mapping[int, list[float]], racing: Racing, names: Mapping[int, int] | None = None) -> Look:
    """Compare every configuration of ``block`` with its leader.

    Args:
        block: each configuration's objective on the same ``n`` seeds, in seed order, oriented so that
            higher is better.
        racing: the study's ``repeats`` section.
        names: the trial number the leader is named by in the sentences (see :func:`race`).

    Returns:
        The :class:`Look`: the leader, the interval's half-width, the configurations that stop.

    Example:
        >>> look({0: [0.9, 0.91], 1: [0.6, 0.62], 2: [0.89, 0.9]}, Racing(min=2, max=5)).stopped
        {1: 'separated: behind trial 0 on 2 seeds'}
    """
    keys = list(block)
    values = np.array([block[c] for c in keys], dtype=float)
    k, n = values.shape
    means = dict(zip(keys, values.mean(axis=1).tolist()))
    leader = max(keys, key=lambda c: (means[c], -c))
    df = (k - 1) * (n - 1)
    if df == 0:
        return Look(n, means, leader, math.inf, {})
    # residuals of the additive model: configuration effect + seed effect
    residual = values - values.mean(axis=1, keepdims=True) - values.mean(axis=0, keepdims=True) + values.mean()
    scale = math.sqrt(float((residual ** 2).sum()) / df / n)
    half = mcb_critical(look_confidence(racing), k, df) * scale
    stopped, named = {}, (names or {}).get(leader, leader)
    for c in keys:
        gap = means[leader] - means[c]
        if c == leader:
            continue
        if gap - half > 0:
            stopped[c] = f"{SEPARATED}: behind trial {named} on {n} seeds"
        elif racing.margin > 0 and gap + half < racing.margin:  # gap >= 0: the leader has the best mean
            stopped[c] = f"practical tie: within {racing.margin:g} of the best (leader: trial {named}) on {n} seeds"
    return Look(n, means, leader, half, stopped)


@functools.lru_cache(maxsize=256)
def mcb_critical(confidence: float, k: int, df: int) -> float:
    """The critical value ``h`` of Hsu's MCB for ``k`` configurations and ``df`` residual degrees of
    freedom: when the ``k`` are equal, some other's mean lies above the first one's by more than ``h``
    standard errors of one mean (``sqrt(MSE / n)``) with probability ``1 - confidence``.

    ``h = sqrt(2) d``, ``d`` the one-sided Dunnett quantile of ``k - 1`` comparisons, solved from
    ``P(max_i (Z_i - Z_0) <= h S) = confidence`` (``Z`` standard normal, ``S^2`` a chi-square over
    ``df``): Gauss-Hermite in ``Z_0`` and a fine grid in ``log S`` spanning its distribution
    (deterministic; within 1e-4 of adaptive quadrature for every ``df`` from 1 to 10^6). For
    ``k = 2``, exactly ``sqrt(2)`` times Student's one-sided quantile. A confidence at or below
    ``1 / k`` (the chance the first of ``k`` equal ones leads) gives 0.

    Example:
        >>> round(mcb_critical(0.95, 2, 3), 3)  # sqrt(2) * t(0.95, 3) = sqrt(2) * 2.353
        3.328
    """
    from scipy import optimize, special, stats

    if confidence <= 1 / k:
        return 0.0
    if k == 2:
        return math.sqrt(2) * float(stats.t.ppf(confidence, df))
    z, wz = np.polynomial.hermite_e.hermegauss(64)
    wz = wz / math.sqrt(2 * math.pi)
    # log S: a heavy lower tail for few degrees of freedom (mass ~ S^df), about +-1 / sqrt(2 df) for many
    t = np.linspace(-max(14.0 / df, 10.0 / math.sqrt(2 * df)), max(3.0 / df, 10.0 / math.sqrt(2 * df)), 1701)
    s = np.exp(t)
    ws = stats.chi.pdf(s * math.sqrt(df), df) * math.sqrt(df) * s * (t[1] - t[0])

    def coverage(h: float) -> float:
        return float(ws @ special.ndtr(z[None, :] + h * s[:, None]) ** (k - 1) @ wz)

    high = 10.0
    while coverage(high) < confidence:
        high *= 4
    return float(optimize.brentq(lambda h: coverage(h) - confidence, 0.0, high, xtol=1e-10))


@dataclass(frozen=True)
class Race:
    """Where a race stands: who trains the next seed, and each configuration's call."""

    more: tuple[int, ...]  # configurations that train one more seed now
    calls: dict[int, str]  # every configuration's standing, a sentence
    looks: list[Look] = field(default_factory=list)
    end: str = ""  # once over, how the race ended, a sentence: who is left, or why there is no winner

    @property
    def over(self) -> bool:
        """Whether no configuration trains another seed."""
        return not self.more


def race(table: Mapping[int, Mapping[int, float]], racing: Racing, *, maximize: bool,
         failed: frozenset[int] = frozenset(), names: Mapping[int, int] | None = None) -> Race:
    """Replay the race on what the configurations have run so far (stateless: the same table, the same calls).

    Args:
        table: each configuration's objective per seed (seeds in training order, as sorted keys); a
            configuration counts once it has ``racing.min`` seeds; one with a non-finite value on a
            seed leaves the race there (its mean is the worst).
        racing: the study's ``repeats`` section.
        maximize: the study's direction.
        failed: configurations whose next seed failed: they leave the race where they would need it.
        names: the trial number each configuration is named by in the sentences (a study's: the
            latest trial of each, the one its leaderboard shows); by default its key.

    Returns:
        The :class:`Race`: the configurations that train one more seed now (none while a round is
        still training one), a sentence per configuration and, once over, one on how it ended
        (``no winner: ...`` when no configuration is left in it).

    Example:
        >>> r = race({0: {0: 0.9, 1: 0.91}, 1: {0: 0.6, 1: 0.62}, 2: {0: 0.89, 1: 0.9}}, Racing(min=2, max=5),
        ...          maximize=True)
        >>> r.more, r.calls[1]
        ((0, 2), 'separated: behind trial 0 on 2 seeds')
    """
    def shown(c: int) -> int:
        return names.get(c, c) if names else c

    sign = 1.0 if maximize else -1.0
    seeds = {c: [sign * v[s] for s in sorted(v)] for c, v in table.items()}
    alive = sorted(c for c, v in seeds.items() if len(v) >= racing.min)
    calls = {c: f"waits for its first {racing.min} seeds" for c in seeds if c not in alive}
    looks: list[Look] = []
    n = racing.min
    while True:
        short = [c for c in alive if len(seeds[c]) < n]
        for c in short:
            if c in failed:
                calls[c] = f"left the race: its seed {n} failed"
        alive = [c for c in alive if c not in failed or len(seeds[c]) >= n]
        for c in alive:  # a seed whose objective is not finite (a class never found: HD95 inf) ranks it last
            bad = next((s for s, v in zip(sorted(table[c]), seeds[c][:n]) if not math.isfinite(v)), None)
            if bad is not None:
                calls[c] = f"left the race: its objective on seed {bad} is not finite"
        alive = [c for c in alive if not calls.get(c, "").startswith(NOT_FINITE)]
        if len(alive) <= 1:  # the last one trains no more seeds: there is no one left to compare it with
            calls.update({c: f"the last in the race, after {min(n, len(seeds[c]))} seeds" for c in alive})
            end = f"trial {shown(alive[0])} is {calls[alive[0]]}" if alive else _no_winner(calls, looks, racing, shown)
            return Race((), calls, looks, end)
        pending = tuple(c for c in alive if len(seeds[c]) < n)
        if pending:  # the round of seed n is not complete yet
            calls.update({c: f"in the race after {n - 1} seeds" for c in alive})
            return Race(pending, calls, looks)
        if n >= racing.max:
            calls.update({c: f"{racing.max} seeds: the most repeats allows" for c in alive})
            best = max(alive, key=lambda c: (sum(seeds[c][:n]), -c))
            return Race((), calls, looks, f"trials {', '.join(str(shown(c)) for c in alive)} ran {racing.max} seeds, "
                                          f"the most repeats allows; trial {shown(best)} has the best mean over them")
        current = look({c: seeds[c][:n] for c in alive}, racing, names)
        looks.append(current)
        calls.update(current.stopped)
        alive = [c for c in alive if c not in current.stopped]
        n += 1


def _no_winner(calls: dict[int, str], looks: list[Look], racing: Racing, shown: Callable[[int], int]) -> str:
    """Why a race that no configuration is left in has no winner: each one's call, who was stopped
    against whom, and the fix. No trial is then the study's best (:func:`~segtune.study.records.best_trial`)."""
    counted = {c: why for c, why in sorted(calls.items()) if not why.startswith("waits for")}
    if not counted:
        return f"{NO_WINNER}: no configuration has completed its first {racing.min} seeds"
    each = "; ".join(f"trial {shown(c)} {why}" for c, why in counted.items())
    text = f"{NO_WINNER}: no configuration is left in the race ({each}), so no trial is named best"
    stopped = [(c, look.leader) for look in looks for c in look.stopped]
    if stopped:
        text += " (" + "; ".join(f"trial {shown(c)} was stopped against trial {shown(leader)}, which left the "
                                 f"race later" for c, leader in stopped) + ")"
    if any(why.startswith(NOT_FINITE) for why in counted.values()):
        text += ("; an objective that is not finite on a seed (HD95 and ASD are inf where a class is never found) "
                 "takes its configuration out: race on one every run gives a finite value (e.g. val.dice_mean), "
                 "or find out why the runs miss a class")
    return text


def race_table(trials: list[FrozenTrial]) -> tuple[dict[int, dict[int, float]], dict[int, FrozenTrial], frozenset[int]]:
    """The race's table from a study's trials: per configuration (its home trial), the objective per
    seed of its latest completed trial; that trial, to extend; the configurations whose extension failed."""
    latest: dict[int, FrozenTrial] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or SAME_AS in t.user_attrs:
            continue
        home = int(t.user_attrs.get(HOME, t.number))
        if home not in latest or len(t.user_attrs.get(RUNS, [])) > len(latest[home].user_attrs.get(RUNS, [])):
            latest[home] = t
    # every seed, a non-finite objective too, so that the seeds of two configurations stay paired
    table = {home: per_seed([RunRecord.from_attr(r) for r in t.user_attrs.get(RUNS, [])], finite=False)
             for home, t in latest.items()}
    live = _extended(trials)
    tried = {int(t.user_attrs[EXTENDS]) for t in trials if EXTENDS in t.user_attrs}
    # a configuration's round failed for good: its latest trial was extended, and no extension of it
    # is waiting, running, complete or to be run again (a full disk or Ctrl-C on resume; a dead
    # worker's retry is itself an extension, so one whose retries ran out counts as failed)
    failed = frozenset(home for home, t in latest.items() if t.number in tried and t.number not in live)
    return table, latest, failed


def _extended(trials: list[FrozenTrial]) -> set[int]:
    """The trials with an extension that is waiting, running, complete or to be run again on resume."""
    return {int(t.user_attrs[EXTENDS]) for t in trials if EXTENDS in t.user_attrs
            and (t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE) or requeued_on_resume(t))}


def queue_round(study: optuna.Study, spec: StudySpec) -> int:
    """Queue the race's next round in ``study``: one trial per configuration that trains one more seed.

    Called by the worker loop when no trial is waiting or running; each queued trial has the
    parameters of its configuration and extends its latest completed trial (``extends``). The calls
    are kept in the study's ``race`` attribute ({home trial: sentence}), and once the race is over
    how it ended in ``race_end`` (:attr:`Race.end`); the sentences name each configuration by its
    latest completed trial, as the leaderboard does.

    Returns:
        How many trials were queued (0: the race is over, or the study does not race).
    """
    if not isinstance(spec.repeats, Racing):
        return 0
    trials = study.get_trials(deepcopy=False)
    table, latest, failed = race_table(trials)
    # the sentences name each configuration by its latest trial, the one the leaderboard shows
    state = race(table, spec.repeats, maximize=spec.resolved_direction == "maximize", failed=failed,
                 names={home: t.number for home, t in latest.items()})
    calls = {str(c): why for c, why in sorted(state.calls.items())}
    if study.user_attrs.get(RACE) != calls:
        study.set_user_attr(RACE, calls)
    if study.user_attrs.get(RACE_END, "") != state.end:
        study.set_user_attr(RACE_END, state.end)
    extended = _extended(trials)
    queued = 0
    for home in state.more:
        base = latest[home]
        if base.number in extended:  # queued already (by another worker), or to be run again
            continue
        study.enqueue_trial(base.params, user_attrs={EXTENDS: base.number, HOME: home}, skip_if_exists=False)
        queued += 1
    return queued

