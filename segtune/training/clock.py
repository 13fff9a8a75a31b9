"""The clock of a run: its budget in epochs or in optimizer steps, and where it validates.

A run counts optimizer steps (one per batch). With ``train.epochs`` its periods are epochs,
validated every ``train.val_every`` epochs and at the last; with ``train.steps`` its periods are
``train.val_every_steps`` steps (default: one epoch's worth of batches), each ending in a
validation, and they run across epoch boundaries (the next epoch's shuffle is drawn when its
first batch is needed, as an epoch budget draws it). Both clocks are the same run when their
counts agree: ``steps = epochs x batches per epoch`` and ``val_every_steps = batches per epoch``.

A position on the clock is an epoch (epoch budget) or a step (step budget): the loop's callbacks,
the pruners' rungs, early stopping's best and the schedules count in it. Counts of periods (early
stopping's patience, ``model.unfreeze_encoder_after`` under a step budget) count validations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

from segtune.config import TrainConfig
from segtune.training.runtime import epoch_batches

__all__ = ["Clock", "budget_changes", "units_run"]


@dataclass(frozen=True)
class Clock:
    """A run's budget on its clock.

    Args:
        unit: ``"epoch"`` or ``"step"``.
        length: the budget in ``unit``s.
        per_epoch: optimizer steps (batches) in one epoch.
        every: validate every ``every`` units (and at the end).

    Example:
        >>> clock = Clock("step", length=10, per_epoch=4, every=3)
        >>> [clock.period_end(s) for s in (0, 3, 6, 9)], clock.total_steps
        ([3, 6, 9, 10], 10)
    """

    unit: Literal["epoch", "step"]
    length: int
    per_epoch: int
    every: int

    @classmethod
    def of(cls, cfg: TrainConfig, per_epoch: int) -> "Clock":
        """The clock of ``cfg`` (``train.*``) for a training set of ``per_epoch`` batches an epoch."""
        if cfg.steps is None:
            return cls("epoch", cfg.epochs, per_epoch, cfg.val_every)
        return cls("step", cfg.steps, per_epoch, cfg.val_every_steps or per_epoch)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole budget."""
        return self.length * self.per_epoch if self.unit == "epoch" else self.length

    def period_end(self, step: int) -> int:
        """The step where the period starting after ``step`` steps ends: an epoch's end, or the next validation."""
        if self.unit == "epoch":
            return (step // self.per_epoch + 1) * self.per_epoch
        return min(step + self.every, self.length)

    def position(self, step: int) -> int:
        """``step`` on the clock: the epochs done (epoch budget) or ``step`` itself."""
        return step // self.per_epoch if self.unit == "epoch" else step

    def periods(self, step: int) -> int:
        """The periods ``step`` steps complete: epochs (epoch budget), or validations (step budget,
        one every ``every`` steps). ``model.unfreeze_encoder_after`` counts in them, so that under a
        step budget it counts validations as ``train.patience`` does."""
        return step // (self.per_epoch if self.unit == "epoch" else self.every)

    def validates(self, step: int) -> bool:
        """Whether the period ending at ``step`` ends in a validation."""
        at = self.position(step)
        return self.unit == "step" or at % self.every == 0 or at >= self.length

    def epochs(self, step: int) -> float:
        """The epochs ``step`` steps make (a fraction within an epoch)."""
        return round(step / self.per_epoch, 4)

    def spans(self, start: int, end: int, n_samples: int, batch_size: int) -> Iterator[tuple[int, int, list[slice], int]]:
        """The batches of steps ``start`` to ``end``, one epoch at a time: ``(epoch, first, parts, samples)``,
        ``epoch`` counted from 0, ``first`` the index of its first batch in the epoch (0: the epoch starts,
        draw its shuffle), ``parts`` the batches as slices of the epoch's ``n_samples``, ``samples`` their count."""
        batches = epoch_batches(n_samples, batch_size)
        while start < end:
            epoch, first = divmod(start, self.per_epoch)
            parts = batches[first:first + end - start]
            yield epoch, first, parts, sum(min(p.stop, n_samples) - p.start for p in parts)
            start += len(parts)


def budget_changes(train: TrainConfig, length: int, unit: Literal["epoch", "step"] | None = None) -> dict[str, Any]:
    """The changes (``--set`` paths) that give a run of ``train`` a budget of ``length`` units of ``unit``.

    ``unit`` defaults to the run's own clock, so a caller that shortens a run (a probe, an lr search, a
    trial sized to a time budget) keeps its clock; a change of clock clears the other clock's fields.

    Example:
        >>> budget_changes(TrainConfig(steps=5000, val_every_steps=50), 200)
        {'train.steps': 200}
        >>> budget_changes(TrainConfig(steps=5000, val_every_steps=50), 1, "epoch")
        {'train.epochs': 1, 'train.steps': None, 'train.val_every_steps': None}
    """
    unit = unit or train.unit
    if unit == train.unit:
        return {f"train.{unit}s": length}
    if unit == "epoch":
        return {"train.epochs": length, "train.steps": None, "train.val_every_steps": None}
    return {"train.steps": length, "train.epochs": None, "train.val_every": 1}


def units_run(summary: Mapping[str, Any], unit: Literal["epoch", "step"]) -> float:
    """How many units of ``unit`` a finished run trained, read off its ``summary.json`` whatever its own clock
    (``steps_run``, or ``epochs_run``: fractions of an epoch under a step budget)."""
    return float(summary["steps_run"] if unit == "step" else summary["epochs_run"])
