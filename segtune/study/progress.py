"""The progress of a running study: one line per epoch of the running trial, with the time left.

A study prints a line per finished trial (:func:`~segtune.study.records.progress_line`); trials
take minutes, so :class:`EpochProgress` adds a line after each epoch of the running trial: its
validation Dice, the epoch's seconds, and two estimates from the mean epoch time of this worker
so far: the time left in this trial (its remaining epochs) and at most in the study (the
remaining trials trained to the end; pruning and early stopping make it less).
"""

from __future__ import annotations

import math
import time
from typing import Any

import optuna

__all__ = ["EpochProgress"]


class EpochProgress:
    """``on_epoch(trial, epochs, epoch, row)``: print one line per epoch of the running trial.

    Args:
        n_trials: the trials the study runs (a grid's cells; ``inf`` when unbounded: no study estimate).
    """

    def __init__(self, n_trials: float) -> None:
        self.n_trials = n_trials
        self.seconds, self.epochs = 0.0, 0  # every epoch this worker trained, for the mean
        self.last = time.perf_counter()

    def __call__(self, trial: optuna.Trial, epochs: int, epoch: int, row: dict[str, Any]) -> None:
        self.seconds += row.get("seconds", time.perf_counter() - self.last)
        self.epochs += 1
        self.last = time.perf_counter()
        print(self.line(trial.number, epochs, epoch, row), flush=True)

    def line(self, number: int, epochs: int, epoch: int, row: dict[str, Any]) -> str:
        """``  trial 1  epoch  7/40  val_dice 0.8120  2.1 s  ~1.2 min left in this trial, at most ~5 min in the study``.

        Example:
            >>> p = EpochProgress(4); p.seconds, p.epochs = 20.0, 10
            >>> p.line(0, 40, 10, {"val_dice_mean": 0.8, "seconds": 2.0})
            '  trial   0  epoch  10/40  val_dice 0.8000  2.0 s  ~1 min left in this trial, at most ~5 min in the study'
        """
        per_epoch = self.seconds / max(self.epochs, 1)
        dice = f"  val_dice {row['val_dice_mean']:.4f}" if "val_dice_mean" in row else ""
        left = f"  ~{_minutes(per_epoch * (epochs - epoch))} left in this trial"
        if math.isfinite(self.n_trials):
            later = max(self.n_trials - number - 1, 0) * epochs
            left += f", at most ~{_minutes(per_epoch * (epochs - epoch + later))} in the study"
        return f"  trial {number:>3}  epoch {epoch:>3}/{epochs}{dice}  {row.get('seconds', 0.0):.1f} s{left}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"
