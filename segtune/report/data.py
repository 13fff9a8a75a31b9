"""What a report reads: a study's trials with their runs, and single run directories.

A trial's runs are found in ``<study dir>/trials/<number>-seed<seed>/`` (pruned and failed
runs included); where the study directory is unknown (a shared storage read from another
machine), in the run directories stored on the trial.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from segtune.study import storage as storage_url
from segtune.errors import ConfigError
from segtune.report.stats import MeanCI, mean_ci
from segtune.study import FAIL_REASON, HOME, INTERRUPTED, SAME_AS, check_study_file, trial_reason


@dataclass
class TrialRecord:
    """One trial as the report sees it."""

    number: int
    state: str  # complete | pruned | failed | died | running
    params: dict[str, Any]
    values: dict[int, float]  # objective per seed, finished repeats only
    value: float | None  # the trial's objective (mean over repeats; a pruned trial's last report)
    epochs: int | None
    seconds: float
    reason: str
    run_dirs: list[Path] = field(default_factory=list)  # by seed
    test: list[dict[str, Any]] = field(default_factory=list)  # test-split metrics per finished repeat

    @property
    def ci(self) -> MeanCI | None:
        return mean_ci(list(self.values.values())) if self.values else None


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """A run's ``metrics.csv`` as rows of floats (empty cells left out); [] when missing."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run directory's config (dict), summary (dict or None) and metrics rows.

    Raises:
        ConfigError: the folder holds no config.yaml (not a run directory).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml) nor a study directory (no study.db)")
    summary_path = run_dir / "summary.json"
    return {"config": yaml.safe_load((run_dir / "config.yaml").read_text()),
            "summary": json.loads(summary_path.read_text()) if summary_path.is_file() else None,
            "metrics": read_metrics(run_dir)}


def load_report_study(study_dir: str | Path | None = None, *, storage: str | None = None,
                      study_name: str | None = None) -> optuna.Study:
    """Open a stored study: the SQLite ``study.db`` of ``study_dir``, or a storage URL.

    Args:
        study_dir: a study directory (holding ``study.db``).
        storage: an SQLAlchemy URL instead, e.g. ``postgresql://user@host/db``.
        study_name: needed when the storage holds several studies.

    Raises:
        ConfigError: no storage, no study of that name, or several studies and no name.
    """
    if storage is None:
        if study_dir is None or not (Path(study_dir) / "study.db").is_file():
            raise ConfigError(f"{study_dir}: no study.db here; give a study directory, a run directory, "
                              f"or --storage URL --study NAME")
        check_study_file(Path(study_dir) / "study.db")
        storage = f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    given, storage = storage, storage_url.resolve(storage)
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as err:  # SQLAlchemy / driver errors: an unusable URL or server
        raise storage_url.open_error(given, err) from None
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"the storage holds {len(names)} studies ({', '.join(names) or 'none'}); "
                              f"choose one with --study NAME")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"no study {study_name!r} in the storage; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=storage)


def _state(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.FAIL:
        return "failed" if FAIL_REASON in t.user_attrs else "died"
    return t.state.name.lower()


def _run_dirs(t: optuna.trial.FrozenTrial, study_dir: Path | None) -> list[Path]:
    if t.state == optuna.trial.TrialState.FAIL and (INTERRUPTED in t.user_attrs or FAIL_REASON not in t.user_attrs):
        return []  # died or stopped: its run directories are continued by the trial that ran it again
    if study_dir is not None:
        home = int(t.user_attrs.get(HOME, t.number))  # a trial run again trains in its original's directories
        found = sorted((study_dir / "trials").glob(f"{home:04d}-seed*"),
                       key=lambda p: int(p.name.rsplit("seed", 1)[1]) if p.name.rsplit("seed", 1)[1].isdigit() else 0)
        if found:
            return found
    return [Path(r["run_dir"]) for r in t.user_attrs.get("runs", []) if Path(r["run_dir"]).is_dir()]


def trial_records(study: optuna.Study, *, study_dir: str | Path | None = None) -> list[TrialRecord]:
    """Every trial of ``study`` ranked: completed by objective, then running, pruned and failed
    ones. Waiting trials, and trials that reused an earlier trial's result (the same runs), are
    left out, so no run counts twice."""
    study_dir = Path(study_dir) if study_dir is not None else None
    records, trials = [], study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.WAITING or SAME_AS in t.user_attrs:
            continue
        runs = t.user_attrs.get("runs", [])
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        records.append(TrialRecord(
            number=t.number, state=_state(t), params=dict(t.user_attrs.get("params", {})),
            values={int(r["seed"]): float(r["value"]) for r in runs if math.isfinite(r["value"])},
            value=value, epochs=t.user_attrs.get("epochs"), seconds=float(t.user_attrs.get("seconds", 0.0)),
            reason=trial_reason(t, trials), run_dirs=_run_dirs(t, study_dir),
            test=[r["test"] for r in runs if r.get("test")]))
    return rank(records, maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)


def rank(records: list[TrialRecord], *, maximize: bool) -> list[TrialRecord]:
    """Completed trials best first, then running, pruned, failed and died ones (each by objective)."""
    order = {"complete": 0, "running": 1, "pruned": 2, "failed": 3, "died": 4}
    sign = -1.0 if maximize else 1.0
    return sorted(records, key=lambda r: (order.get(r.state, 5), sign * r.value if r.value is not None else math.inf,
                                          r.number))


__all__ = ["TrialRecord", "load_report_study", "rank", "read_metrics", "read_run", "trial_records"]
