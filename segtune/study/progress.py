"""The progress of a running study: one line per epoch of the running trial, with the time left.

A study prints a line per finished trial (:func:`~segtune.study.records.progress_line`); trials
take minutes, so :class:`EpochProgress` adds a line after each epoch (with ``train.steps``, each
validation) of the running trial: its validation Dice, the period's seconds, and two estimates
from this worker's mean time per epoch (or step) so far: the time left in this trial (the rest of
its first run, and its other repeats and folds) and in the study: at most, the remaining trials
trained to the end; with a pruner, from the least, every later trial pruned at the pruner's first
rung (``pruner.min_epochs``), to that most. Racing and early stopping can make it less still.
"""

from __future__ import annotations

import math
import time
from typing import Any

import optuna

__all__ = ["EpochProgress"]


class EpochProgress:
    """``on_epoch(trial, (unit, length), at, row)``: print one line per period of the running trial.

    ``unit`` is the run's clock (``epoch``, or ``step`` with ``train.steps``), ``length`` its budget
    on that clock and ``at`` the position the period ended at; the estimates use this worker's mean
    seconds per unit so far.

    Args:
        n_trials: the trials the study runs (a grid's cells; ``inf`` when unbounded: no study estimate).
        runs_per_trial: the most runs a trial trains (repeats x folds); the lines follow its first
            run, so the rest of the trial and the later trials count that many runs each.
        first_rung: the fewest units a pruned trial trains (the pruner's ``min_epochs``; None
            without a pruner): the study estimate is then a range, from every later trial pruned there
            (its first run only) to every later trial trained to the end.
    """

    def __init__(self, n_trials: float, runs_per_trial: int = 1, first_rung: int | None = None) -> None:
        self.n_trials, self.runs, self.first_rung = n_trials, max(runs_per_trial, 1), first_rung
        self.seconds, self.units = 0.0, 0.0  # every unit (epoch or step) this worker trained, for the mean
        self.last, self.at = time.perf_counter(), (None, 0)  # the last line's (trial, position)

    def __call__(self, trial: optuna.Trial, clock: tuple[str, int], at: int, row: dict[str, Any]) -> None:
        self.seconds += row.get("seconds", time.perf_counter() - self.last)
        before = self.at[1] if self.at[0] == trial.number else 0
        self.units += max(at - before, 0)
        self.last, self.at = time.perf_counter(), (trial.number, at)
        print(self.line(trial.number, clock, at, row), flush=True)

    def line(self, number: int, clock: tuple[str, int], at: int, row: dict[str, Any]) -> str:
        """``  trial 1  epoch  7/40  val_dice 0.8120  2.1 s  ~1 min left in this trial, at most ~5 min in the study``.

        Example:
            >>> p = EpochProgress(4); p.seconds, p.units = 20.0, 10
            >>> p.line(0, ("epoch", 40), 10, {"val_dice_mean": 0.8, "seconds": 2.0})
            '  trial   0  epoch  10/40  val_dice 0.8000  2.0 s  ~1 min left in this trial, at most ~5 min in the study'
            >>> p.first_rung = 5  # a pruner whose first rung is epoch 5: 30 + 3 x 5 epochs at the least
            >>> p.line(0, ("epoch", 40), 10, {"val_dice_mean": 0.8, "seconds": 2.0})
            '  trial   0  epoch  10/40  val_dice 0.8000  2.0 s  ~1 min left in this trial, ~2 min to 5 min in the study'
        """
        unit, length = clock
        per_unit = self.seconds / max(self.units, 1)
        dice = f"  val_dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
        trial_left = (length - at) + (self.runs - 1) * length  # this run's rest, then the trial's other runs
        left = f"  ~{_minutes(per_unit * trial_left)} left in this trial"
        if math.isfinite(self.n_trials):
            later = max(self.n_trials - number - 1, 0)
            most = _minutes(per_unit * (trial_left + later * length * self.runs))
            least = most  # every later trial pruned at the first rung, where a pruner can stop one before the end
            if self.first_rung is not None and self.first_rung < length:
                least = _minutes(per_unit * (trial_left + later * self.first_rung))
            left += f", ~{least} to {most} in the study" if least != most else f", at most ~{most} in the study"
        return f"  trial {number:>3}  {unit} {at:>3}/{length}{dice}  {row.get('seconds', 0.0):.1f} s{left}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"
