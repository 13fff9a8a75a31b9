"""One trial of a study: sample a configuration, train it ``repeats`` times, record the result.

Each trial trains one configuration ``repeats`` times (seeds ``base.seed + r``; with racing,
``min`` seeds, and each racing round's trial one more seed of the configuration it extends, see
:mod:`segtune.study.racing`), each seed on every fold of a
``cv`` study, through :func:`segtune.training.loop.train`, reports the first run's validation
objective at each validation (at its epoch, or its step with ``train.steps``: the pruners' rungs
count on that clock), and keeps its run directories under ``<study dir>/trials/``. What it
stores on the trial is listed in :mod:`segtune.study.records`.

A trial run again after its worker died, or after Ctrl-C, trains in the run directories of the
trial it repeats, and continues each repeat from its last.pt. A configuration sampled again
takes the result of its earlier trial without training (``reuse_results``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from segtune.config import Config
from segtune.errors import ConfigError, StorageError
from segtune.study.records import (AUTO_LR_CACHE, CONFIG, EPOCHS, EXTENDS, FAIL_REASON, HOME, INTERRUPTED, PARAMS,
                                   PRETRAIN_DIR, PRETRAIN_MAE, PRETRAIN_MSE, PRETRAIN_RUN, RESUMED, RUNS, SAME_AS,
                                   SECONDS, SPREAD, WORKER, RunRecord, per_seed, run_dir)
from segtune.study.space import Space, config_for
from segtune.study.spec import StudySpec
from segtune.study.storage import StudyStorage, fail_stale_trials, storage_fault
from segtune.training.checkpoint import resumable_history
from segtune.training.distances import DISTANCE_METRICS
from segtune.training.loop import train
from segtune.training.rundir import saved_config
from segtune.training.runtime import load_data

ORPHAN_FIX = ("to start the study afresh, move the old runs aside (mv {trials} {trials}.old), or restore "
              "the study database that made them")


class DataCache:
    """Data loaded once per worker process and shared by every trial with the same data section."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, config: Config):
        """The data of ``config`` (its data section and seed), loaded on first use."""
        key = json.dumps({"data": config.data.model_dump(mode="json"), "seed": config.seed}, sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(config)
        return self._data[key]


@dataclass
class Objective:
    """The function Optuna calls for each trial of one worker."""

    spec: StudySpec
    space: Space
    study_dir: Path
    cache: DataCache
    num_threads: int | None
    verbose: bool
    storage: StudyStorage | None = None  # the worker's storage: its reserve is released on a full disk
    stopped_by: StorageError | None = None  # an error that fails every trial after it: the worker stops
    current: optuna.Trial | None = None  # the trial being run
    # config changes of the run in a directory besides the trial's parameters (a tune's time budget)
    run_changes: Callable[[Path], dict[str, Any]] | None = None
    # called after each period of a trial's first run as on_epoch(trial, (unit, length), at, row): the progress
    on_epoch: Callable[[optuna.Trial, tuple[str, int], int, dict[str, Any]], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial
        try:
            return self._run(trial)
        except (optuna.TrialPruned, KeyboardInterrupt, StorageError):
            raise
        except Exception as err:
            if not self.storage_failed(err):
                raise
            raise self.stopped_by from None

    def storage_failed(self, err: BaseException) -> bool:
        """Whether ``err`` is a failed read or write of the storage itself (a full disk under
        study.db, a lost server); if so, stop the worker, recording why where still possible."""
        fault = storage_fault(err)
        if fault is not None:
            self._stop(self.current, StorageError(f"cannot write the study storage: {fault}; free disk space "
                                                  f"(or check the database server)"))
        return fault is not None

    def _run(self, trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        values, home = self._start(trial)
        extends = trial.user_attrs.get(EXTENDS)
        reused, replayed = self._reuse_twin(trial, values) if extends is None else self._reuse_round(trial, extends)
        if reused is not None:
            return reused
        try:
            runs = (self._train_repeats(trial, values, home, replayed) if extends is None
                    else self._train_round(trial, values, home, extends))
        except optuna.TrialPruned:
            trial.set_user_attr(SECONDS, time.perf_counter() - t0)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            raise
        except StorageError as err:  # a full disk fails every later trial too: stop, and run it again on resume
            self._stop(trial, StorageError(str(err)), t0)
            raise self.stopped_by from None
        except Exception as err:  # diverged, a bad combination, out of memory: recorded, the study goes on
            if storage_fault(err) is not None:
                raise
            trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}")
            trial.set_user_attr(SECONDS, time.perf_counter() - t0)
            raise
        trial.set_user_attr(SECONDS, time.perf_counter() - t0 + trial.user_attrs.get(SECONDS, 0.0))
        scores = list(per_seed(runs, finite=False).values())  # each seed: the mean over its folds
        # a seed not finite (HD95 inf where a class is never found) leaves the spread unknown, not the finite seeds'
        spread = (None if not all(map(math.isfinite, scores)) else statistics.stdev(scores) if len(scores) > 1
                  else 0.0)
        trial.set_user_attr(SPREAD, spread)
        return statistics.fmean(r.value for r in runs)

    def _start(self, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
        """Sample the trial's configuration and record it; returns it and the trial's home."""
        values = self.space.sample_grid(trial) if self.spec.method.name == "grid" else self.space.sample(trial)
        trial.set_user_attr(PARAMS, values)
        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
        # a trial run again after its worker died, or after Ctrl-C, trains in the run
        # directories of the trial it repeats, and continues each repeat from its last.pt
        home = int(trial.user_attrs.get(HOME, trial.number))
        trial.set_user_attr(HOME, home)
        return values, home

    def _reuse_twin(self, trial: optuna.Trial, values: dict[str, Any]) -> tuple[float | None, set[int]]:
        """The result of an earlier trial of the same configuration, if it can be taken, and the
        epochs of a pruned twin's curve already reported to this trial."""
        # Two workers can draw the same configuration at once (Optuna's GridSampler picks an
        # unvisited cell at random; random and TPE draw again): the later trial waits for the
        # earlier one and takes its result.
        waited = ((self.spec.method.name == "grid" or self.spec.reuse_results)
                  and _wait_for_earlier_twin(trial, values, self.spec.heartbeat_interval))
        twin = _finished_twin(trial, values) if waited or self.spec.reuse_results else None
        if twin is None:
            return None, set()
        return replay_twin(trial, twin), set(twin.intermediate_values)  # a pruned twin not pruned here: train

    def _reuse_round(self, trial: optuna.Trial, extends: int) -> tuple[float | None, set[int]]:
        """A racing round's trial queued twice (two workers queued the round at once): the later one
        waits for the earlier one and takes its result."""
        def earlier(states: tuple[TrialState, ...]) -> list[optuna.trial.FrozenTrial]:
            return [t for t in trial.study.get_trials(deepcopy=False, states=states)
                    if t.number < trial.number and t.user_attrs.get(EXTENDS) == extends]

        while earlier((TrialState.RUNNING,)):
            time.sleep(min(self.spec.heartbeat_interval, 2.0))
            fail_stale_trials(trial.study)
        done = earlier((TrialState.COMPLETE,))
        return (replay_twin(trial, done[0]), set()) if done else (None, set())

    def _train_repeats(self, trial: optuna.Trial, values: dict[str, Any], home: int,
                       replayed: set[int]) -> list[RunRecord]:
        """Train every fold of each seed: ``repeats`` seeds, or with racing the ``min`` seeds every
        configuration gets (the racing rounds' trials train the others)."""
        runs: list[RunRecord] = []
        resumed: dict[str, int] = {}
        trial.set_user_attr(RUNS, [])
        for repeat in range(self.spec.min_repeats):
            for fold in self.spec.folds:
                runs.append(self._train_repeat(trial, values, home, repeat, fold, replayed, resumed))
                trial.set_user_attr(RUNS, [r.to_attr() for r in runs])
        return runs

    def _train_round(self, trial: optuna.Trial, values: dict[str, Any], home: int, extends: int) -> list[RunRecord]:
        """A racing round: the runs of trial ``extends``, and every fold of the configuration's next seed."""
        base = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == extends)
        runs = [RunRecord.from_attr(r) for r in base.user_attrs.get(RUNS, [])]
        for key in (CONFIG, EPOCHS, SECONDS, PRETRAIN_RUN, PRETRAIN_MSE, PRETRAIN_MAE):
            if key in base.user_attrs:  # the configuration's record carries on in this trial
                trial.set_user_attr(key, base.user_attrs[key])
        repeat, resumed = len({r.seed for r in runs}), {}
        for fold in self.spec.folds:
            runs.append(self._train_repeat(trial, values, home, repeat, fold, set(), resumed))
            trial.set_user_attr(RUNS, [r.to_attr() for r in runs])
        return runs

    def _train_repeat(self, trial: optuna.Trial, values: dict[str, Any], home: int, repeat: int, fold: int | None,
                      replayed: set[int], resumed: dict[str, int]) -> RunRecord:
        """Train (or continue, or read the finished) repeat ``repeat`` of the trial, on ``fold``."""
        seed = int(self.spec.base.get("seed", 0)) + repeat
        directory = run_dir(self.study_dir, home, seed, fold)
        extra = {"train.num_threads": self.num_threads} if self.num_threads else {}
        if fold is not None:
            extra.update({"data.folds": self.spec.cv, "data.fold": fold})
        extra.update(self.run_changes(directory) if self.run_changes else {})
        config = self._pretrained(trial, config_for(self.spec.base, {**self.space.changes(values), **extra}, seed=seed,
                                                    name=f"{self.spec.name}-{home:04d}", auto_lr=self._auto_lr(trial)))
        first = repeat == 0 and not fold
        if first:
            trial.set_user_attr(CONFIG, config.to_dict())
        reporter = self._reporter(trial, replayed) if first else None  # the pruners follow the first run
        started = (directory / "config.yaml").is_file()
        done = resumable_history(directory) if started else []
        for row in done if reporter else ():  # its curve up to the checkpoint, reported again
            reporter(row["epoch"], row)
        summary = _finished_summary(directory, config) if started else None
        if summary is None:
            if started:
                resumed[str(seed)] = len(done)
                trial.set_user_attr(RESUMED, resumed)
            summary = train(config, out_dir=directory, data=self.cache.get(config), resume=started,
                            callbacks=self._callbacks(trial, config, reporter), verbose=self.verbose).summary
        return RunRecord(seed=seed, value=self.spec.objective_value(summary), epochs_run=summary["epochs_run"],
                         best_epoch=summary["best_epoch"], run_dir=directory,
                         class_names=tuple(summary["class_names"]), test=_metrics(summary["test"]), fold=fold,
                         cases={split: _case_metrics(summary[split]) for split in ("val", "test")},
                         best_step=summary.get("best_step") if config.train.unit == "step" else None)

    def _callbacks(self, trial: optuna.Trial, config: Config, reporter: Callable | None) -> list[Callable]:
        """The epoch callbacks of a run: the pruning report (first repeat) and the progress lines."""
        shown = functools.partial(self.on_epoch, trial, (config.train.unit, config.train.length)) if self.on_epoch and reporter else None
        return [c for c in (shown, reporter) if c is not None]  # the line first: a pruned epoch shows too

    def _stop(self, trial: optuna.Trial | None, err: StorageError, t0: float | None = None) -> None:
        """Stop the worker with ``err``; the trial is failed with it and run again on resume."""
        where = f" at trial {trial.number}" if trial is not None else ""
        self.stopped_by = StorageError(f"{err}\nthe study stopped{where}; once there is room, run the same "
                                       "command again: the trial is run again, finished ones are kept")
        if trial is None:
            return
        if self.storage is not None:
            self.storage.release_reserve()  # room for the lines below on a full disk
        try:
            trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}")
            trial.set_user_attr(INTERRUPTED, True)
            if t0 is not None:
                trial.set_user_attr(SECONDS, time.perf_counter() - t0)
        except Exception as again:
            if storage_fault(again) is None:
                raise

    def end_current(self) -> None:
        """Fail the trial being run if Optuna could not end it (its end was not written)."""
        trial, storage = self.current, self.storage
        if trial is None or storage is None:
            return
        # Optuna's Trial has no public id; its storage is addressed by it
        if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def _auto_lr(self, trial: optuna.Trial) -> Callable[[Config], float]:
        """``optimizer.lr: auto``: the LR range test's lr, found once per optimizer, loss, model and data."""

        def lookup(config: Config) -> float:
            from segtune.training.lr_find import auto_lr_key, lr_range_test

            key = auto_lr_key(config)
            # one attribute per key, written once: workers finding lrs at the same time lose none
            name = AUTO_LR_CACHE + hashlib.sha1(key.encode()).hexdigest()
            found = trial.study.user_attrs.get(name)
            if found is None:
                found = {"key": key, "lr": lr_range_test(config, data=self.cache.get(config)).suggestion}
                trial.study.set_user_attr(name, found)
            return found["lr"]

        return lookup

    def _pretrained(self, trial: optuna.Trial, config: Config) -> Config:
        """A ``pretrain`` budget: the config starting from its encoder, pre-trained once per distinct setting in
        ``<study dir>/pretrain/`` and shared by every trial (and repeat) with it; the trial stores the
        pre-training's run and validation reconstruction MSE and MAE."""
        from segtune.training.pretrain import pretrained_config

        if not config.pretrain.active:
            return config
        config, pre = pretrained_config(config, self.study_dir / PRETRAIN_DIR, data=self.cache.get(config),
                                        verbose=self.verbose)
        trial.set_user_attr(PRETRAIN_RUN, str(Path(pre["encoder"]).parent))
        trial.set_user_attr(PRETRAIN_MSE, pre["val"]["mse"])
        trial.set_user_attr(PRETRAIN_MAE, pre["val"]["mae"])
        return config

    def _reporter(self, trial: optuna.Trial, replayed: set[int]) -> Callable[[int, dict[str, Any]], None]:
        """The first repeat's callback: each validation's objective, reported at the run's clock (the
        epoch, or with ``train.steps`` the step: the pruners' rungs count in it), and the prune."""
        key = self.spec.epoch_key

        def on_epoch(epoch: int, row: dict[str, Any]) -> None:
            unit, at = ("step", int(row["step"])) if "step" in row else ("epoch", int(row["epoch"]))
            trial.set_user_attr(EPOCHS, row["epoch"])
            if key is None or key not in row:
                return
            if at not in replayed:  # the same value was reported from the twin's curve
                trial.report(float(row[key]), at)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {unit} {at} ({key}={row[key]:.4f})")

        return on_epoch


def _wait_for_earlier_twin(trial: optuna.Trial, values: dict[str, Any], interval: float) -> bool:
    """Wait while an earlier trial of the same configuration is running (until it finishes, or its
    worker is found dead); returns whether there was one. Only earlier ones: two twins never wait
    for each other."""
    waited = False
    while any(t.number < trial.number and t.user_attrs.get(PARAMS) == values
              for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        waited = True
        time.sleep(min(interval, 2.0))
        fail_stale_trials(trial.study)  # a twin whose worker died turns stale here, as in the worker loop
    return waited


def _finished_twin(trial: optuna.Trial, values: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    """The earlier trained trial of the same configuration (and so the same seeds): a completed
    one, else the pruned one that got furthest."""
    twins = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
             if t.user_attrs.get(PARAMS) == values and SAME_AS not in t.user_attrs]
    return max(twins, key=lambda t: (t.state == TrialState.COMPLETE, len(t.intermediate_values)), default=None)


def replay_twin(trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> float | None:
    """Give ``trial`` the curve and result of ``twin``, a trained trial of the same configuration.

    A pruned twin's curve is replayed to this trial's pruner (Hyperband's brackets prune at
    different epochs): pruned again, or ``None`` when this pruner lets it go further: train it.

    Args:
        trial: the trial being run (reports, ``should_prune`` and user attributes are used).
        twin: the earlier trial, completed or pruned.

    Returns:
        The twin's objective, now the trial's; None when the trial must be trained.

    Raises:
        optuna.TrialPruned: the twin was pruned and this trial's pruner prunes it on the same curve.
    """
    pruned = twin.state == TrialState.PRUNED
    for epoch, value in sorted(twin.intermediate_values.items()):
        trial.report(value, epoch)
        if pruned and trial.should_prune():
            break
    else:
        if pruned:
            return None
    for key in (CONFIG, RUNS, SPREAD, EPOCHS, PRETRAIN_RUN, PRETRAIN_MSE, PRETRAIN_MAE):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    trial.set_user_attr(SAME_AS, twin.number)
    trial.set_user_attr(SECONDS, 0.0)
    if pruned:
        raise optuna.TrialPruned(f"the configuration of trial {twin.number}, pruned on the same curve")
    return float(twin.value)


def _finished_summary(directory: Path, config: Config) -> dict[str, Any] | None:
    """The summary of a finished run of ``config`` in ``directory``, or None while it is unfinished.

    Raises:
        ConfigError: ``directory`` holds a run of another configuration (a study database lost or
            replaced while its run directories stayed).
    """
    if saved_config(directory) != config.to_dict():  # a run from before a field was added matches
        raise ConfigError(f"{directory} holds a run of another configuration than this trial's; "
                          f"{ORPHAN_FIX.format(trials=directory.parent)}")
    summary = directory / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def _metrics(split: dict[str, Any]) -> dict[str, Any]:
    keep = ("dice_mean", "iou_mean", "dice_per_class", "iou_per_class", "loss", "case_dice_mean",
            *(f"{m}_{how}" for m in DISTANCE_METRICS for how in ("mean", "per_class")))
    return {k: split[k] for k in keep if k in split}


def _case_metrics(split: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each case's means (Dice, and the surface metrics where measured): what paired tests compare."""
    keep = ("dice_mean", *(f"{m}_mean" for m in DISTANCE_METRICS))
    return {case: {k: entry[k] for k in keep if k in entry} for case, entry in split.get("per_case", {}).items()}


__all__ = ["ORPHAN_FIX", "DataCache", "Objective", "replay_twin"]
