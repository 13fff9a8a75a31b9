"""``segtune tune DATA --budget 30m``: the data's own config, then a built-in study, within a wall-clock budget.

The base is the config ``segtune train --data DATA`` builds (:func:`segtune.config.data_config`): the
data's plan. The study, ``configs/tune_study.yaml``, is fitted to it (:func:`fit_space`); trial 0 is
the base itself. The budget (:mod:`segtune.study.budget`) is wall-clock for the whole tune, data loading
included: no trial starts once it is spent, and each trial's ``train.max_minutes`` is what is left
less a margin for its end (:func:`trial_minutes`). The time spent is kept in the study: the same
command again continues with what is left (nothing, once spent); a larger ``--budget`` extends it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import sqlalchemy.exc

from segtune.config import component_takes, data_config, read_yaml
from segtune.data.plan import given
from segtune.errors import ConfigError, TrainingDiverged
from segtune.study.budget import (EPOCHS, PROBE_DIR, SPENT, TRIAL_SHARE, Budget, BudgetGate, format_duration,
                                  parse_budget, run_costs, trial_epochs)
from segtune.study.objective import DataCache
from segtune.study.records import TRIALS_DIR, RunRecord, Status, TrialRecord, best_trial, study_records
from segtune.study.space import Space, config_for
from segtune.study.spec import StudySpec, parse_study
from segtune.study.storage import open_storage
from segtune.study.workers import open_study, run_worker
from segtune.training.clock import budget_changes
from segtune.training.loop import train

__all__ = ["BEST", "TuneResult", "base_params", "default_tune_dir", "fit_space", "link_best", "probe_epochs", "run_tune",
           "tune_spec", "tune_study_path"]

BEST = "best"  # <study dir>/best: a link to the best trial's run directory, for predict and evaluate
_MISSING = object()


def tune_study_path() -> Path:
    """The built-in study of ``segtune tune``, ``tune_study.yaml``, shipped beside ``demo_study.yaml``."""
    return Path(str(resources.files("segtune") / "configs" / "tune_study.yaml"))


def _value_at(tree: dict[str, Any], path: str) -> Any:
    is_set, value = given(tree, path)
    return value if is_set else _MISSING


def _holding(values: Any, value: Any) -> Any:
    """``values`` (a list or a range) made to hold ``value``: joined to the list, or the range widened."""
    if value is _MISSING:
        return values
    if isinstance(values, list):
        return values if value in values else [value, *values]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(values, dict) and number and {"low", "high"} <= set(values):
        return {**values, "low": min(values["low"], value), "high": max(values["high"], value)}
    return values


def fit_space(raw: dict[str, Any], base: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The space ``raw`` fitted to the ``base`` config tree, so that the base is one of its points.

    The base's value joins every list and widens every range; cases of a conditional entry for
    values its list lacks are left out (lr ranges of optimizers not searched); an entry the base's
    component does not take (``model.channels`` of a ``unet``) is left out, with those that
    depend on it.

    Returns:
        The fitted space and the paths left out.
    """
    space: dict[str, Any] = {}
    left_out: list[str] = []
    conditional = {p: v for p, v in raw.items() if isinstance(v, dict) and "when" in v}
    for path, values in raw.items():
        if path in conditional:
            continue
        section, _, option = path.partition(".")
        if component_takes(section, option, base) is None:
            space[path] = _holding(values, _value_at(base, path))
        else:
            left_out.append(path)
    for path, entry in conditional.items():
        when, cases = entry["when"], entry.get("cases")
        root = space.get(when)
        if when in left_out:
            left_out.append(path)
        elif not isinstance(root, list) or not isinstance(cases, dict):
            space[path] = entry  # not a valid entry: Space says why
        else:
            kept = {case: values for case, values in cases.items() if case in root}
            own = _value_at(base, when)
            if own in kept:
                kept[own] = _holding(kept[own], _value_at(base, path))
            if kept:
                space[path] = {**entry, "cases": kept}
    return space, left_out


def _tune_name(data: str | Path) -> str:
    return "tune-" + (re.sub(r"[^A-Za-z0-9_.-]", "-", Path(data).expanduser().resolve().stem).lstrip(".-") or "data")


def default_tune_dir(data: str | Path) -> Path:
    """Where a tune of ``data`` goes unless told: ``runs/tune-<folder or config name>``; the same
    command run again finds it there and continues."""
    return Path("runs") / _tune_name(data)


def tune_spec(data: str | Path, overrides: Sequence[str] = (), *, seed: int = 0,
              name: str | None = None) -> tuple[StudySpec, Space, list[str]]:
    """The tune study of ``data``: the built-in study on the config ``segtune train --data`` builds.

    Args:
        data: a dataset folder (its layout names the source), or a YAML config file.
        overrides: ``--set`` changes of the base config.
        seed: the sampler's seed.
        name: the study's name; default ``tune-<folder or config name>``.

    Returns:
        The validated spec, its space (fitted by :func:`fit_space`) and the paths left out of it.

    Raises:
        ConfigError, DataError: an unusable folder, config or override.
    """
    base = data_config(str(data), list(overrides)).to_dict()
    tree = read_yaml(tune_study_path())
    tree["space"], left_out = fit_space(tree["space"], base)
    tree.update(base=base, seed=seed, name=name or _tune_name(data))
    spec, space = parse_study(tree, origin=f"{tune_study_path().name} on {data}")
    return spec, space, left_out


class _BaseAnswers:
    """A stand-in trial that answers every suggestion of a space with the base config's value."""

    def __init__(self, space: Space, base: dict[str, Any]) -> None:
        self._params, self._base = {p.name: p for p in space.params}, base
        self.answers: dict[str, Any] = {}  # Optuna name -> value as Optuna stores it

    def _answer(self, name: str, value: Any) -> Any:
        self.answers[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        param = self._params[name]
        return self._answer(name, choices[param.choices.index(_value_at(self._base, param.path))])

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return self._answer(name, float(_value_at(self._base, self._params[name].path)))

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return self._answer(name, int(_value_at(self._base, self._params[name].path)))


def base_params(space: Space, base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base config as a point of ``space`` (fitted to it by :func:`fit_space`).

    Returns:
        ``(params, values)``: Optuna's parameters, to enqueue as the base trial, and the
        ``{config path: value}`` a trial with them records.
    """
    answers = _BaseAnswers(space, base)
    values = space.sample(answers)  # asks every entry that applies, in order
    return answers.answers, values


def probe_epochs(spec: StudySpec, study_dir: Path, cache: DataCache, budget: float, min_epochs: int,
                 progress: bool) -> int:
    """The epochs of every trial (:func:`trial_epochs`), from one epoch of the base trained and timed
    in ``<study dir>/probe`` (its set-up and end give the margin); the base's epochs when the
    probe diverges, which the base trial will then report. Under a step budget the probe is one
    epoch too, and the trials' steps are fitted from its time per step."""
    base = config_for(spec.base, {}).train
    probe = config_for(spec.base, {**budget_changes(base, 1, "epoch"), "train.patience": 0, "train.max_minutes": None,
                                   "scheduler.warmup_epochs": 0, "scheduler.warmup_steps": 0})
    shutil.rmtree(study_dir / PROBE_DIR, ignore_errors=True)  # a probe cut off by a kill starts again
    try:
        train(probe, out_dir=study_dir / PROBE_DIR, data=cache.get(probe), verbose=False)
    except TrainingDiverged:
        return base.length
    margin, cost = run_costs(study_dir, base.unit)
    _, epoch = run_costs(study_dir, "epoch")
    fitted = trial_epochs(budget, cost, margin - epoch, base.length, min_epochs)
    if progress:
        print(f"an epoch of the base takes {format_duration(epoch)}: each trial trains {fitted} of its {base.length} "
              f"{base.unit}s, so that a trial takes at most {TRIAL_SHARE:.0%} of the budget", flush=True)
    return fitted


def link_best(study_dir: Path, record: TrialRecord) -> Path:
    """Point ``<study dir>/best`` at the run directory of ``record``'s best repeat; returns the link.

    ``segtune predict STUDY_DIR/best ...`` and ``segtune evaluate STUDY_DIR/best`` take it as a
    run directory. Where the file system has no symbolic links, the run directory itself is returned.
    """
    best_run = max(record.runs, key=lambda r: r.value)
    target = study_dir / TRIALS_DIR / best_run.run_dir.name  # a reused result's runs are its twin's
    link, temporary = study_dir / BEST, study_dir / f".{BEST}.tmp"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.path.relpath(target, study_dir), target_is_directory=True)
        os.replace(temporary, link)
    except OSError:
        return target
    return link


@dataclass(frozen=True)
class TuneResult:
    """A finished (or budget-ended) tune.

    ``study`` and its ``study_dir`` (study.db, trials/, best); ``budget`` in seconds, ``spent`` by
    all commands of the tune, ``seconds`` by this one; ``ended``: ``budget`` (no further trial fits)
    or ``done`` (the study ran all it holds); ``left_out``: paths of the space left out for this
    base (:func:`fit_space`); the ``base`` trial (trial 0) and the ``best`` completed one, or None;
    ``best_run``, the best repeat of ``best``, and ``best_dir``, ``<study dir>/best`` linking to it.
    """

    study: optuna.Study
    study_dir: Path
    budget: float
    spent: float
    seconds: float
    ended: str
    left_out: tuple[str, ...]
    base: TrialRecord | None
    best: TrialRecord | None
    best_run: RunRecord | None
    best_dir: Path | None


def run_tune(data: str | Path, *, budget: str | float, study_dir: str | Path | None = None,
             overrides: Sequence[str] = (), seed: int = 0, num_threads: int | None = None, progress: bool = True,
             verbose: bool = False, clock: Callable[[], float] = time.monotonic) -> TuneResult:
    """Tune ``data`` within ``budget``: the base config first, then the built-in study.

    Args:
        data: a dataset folder (as ``segtune train --data``) or a YAML config file.
        budget: wall-clock seconds, or a text :func:`parse_budget` reads (``"30m"``).
        study_dir: the study directory; default :func:`default_tune_dir`. The same directory
            again continues the tune with what is left of its budget.
        overrides: ``--set`` changes of the base config.
        seed: the sampler's seed.
        num_threads: CPU threads per trial, fixed when the study is created (default: every CPU
            this process may use but one, :func:`~segtune.training.threads.default_threads`).
        progress, verbose: print the budget and a line per trial; every epoch.
        clock: seconds, for the budget (tests give their own).

    Returns:
        A :class:`TuneResult`; ``<study dir>/best`` links to the best model's run directory.

    Raises:
        SegtuneError: a bad budget, folder, config or override, or an unusable study directory.

    Example:
        >>> result = run_tune("Dataset001_Heart", budget="30m")  # doctest: +SKIP
        >>> result.best.value - result.base.value  # doctest: +SKIP
    """
    seconds = parse_budget(budget) if isinstance(budget, str) else float(budget)
    if seconds <= 0:
        raise ConfigError(f"the budget must be positive, got {seconds} s")
    tune_budget = Budget(seconds, clock=clock)
    spec, space, left_out = tune_spec(data, overrides, seed=seed)
    study_dir = Path(study_dir) if study_dir is not None else default_tune_dir(data)
    cache = DataCache()
    cache.get(config_for(spec.base, {}))  # loaded once, on the budget's time, before the first trial's share
    study = open_study(spec, space, open_storage(spec, study_dir), seed=spec.seed)
    tune_budget.spent_before = float(study.user_attrs.get(SPENT, 0.0))
    params, base_values = base_params(space, spec.base)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(params)
    min_epochs = int(spec.pruner.options.get("min_epochs", 1))
    if EPOCHS not in study.user_attrs:
        study.set_user_attr(EPOCHS, probe_epochs(spec, study_dir, cache, seconds, min_epochs, progress))
    gate = BudgetGate(tune_budget, study, study_dir, min_epochs, progress, train=config_for(spec.base, {}).train)
    try:
        run_worker(spec, space, study_dir=study_dir, num_threads=num_threads, seed=spec.seed, verbose=verbose,
                   progress=progress, cache=cache, may_start=gate, run_changes=gate.run_changes)
    finally:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # the worker's own error says more
            study.set_user_attr(SPENT, tune_budget.spent())
    return _result(study, study_dir, tune_budget, gate.refused, left_out, base_values)


def _result(study: optuna.Study, study_dir: Path, budget: Budget, refused: bool, left_out: list[str],
            base_values: dict[str, Any]) -> TuneResult:
    spent = float(study.user_attrs.get(SPENT, 0.0))
    base = next((r for r in sorted(study_records(study, study_dir=study_dir), key=lambda r: r.number)
                 if r.state == Status.COMPLETE and r.params == base_values), None)
    best = best_trial(study)
    best_run = max(best.runs, key=lambda r: r.value) if best is not None and best.runs else None
    best_dir = link_best(study_dir, best) if best_run is not None else None
    return TuneResult(study=study, study_dir=study_dir, budget=budget.seconds, spent=spent,
                      seconds=spent - budget.spent_before, ended="budget" if refused else "done",
                      left_out=tuple(left_out), base=base, best=best, best_run=best_run, best_dir=best_dir)
