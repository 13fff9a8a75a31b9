"""What a report reads: a study's trials with their runs, and single run directories.

A study's trials are read as the study's own records (:class:`segtune.study.records.TrialRecord`),
ranked as the leaderboard ranks them. A trial's runs are found in
``<study dir>/trials/<number>-seed<seed>/`` (pruned and failed runs included); where the study
directory is unknown (a shared storage read from another machine), in the run directories stored
on the trial.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from segtune.errors import ConfigError
from segtune.study.stats import MeanCI, mean_ci
from segtune.study import storage
from segtune.study.records import TrialRecord, study_records


@dataclass(frozen=True)
class ReportedTrial(TrialRecord):
    """A trial's record with the 95 % interval of its objective over seeds."""

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


def run_data(config: dict[str, Any], cache: dict[str, Any] | None = None) -> Any:
    """The data a run trained on (its config's ``data`` and ``seed``), loaded once per setting in ``cache``."""
    from segtune.config import build_config
    from segtune.training.runtime import load_data

    cache = {} if cache is None else cache
    key = data_key(config)
    if key not in cache:
        cache[key] = load_data(build_config(config))
    return cache[key]


def data_key(config: dict[str, Any]) -> str:
    """What decides a run's data: its config's ``data`` and ``seed``, as one string."""
    return json.dumps({"data": config.get("data"), "seed": config.get("seed")}, sort_keys=True)


def load_report_study(study_dir: str | Path | None = None, *, url: str | None = None,
                      study_name: str | None = None) -> optuna.Study:
    """Open a stored study: the SQLite ``study.db`` of ``study_dir``, or a storage URL.

    Args:
        study_dir: a study directory (holding ``study.db``).
        url: an SQLAlchemy URL of a storage instead, e.g. ``postgresql://user@host/db``.
        study_name: needed when the storage holds several studies.

    Raises:
        ConfigError: no storage, no study of that name, or several studies and no name.
    """
    if url is None:
        if study_dir is None or not (Path(study_dir) / "study.db").is_file():
            raise ConfigError(f"{study_dir}: no study.db here; give a study directory, a run directory, "
                              f"or --storage URL --study NAME")
        storage.check_study_file(Path(study_dir) / "study.db")
        url = f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resolved = storage.resolve(url)
    try:
        names = optuna.get_all_study_names(resolved)
    except Exception as err:  # SQLAlchemy / driver errors: an unusable URL or server
        raise storage.open_error(url, err) from None
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"the storage holds {len(names)} studies ({', '.join(names) or 'none'}); "
                              f"choose one with --study NAME")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"no study {study_name!r} in the storage; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=resolved)


def trial_records(study: optuna.Study, *, study_dir: str | Path | None = None) -> list[ReportedTrial]:
    """Every trial of ``study`` ranked as its leaderboard ranks them (see
    :func:`segtune.study.records.rank`). Waiting trials, and trials that reused an earlier trial's
    result (the same runs), are left out, so no run counts twice."""
    records = study_records(study, study_dir=Path(study_dir) if study_dir is not None else None)
    return [ReportedTrial(**vars(r)) for r in records if r.same_as is None]


__all__ = ["ReportedTrial", "data_key", "load_report_study", "read_metrics", "read_run", "run_data", "trial_records"]
