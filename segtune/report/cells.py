"""The metrics a report shows per trial (and per pivot cell): a paper table's columns.

Each metric is the mean over the trial's finished runs (seeds) of one number stored per run:

==================  ==========================================================================
``train_loss``      ``metrics.csv``'s ``train_loss`` at the run's best epoch
``val_loss``        ``metrics.csv``'s ``val_loss`` at the best epoch
``train_dice``      ``metrics.csv``'s ``train_dice_mean`` at the best epoch (the Dice of the
                    training batches already seen in that epoch), else the summary's
                    ``train.dice_mean``; "–" for runs that recorded neither
``val_dice``        ``metrics.csv``'s ``val_dice_mean`` at the best epoch
``test_loss``       the run's own loss on the test split (not comparable across losses)
``test_common_loss`` one loss on the test split for every trial, so losses compare: computed by
                    the report (``test_loss="dice"``, any registered loss), else a stored
                    ``test.dice_loss``
``test_dice``       the test split's mean foreground Dice
``test_classes``    one column per class: its test Dice
``epochs``          epochs run
``seconds``         the trial's training time
==================  ==========================================================================

A trial with no finished run (pruned, failed) reads its runs' last ``metrics.csv`` row instead.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from segtune.errors import ConfigError
from segtune.registry import suggest
from segtune.report.data import ReportedTrial, read_metrics, read_run

_Run = dict[str, Any]  # one run's numbers: "row" (its metrics.csv row), "test", "summary", "epochs"


@dataclass(frozen=True)
class Metric:
    """One column: its header and how to read it from one run."""

    header: str
    of_run: Callable[[_Run], float | None]
    digits: int | None = None  # a count or a time: its mean rounded to these decimals (an int where whole)


def _row(key: str) -> Callable[[_Run], float | None]:
    return lambda run: run["row"].get(key)


def _train_dice(run: _Run) -> float | None:
    if run["row"].get("train_dice_mean") is not None:
        return run["row"]["train_dice_mean"]
    return ((run["summary"] or {}).get("train") or {}).get("dice_mean")


METRICS: dict[str, Metric] = {
    "train_loss": Metric("train loss", _row("train_loss")),
    "val_loss": Metric("val loss", _row("val_loss")),
    "train_dice": Metric("train Dice", _train_dice),
    "val_dice": Metric("val Dice", _row("val_dice_mean")),
    "test_loss": Metric("test loss (own)", lambda run: run["test"].get("loss")),
    "test_common_loss": Metric("test loss (common)", lambda run: run["test"].get("common_loss")),
    "test_dice": Metric("test Dice", lambda run: run["test"].get("dice_mean")),
    "test_classes": Metric("", lambda run: None),  # expanded to one column per class
    "epochs": Metric("epochs", lambda run: run["epochs"], digits=1),
    "seconds": Metric("seconds per run", lambda run: run["seconds"], digits=0),
}
DEFAULT_METRICS = ("train_loss", "val_loss", "train_dice", "val_dice", "test_dice", "test_classes", "epochs",
                   "seconds")


def check_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """The metric names, checked.

    Raises:
        ConfigError: an unknown name, with the closest one and the list.
    """
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"report --metrics: unknown metric {name!r}{suggest(name, list(METRICS))}; "
                              f"choose from {', '.join(METRICS)}")
    return tuple(names)


def _dir_of(record: ReportedTrial, stored: Path) -> Path:
    """The run directory found here for a stored one (same name), else the stored path."""
    return next((d for d in record.run_dirs if d.name == Path(stored).name), Path(stored))


def trial_runs(record: ReportedTrial, *, test_losses: dict[Path, float] | None = None) -> list[_Run]:
    """The numbers of each of ``record``'s runs that :data:`METRICS` read.

    Args:
        record: the trial.
        test_losses: run directory -> the common test loss computed by the report.
    """
    runs = []
    for run in record.runs:
        folder = _dir_of(record, run.run_dir)
        rows = read_metrics(folder)
        row = next((r for r in rows if int(r.get("epoch", -1)) == run.best_epoch), rows[-1] if rows else {})
        test = dict(run.test)
        if test_losses and folder in test_losses:
            test["common_loss"] = test_losses[folder]
        elif "dice_loss" in test:
            test["common_loss"] = test["dice_loss"]
        summary = read_run(folder)["summary"] if (folder / "config.yaml").is_file() else None
        runs.append({"row": row, "test": test, "summary": summary, "epochs": float(run.epochs_run),
                     "seconds": record.seconds / len(record.runs)})
    if runs:
        return runs
    for folder in record.run_dirs:  # unfinished: the last epoch it reported
        rows = read_metrics(folder)
        if rows:
            runs.append({"row": rows[-1], "test": {}, "summary": None, "epochs": rows[-1].get("epoch"),
                         "seconds": record.seconds / len(record.run_dirs)})
    return runs


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def class_names(records: Sequence[ReportedTrial]) -> list[str]:
    """The foreground classes of the trials' test metrics, in their order."""
    names = dict.fromkeys(c for r in records for t in r.test for c in t.get("dice_per_class", {}))
    return list(names)[1:]


def metric_headers(names: Sequence[str], classes: Sequence[str]) -> list[str]:
    """The column titles of ``names`` (``test_classes`` as one ``test Dice <class>`` per class)."""
    out: list[str] = []
    for name in names:
        out += [f"test Dice {c}" for c in classes] if name == "test_classes" else [METRICS[name].header]
    return out


def metric_values(runs: Sequence[_Run], names: Sequence[str], classes: Sequence[str]) -> list[float | None]:
    """The mean over ``runs`` of each metric of ``names``, in the order of :func:`metric_headers`."""
    out: list[float | None] = []
    for name in names:
        if name == "test_classes":
            out += [_mean([run["test"].get("dice_per_class", {}).get(c) for run in runs]) for c in classes]
        else:
            metric = METRICS[name]
            value = _mean([metric.of_run(run) for run in runs])
            out.append(value if metric.digits is None or value is None else _rounded(value, metric.digits))
    return out


def _rounded(value: float, digits: int) -> float | int:
    value = round(value, digits)
    return int(value) if value.is_integer() else value


__all__ = ["DEFAULT_METRICS", "METRICS", "Metric", "check_metrics", "class_names", "metric_headers",
           "metric_values", "trial_runs"]
