"""The wall-clock budget of ``segtune tune``: its parsing, its clock, and how it sizes the trials.

A budget (:class:`Budget`) counts the wall time of every command of one tune. Before each trial
the :class:`BudgetGate` decides whether it may start, and with how many minutes
(:func:`trial_minutes`: what is left less the measured end of a run, :func:`run_costs`); every
trial trains the epochs that fit a share of the budget (:func:`trial_epochs`). Under a step budget
(``train.steps``) every count here is in optimizer steps instead: the trials' length, the pruner's
first rung and the measured cost of one unit.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from segtune.config import TrainConfig
from segtune.errors import ConfigError
from segtune.study.records import TRIALS_DIR
from segtune.training.clock import budget_changes, units_run
from segtune.training.rundir import saved_config

__all__ = ["DEFAULT_MARGIN", "EPOCHS", "PROBE_DIR", "SPENT", "TRIAL_SHARE", "Budget", "BudgetGate", "format_duration",
           "parse_budget", "run_costs", "trial_epochs", "trial_minutes"]

SPENT = "tune_spent_seconds"  # study user attribute: the wall time all commands of this tune have spent
DEFAULT_MARGIN = 0.05  # share of the budget kept for a trial's end while no trial has ended to measure it
TRIAL_SHARE = 0.25  # a trial trains for at most this share of the budget: at least four trials fit
EPOCHS = "tune_trial_epochs"  # study user attribute: the epochs (steps, under train.steps) every trial trains,
# fitted once, by a probe
PROBE_DIR = "probe"  # <study dir>/probe: the one-epoch run of the base that times an epoch
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "": 60.0}  # a number alone is minutes


def parse_budget(text: str) -> float:
    """Seconds in a budget written ``90s``, ``30m``, ``1.5h`` or ``45`` (minutes).

    Raises:
        ConfigError: not a positive number with an optional unit s, m or h.

    Example:
        >>> parse_budget("1.5h"), parse_budget("45")
        (5400.0, 2700.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--budget {text!r}: give a positive duration with a unit, e.g. 90s, 30m or 1.5h "
                          f"(a number alone is minutes: 45)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """``seconds`` as a budget is read: ``42 s`` under two minutes, else ``12.5 min``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class Budget:
    """The wall-clock budget of a tune: ``seconds`` in all, ``spent_before`` of them by earlier
    commands; this command's time counts from the budget's creation, read off ``clock``."""

    seconds: float
    spent_before: float = 0.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def spent(self, now: float | None = None) -> float:
        """Seconds spent by this tune, earlier commands included, at ``now`` (default: the clock)."""
        return self.spent_before + (self.clock() if now is None else now) - self.started


def trial_minutes(left: float, margin: float, min_seconds: float = 0.0) -> float | None:
    """The ``train.max_minutes`` of a trial starting with ``left`` seconds of the budget: what is left
    less ``margin`` (the trial's end); None (no trial starts) when that is not more than ``min_seconds``.

    Example:
        >>> trial_minutes(600.0, 30.0), trial_minutes(20.0, 30.0)
        (9.5, None)
    """
    room = left - margin
    return room / 60.0 if room > max(min_seconds, 0.0) else None


def trial_epochs(budget: float, epoch: float, margin: float, epochs: int, min_epochs: int) -> int:
    """The epochs of every trial: the config's ``epochs``, or fewer, so that a trial (``epoch``
    seconds each, plus ``margin`` for its set-up and end) takes at most :data:`TRIAL_SHARE` of the
    budget; never fewer than ``min_epochs`` (the pruner's first epoch) or than 1. Under a step
    budget the same in steps: ``epoch`` seconds a step, ``epochs`` and ``min_epochs`` steps.

    Example:
        >>> trial_epochs(600.0, 5.0, 10.0, 40, 4), trial_epochs(3600.0, 5.0, 10.0, 40, 4)
        (28, 40)
    """
    fits = int((TRIAL_SHARE * budget - margin) // max(epoch, 1e-9))
    return max(1, min(epochs, max(min_epochs, fits)))


def run_costs(study_dir: Path, unit: str = "epoch") -> tuple[float | None, float]:
    """What the finished runs of a study directory took besides their budgeted epochs.

    Args:
        study_dir: the study directory (its trials' and its probe's runs).
        unit: the clock the costs are counted on: ``epoch``, or ``step`` under a step budget.

    Returns:
        ``(margin, unit seconds)``: the longest end of a run (its set-up and final evaluation,
        outside ``train.max_minutes``, plus one period, an epoch or the steps up to a validation,
        by which a run may overrun it), None when no run has finished; and the longest mean epoch
        (or step) (0 when none).
    """
    margins, costs = [], [0.0]
    for path in [*(study_dir / TRIALS_DIR).glob("*/summary.json"), *(study_dir / PROBE_DIR).glob("summary.json")]:
        summary = json.loads(path.read_text())
        metrics = path.with_name("metrics.csv")  # a row per period
        periods = len(metrics.read_text().splitlines()) - 1 if metrics.is_file() else summary["epochs_run"]
        margins.append(summary["seconds"] - summary["train_seconds"] + summary["train_seconds"] / max(1, periods))
        costs.append(summary["train_seconds"] / max(1e-9, units_run(summary, unit)))
    return (max(margins) if margins else None), max(costs)


class BudgetGate:
    """The budget as the worker loop asks it: called before each trial, whether it may start;
    then :meth:`run_changes`, how long each of its runs may train.

    Args:
        budget: the tune's budget.
        study: the study, where the time spent is kept (:data:`SPENT`) at every decision.
        study_dir: its directory, whose finished runs say how long a trial's end takes (:func:`run_costs`).
        min_epochs: no trial starts that cannot train this many epochs of the longest seen (the
            pruner's first epoch: a shorter trial could not be told from the others); steps under a step budget.
        progress: print the budget left before each trial.
        train: the base's ``train`` section: its clock (``train.epochs`` or ``train.steps``) is the trials'.
    """

    def __init__(self, budget: Budget, study: optuna.Study, study_dir: Path, min_epochs: int, progress: bool, *,
                 train: TrainConfig) -> None:
        self.budget, self.study, self.study_dir = budget, study, study_dir
        self.min_epochs, self.progress, self.train = min_epochs, progress, train
        self.minutes: float | None = None
        self.refused = False

    def __call__(self) -> bool:
        spent = self.budget.spent()  # one reading of the clock per decision
        self.study.set_user_attr(SPENT, spent)
        margin, epoch = run_costs(self.study_dir, self.train.unit)
        left = self.budget.seconds - spent
        self.minutes = trial_minutes(left, DEFAULT_MARGIN * self.budget.seconds if margin is None else margin,
                                     self.min_epochs * epoch)
        self.refused = self.minutes is None
        if self.progress:
            then = "no trial starts" if self.refused else f"a trial may train {format_duration(60 * self.minutes)}"
            print(f"budget: {format_duration(max(left, 0.0))} of {format_duration(self.budget.seconds)} left; {then}",
                  flush=True)
        return not self.refused

    def run_changes(self, directory: Path) -> dict[str, Any]:
        """The run's ``train.max_minutes`` and budget: a run continued (after Ctrl-C or a kill) keeps its own."""
        if (directory / "config.yaml").is_file():
            saved = saved_config(directory)["train"]
            return {"train.max_minutes": saved["max_minutes"],
                    **budget_changes(self.train, saved[f"{self.train.unit}s"])}
        return {"train.max_minutes": self.minutes, **budget_changes(self.train, self.study.user_attrs[EPOCHS])}
