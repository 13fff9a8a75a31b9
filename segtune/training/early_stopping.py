"""Early stopping: the best value of a monitored metric, and when to stop for want of progress."""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Tracks the best value of ``monitor`` and stops after ``patience`` validations without improving it.

    A value improves on the best when it is better by more than ``min_delta`` (larger for
    ``mode="max"``, smaller for ``"min"``); a NaN never improves. Validations are counted, whatever
    the run's clock: "validate every 50 steps, patience 5" stops 250 steps after the best, and with
    a validation every epoch patience counts epochs. The position of each value (``at``: an epoch or
    a step) is only recorded, as :attr:`best_epoch`.

    Args:
        monitor: the metric's name (``val.dice_mean``, ``val.loss``, ...), for messages.
        mode: ``"max"`` or ``"min"``; default ``"max"`` for a Dice, else ``"min"``.
        patience: validations without improvement before stopping; 0 never stops.
        min_delta: the least change that counts as an improvement.

    Example:
        >>> stopping = EarlyStopping("val.loss", patience=2)
        >>> [stopping.step(v, epoch=e) for e, v in enumerate([0.5, 0.4, 0.45, 0.41], start=1)]
        [True, True, False, False]
        >>> stopping.best, stopping.best_epoch, stopping.stopped
        (0.4, 2, True)
    """

    def __init__(self, monitor: str, *, mode: Literal["max", "min"] | None = None, patience: int = 0,
                 min_delta: float = 0.0) -> None:
        if mode is None:
            mode = "max" if "dice" in monitor else "min"
        if mode not in ("max", "min"):
            raise ValueError(f"early stopping on {monitor}: mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = -self.sign * math.inf  # in the monitor's own units
        self.best_epoch = 0  # the epoch (or step) of the best value; 0: no value improved yet
        self.stale = 0  # validations since the best
        self.stopped = False

    def step(self, value: float, *, epoch: int | float) -> bool:
        """Record ``value`` of the validation at ``epoch`` (an epoch, or a step); returns whether it is a new best.

        After it, :attr:`stopped` says whether the run should stop.
        """
        improved = self.sign * value > self.sign * self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        self.stopped = bool(self.patience and self.stale >= self.patience)
        return improved

    def state_dict(self) -> dict[str, Any]:
        """The state as plain values, for a checkpoint (``best`` stored larger-is-better)."""
        return {"best": self.sign * self.best, "best_epoch": self.best_epoch, "stale": self.stale,
                "stopped_early": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s values."""
        self.best = self.sign * state["best"]
        self.best_epoch, self.stale, self.stopped = state["best_epoch"], state["stale"], state["stopped_early"]
