"""Adaptive repeats (racing): extra seeds only for the configurations still level with the leader.

``repeats: {min: 2, max: 5, alpha: 0.05}`` in a study file. Every configuration trains ``min``
seeds. Before each further seed it is compared with the leader, the completed trial with the best
mean objective so far, on the seeds both ran (a paired t-test of the per-seed objective, each seed's
value the mean over its cross-validation folds, :func:`segtune.study.stats.paired_comparison`):

- the interval of the difference excludes 0 (the two are separated, either way): stop;
- it contains 0, or they share fewer than two seeds: train one more seed, up to ``max``;
- no leader yet (the first trial): train ``max`` seeds, since every later trial is compared with it.

The error rate controlled: a configuration whose true mean equals the leader's is stopped as
"separated" with probability at most ``alpha`` (5 %). A configuration is compared at most
``max - min`` times, and each comparison is made at the level ``1 - alpha / (max - min)``
(Bonferroni), so the chance that any of its looks separates two equal configurations is at most
``alpha``, as in a sequential test with a fixed budget of looks. The bound is per configuration
and per leader (a leader that changes during a study gives the later looks a new partner); it
assumes seeds are independent and their differences roughly normal, as the t-test does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from segtune.study.spec import Racing
from segtune.study.stats import paired_comparison

__all__ = ["RaceCall", "look_confidence", "next_seed", "race_call"]


@dataclass(frozen=True)
class RaceCall:
    """Whether a configuration gets another seed, and why (a sentence kept on the trial)."""

    more: bool
    reason: str


def look_confidence(racing: Racing) -> float:
    """The confidence level of each comparison: ``1 - alpha / (max - min)``."""
    return 1.0 - racing.alpha / (racing.max - racing.min)


def race_call(ours: Mapping[int, float], leader: Mapping[int, float] | None, *, leader_number: int | None,
              racing: Racing, maximize: bool) -> RaceCall:
    """Decide whether a configuration with per-seed objectives ``ours`` trains another seed.

    Args:
        ours: objective per seed of the configuration so far (at least ``racing.min`` seeds).
        leader: objective per seed of the leader, or None when no trial has completed.
        leader_number: the leader's trial number, for the reason.
        racing: the study's ``repeats`` section.
        maximize: the study's direction.

    Returns:
        A :class:`RaceCall`; ``more`` is False once ``racing.max`` seeds are reached.

    Example:
        >>> race_call({0: 0.5, 1: 0.52}, {0: 0.9, 1: 0.91, 2: 0.9}, leader_number=3,
        ...           racing=Racing(min=2, max=5), maximize=True).more
        True
    """
    if len(ours) >= racing.max:
        return RaceCall(False, f"{racing.max} seeds: the most repeats allows")
    if leader is None:
        return RaceCall(True, "no leader yet: the first configuration trains every seed")
    compared = paired_comparison(dict(leader), dict(ours), other_number=-1, maximize=maximize,
                                 confidence=look_confidence(racing))
    if compared is None:
        return RaceCall(True, f"fewer than 2 seeds shared with the leader (trial {leader_number})")
    if compared.within_noise:
        return RaceCall(True, f"level with trial {leader_number} on {len(compared.seeds)} seeds")
    side = "behind" if compared.difference.mean > 0 else "ahead of"
    return RaceCall(False, f"separated: {side} trial {leader_number} on {len(compared.seeds)} seeds "
                           f"({look_confidence(racing):.1%} interval of the difference excludes 0)")


def next_seed(ours: Mapping[int, float], completed: Sequence[tuple[int, float, Mapping[int, float]]], *,
              racing: Racing, maximize: bool) -> RaceCall:
    """:func:`race_call` against the leader among ``completed``, the study's completed trials as
    ``(number, mean objective, objective per seed)``: the one with the best mean (the lowest number
    on a tie). The study's trials and the benchmark's replay both decide through here."""
    ranked = sorted(completed, key=lambda t: (-t[1] if maximize else t[1], t[0]))
    leader = ranked[0] if ranked else None
    return race_call(ours, None if leader is None else leader[2], leader_number=None if leader is None else leader[0],
                     racing=racing, maximize=maximize)
