"""Run a study on Optuna: storage, workers, trials, resume, and the leaderboard.

A study lives in an Optuna storage: by default ``<study dir>/study.db`` (SQLite); with
``storage="postgresql://..."`` on a server that workers on other machines join (Optuna's own
distributed mode). Each trial trains one configuration ``repeats`` times (seeds ``base.seed + r``)
through :func:`segtune.training.loop.train`, reports the first repeat's validation objective every epoch
(the pruners use it), and keeps its run directories under ``<study dir>/trials/``. Its resolved
config, parameters, per-repeat values and test metrics are stored as user attributes, so
``optuna-dashboard <storage>`` shows them as they are.

Resume is the same command: finished trials stay; a trial left RUNNING by a dead worker is
found by its heartbeat (or, if it never had one, by its start time), marked failed and re-queued
with the same parameters; a trial stopped by Ctrl-C is re-queued too. The trial run again trains
in the run directories of the one it repeats and continues each repeat from its last.pt.

User attributes of a trial: ``params`` ({config path: value}), ``config`` (the resolved config
of its first repeat), ``runs`` (per repeat: seed, value, epochs_run, best_epoch, run_dir,
class_names, test metrics), ``spread`` (standard deviation over repeats), ``epochs`` (epochs run
by the first repeat), ``seconds``, ``worker`` (host:pid), ``home`` (the trial number of its run
directories), and ``resumed_after`` ({seed: epoch}), ``fail_reason``, ``interrupted``,
``requeued_from`` or ``same_as`` (a configuration sampled again takes its earlier trial's result
without training: ``reuse_results``) where they apply. The study's ``spec`` attribute holds what a resumed
study must share with its study file, and ``threads`` the CPU threads of every trial.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import optuna
import sqlalchemy.exc
import yaml
from optuna.storages._rdb import models as _models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from segtune.study import storage as storage_url
from segtune.config import Config
from segtune.errors import USER_ERRORS, ConfigError, StorageError
from segtune.study.space import Space, config_for
from segtune.study.spec import PRUNERS, SAMPLERS, StudySpec, load_study
from segtune.training.checkpoint import resumable_history
from segtune.training.loop import train
from segtune.training.runtime import load_data

FAIL_REASON = "fail_reason"
AUTO_LR_CACHE = "auto_lr:"  # study attributes auto_lr:<hash>: {"key": optimizer, loss, model and data as JSON, "lr"}
INTERRUPTED = "interrupted"
THREADS = "threads"  # study attribute: the CPU threads of every trial, fixed when the study is created
SAME_AS = "same_as"  # trial attribute: the earlier trial of the same configuration whose result was reused
HOME = "home"  # trial attribute: the trial number whose run directories it trains in (a re-run's original)
RESUMED = "resumed_after"  # trial attribute: {seed: epoch} for each repeat continued from its last.pt
MAX_DRAWS = 10  # a random or TPE study ends after MAX_DRAWS x n_trials trials, however few were new
RESERVE_BYTES = 1 << 20  # kept free beside a SQLite study.db: room to record why the study stopped on a full disk


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with the faults of dead workers and full disks handled.

    - A trial RUNNING with no heartbeat row (its worker died between creating it and its first
      heartbeat) is never stale to Optuna, and a grid would wait for its cell forever. Here it is
      stale once it started more than the grace period ago.
    - A heartbeat that cannot be written (the disk under the storage is full) does not end the
      heartbeat thread with a traceback; the trial's own next write meets the same error and
      stops the worker with it (see :func:`_storage_fault`).
    - ``reserve``: a file of :data:`RESERVE_BYTES` beside a SQLite database, deleted when a write
      fails, so that the reason and the trial's end can still be written on a full disk.
    """

    reserve: Path | None = None

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        started_before = (datetime.now(timezone.utc).replace(tzinfo=None)  # stored as UTC without a zone
                          - timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval))
        trial = _models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            silent = (session.query(trial.trial_id)
                      .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                              ~trial.heartbeats.any(), trial._datetime_start_utc < started_before).all())
        return stale + [row[0] for row in silent if row[0] not in stale]

    def keep_reserve(self) -> None:
        if self.reserve is not None and not self.reserve.exists():
            try:
                self.reserve.write_bytes(bytes(RESERVE_BYTES))
            except OSError:  # no room for it: the study runs without
                self.reserve.unlink(missing_ok=True)

    def release_reserve(self) -> None:
        if self.reserve is not None:
            self.reserve.unlink(missing_ok=True)


def _storage_fault(err: BaseException) -> str | None:
    """The database's own message when ``err`` is a failed storage read or write, else None."""
    seen: BaseException | None = err
    while seen is not None:  # an operational error: a full disk, an I/O error, a lost connection
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InternalError)):
            return str(seen.orig if seen.orig is not None else seen).strip()
        if isinstance(seen, sqlalchemy.exc.DBAPIError):  # a constraint, a bad value: the trial's own error
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def default_study_dir(spec: StudySpec) -> Path:
    return Path("runs") / spec.name


def open_storage(spec: StudySpec, study_dir: Path, url: str | None = None) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats; a dead worker's trial is re-queued once stale.

    Args:
        spec: the study (heartbeat interval, grace period, retries).
        study_dir: where the default SQLite file ``study.db`` lives.
        url: an SQLAlchemy URL (``postgresql://user@host/db``; the password from ``PGPASSWORD`` or
            ``~/.pgpass``); default the SQLite file.

    Raises:
        ConfigError: an unusable URL or server; the message never shows a password.
    """
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        check_study_file(study_dir / "study.db")
        url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    given, url = url, storage_url.resolve(url)
    engine_kwargs = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else  # a server: 1 idle connection,
                     {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 1})  # 2 in use (a trial, its heartbeat)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
                storage = _Storage(url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
                                   grace_period=spec.grace_period, heartbeat_stale_trial_callback=retry)
                database = storage.engine.url.database if url.startswith("sqlite") else None
                if database and database != ":memory:":
                    storage.reserve = Path(database).with_name(f".{Path(database).name}.reserve")
                    storage.keep_reserve()
                return storage
        except Exception as err:  # SQLAlchemy / driver errors: an unusable URL or server
            if attempt == 2:
                raise storage_url.open_error(given, err) from None
            # Workers starting together on a fresh PostgreSQL database race to create Optuna's
            # tables (CREATE TABLE IF NOT EXISTS is not atomic there); the loser's retry finds them.
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def check_study_file(path: Path) -> None:
    """Check that an existing SQLite study file reads whole: SQLite's ``quick_check`` of every
    page, then every study and trial read once through Optuna (damaged text or JSON in a row).

    Raises:
        StorageError: the file is not a readable SQLite study database; the message names it and the fix.
    """
    problem = _study_file_problem(path) if path.is_file() else None
    if problem:
        detail = problem.replace("*** in database main ***", "").strip().splitlines()[0].split(" with text ")[0]
        raise StorageError(f"{path} is not a readable SQLite database (damaged? {detail[:160]}): restore it "
                           f"from a copy, or move it aside to start the study again")


def _study_file_problem(path: Path) -> str | None:
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            problem = next((row[0] for row in db.execute("PRAGMA quick_check") if row[0] != "ok"), None)
            has_version = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone()
            versioned = bool(has_version and db.execute("SELECT 1 FROM alembic_version").fetchone())
    except sqlite3.OperationalError:  # locked past the timeout, or unopenable: the storage says why
        return None
    except sqlite3.DatabaseError as err:  # "file is not a database", "database disk image is malformed"
        return str(err)
    if problem:
        return problem
    if not versioned:  # new, or its tables are being made by another command started at the same time
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its warning when it falls back to slower reads
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}",
                                             engine_kwargs={"connect_args": {"timeout": 60}})
        for name in optuna.get_all_study_names(storage):
            study_id = storage.get_study_id_from_name(name)
            storage.get_study_user_attrs(study_id)
            storage.get_study_system_attrs(study_id)
            storage.get_all_trials(study_id, deepcopy=False)
        storage.engine.dispose()
    except Exception as err:  # noqa: BLE001 - undecodable text, JSON or state in a row
        while err.__cause__ is not None:
            err = err.__cause__
        return f"{type(err).__name__}: {err}"
    finally:
        optuna.logging.set_verbosity(verbosity)
    return None


def study_threads(study: optuna.Study, requested: int | None, n_workers: int = 1) -> int:
    """The CPU threads every trial of ``study`` trains with, in every worker and every later command.

    The numbers a trial gives depend on its thread count (see the README's Reproducibility), so
    the count is stored when the study is created: ``requested``, else the cores divided among
    ``n_workers``.

    Raises:
        ConfigError: ``requested`` differs from the count stored with the study.
    """
    stored = study.user_attrs.get(THREADS)
    if stored is None:
        stored = requested or max(1, (os.cpu_count() or 1) // n_workers)
        study.set_user_attr(THREADS, stored)
    elif requested is not None and requested != stored:
        raise ConfigError(f"study {study.study_name!r} trains every trial with {stored} CPU thread(s), fixed when it "
                          f"was created: the numbers depend on the thread count, so its trials are comparable only at "
                          f"the same count; leave out --threads (or give --threads {stored}), or start a new study")
    return stored


class _UserErrorsWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; for a user's error (NaN loss, full disk)
    the reason stored on the trial, shown in the leaderboard, says it all. Bugs keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (*USER_ERRORS, KeyboardInterrupt)):
            return False
        return not record.getMessage().endswith("failed with value None.")


logging.getLogger("optuna.study._optimize").addFilter(_UserErrorsWithoutTraceback())


def open_study(spec: StudySpec, space: Space, storage: optuna.storages.RDBStorage, *,
               seed: int | None = None) -> optuna.Study:
    """Create the study or load it; a stored study made from a different study file is an error."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = SAMPLERS.build(spec.method.name, spec.method.options, space, seed)
    pruner = PRUNERS.build(spec.pruner.name, spec.pruner.options, config_for(spec.base, {}).train.epochs)
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=spec.resolved_direction, load_if_exists=True)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec.fingerprint())
    elif stored != json.loads(json.dumps(spec.fingerprint())):
        changed = sorted(k for k in stored if stored[k] != json.loads(json.dumps(spec.fingerprint()))[k])
        raise ConfigError(f"study {spec.name!r} in this storage was made from a different study file "
                          f"({', '.join(changed)} differ); rename the study or use another study directory")
    return study


class DataCache:
    """Data loaded once per worker process and shared by every trial with the same data section."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, config: Config):
        key = json.dumps({"data": config.data.model_dump(mode="json"), "seed": config.seed}, sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(config)
        return self._data[key]


@dataclass
class _Objective:
    spec: StudySpec
    space: Space
    study_dir: Path
    cache: DataCache
    num_threads: int | None
    verbose: bool
    stopped_by: StorageError | None = None  # an error that fails every trial after it: the worker stops
    current: optuna.Trial | None = None  # the trial being run

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
        fault = _storage_fault(err)
        if fault is not None:
            self._stop(self.current, StorageError(f"cannot write the study storage: {fault}; free disk space "
                                                  f"(or check the database server)"))
        return fault is not None

    def _run(self, trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        values = self.space.sample_grid(trial) if self.spec.method.name == "grid" else self.space.sample(trial)
        trial.set_user_attr("params", values)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # a trial run again after its worker died, or after Ctrl-C, trains in the run
        # directories of the trial it repeats, and continues each repeat from its last.pt
        home = int(trial.user_attrs.get(HOME, trial.number))
        trial.set_user_attr(HOME, home)
        # Two workers can draw the same configuration at once (Optuna's GridSampler picks an
        # unvisited cell at random; random and TPE draw again): the later trial waits for the
        # earlier one and takes its result.
        waited = ((self.spec.method.name == "grid" or self.spec.reuse_results)
                  and _wait_for_earlier_twin(trial, values, self.spec.heartbeat_interval))
        twin = _finished_twin(trial, values) if waited or self.spec.reuse_results else None
        replayed: set[int] = set()
        if twin is not None:
            reused = _reuse(trial, twin)
            if reused is not None:
                return reused
            replayed = set(twin.intermediate_values)  # a pruned twin's curve, not pruned here: train
        runs: list[dict[str, Any]] = []
        resumed: dict[str, int] = {}
        trial.set_user_attr("runs", runs)
        try:
            for repeat in range(self.spec.repeats):
                seed = int(self.spec.base.get("seed", 0)) + repeat
                extra = {"train.num_threads": self.num_threads} if self.num_threads else {}
                config = config_for(self.spec.base, {**values, **extra}, seed=seed,
                                    name=f"{self.spec.name}-{home:04d}", auto_lr=self._auto_lr(trial))
                if repeat == 0:
                    trial.set_user_attr("config", config.to_dict())
                reporter = self._reporter(trial, replayed) if repeat == 0 else None
                run_dir = self.study_dir / "trials" / f"{home:04d}-seed{seed}"
                started = (run_dir / "config.yaml").is_file()
                done = resumable_history(run_dir) if started else []
                for row in done if reporter else ():  # its curve up to the checkpoint, reported again
                    reporter(row["epoch"], row)
                summary = _finished_summary(run_dir, config) if started else None
                if summary is None:
                    if started:
                        resumed[str(seed)] = len(done)
                        trial.set_user_attr(RESUMED, resumed)
                    summary = train(config, out_dir=run_dir, data=self.cache.get(config), resume=started,
                                    callbacks=[reporter] if reporter else [], verbose=self.verbose).summary
                runs.append({"seed": seed, "value": self.spec.objective_value(summary),
                             "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
                             "run_dir": str(run_dir), "class_names": summary["class_names"],
                             "test": _metrics(summary["test"])})
                trial.set_user_attr("runs", runs)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            raise
        except StorageError as err:  # a full disk fails every later trial too: stop, and run it again on resume
            self._stop(trial, StorageError(str(err)), t0)
            raise self.stopped_by from None
        except Exception as err:  # diverged, a bad combination, out of memory: recorded, the study goes on
            if _storage_fault(err) is not None:
                raise
            trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}")
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            raise
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        scores = [r["value"] for r in runs]
        trial.set_user_attr("spread", statistics.stdev(scores) if len(scores) > 1 else 0.0)
        return statistics.fmean(scores)

    def _stop(self, trial: optuna.Trial | None, err: StorageError, t0: float | None = None) -> None:
        """Stop the worker with ``err``; the trial is failed with it and run again on resume."""
        where = f" at trial {trial.number}" if trial is not None else ""
        self.stopped_by = StorageError(f"{err}\nthe study stopped{where}; once there is room, run the same "
                                       "command again: the trial is run again, finished ones are kept")
        if trial is None:
            return
        storage = trial.study._storage
        backend = getattr(storage, "_backend", storage)
        if isinstance(backend, _Storage):
            backend.release_reserve()  # room for the lines below on a full disk
        try:
            trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}")
            trial.set_user_attr(INTERRUPTED, True)
            if t0 is not None:
                trial.set_user_attr("seconds", time.perf_counter() - t0)
        except Exception as again:
            if _storage_fault(again) is None:
                raise

    def end_current(self) -> None:
        """Fail the trial being run if Optuna could not end it (its end was not written)."""
        trial = self.current
        if trial is not None and trial.study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def _auto_lr(self, trial: optuna.Trial):
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

    def _reporter(self, trial: optuna.Trial, replayed: set[int]):
        key = self.spec.epoch_key

        def on_epoch(epoch: int, row: dict[str, Any]) -> None:
            trial.set_user_attr("epochs", epoch)
            if key is None or key not in row:
                return
            if epoch not in replayed:  # the same value was reported from the twin's curve
                trial.report(float(row[key]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({key}={row[key]:.4f})")

        return on_epoch


def _wait_for_earlier_twin(trial: optuna.Trial, values: dict[str, Any], interval: float) -> bool:
    """Wait while an earlier trial of the same configuration is running (until it finishes, or its
    worker is found dead); returns whether there was one. Only earlier ones: two twins never wait
    for each other."""
    waited = False
    while any(t.number < trial.number and t.user_attrs.get("params") == values
              for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        waited = True
        time.sleep(min(interval, 2.0))
        _fail_stale_trials(trial.study)  # a twin whose worker died turns stale here, as in the worker loop
    return waited


def _fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check for trials of dead workers (experimental in Optuna, so quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _finished_twin(trial: optuna.Trial, values: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    """The earlier trained trial of the same configuration (and so the same seeds): a completed
    one, else the pruned one that got furthest."""
    twins = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
             if t.user_attrs.get("params") == values and SAME_AS not in t.user_attrs]
    return max(twins, key=lambda t: (t.state == TrialState.COMPLETE, len(t.intermediate_values)), default=None)


def _reuse(trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> float | None:
    """Give ``trial`` the curve and result of ``twin`` without training.

    A pruned twin's curve is replayed to this trial's pruner (Hyperband's brackets prune at
    different epochs): pruned again, or ``None`` when this pruner lets it go further: train it.
    """
    pruned = twin.state == TrialState.PRUNED
    for epoch, value in sorted(twin.intermediate_values.items()):
        trial.report(value, epoch)
        if pruned and trial.should_prune():
            break
    else:
        if pruned:
            return None
    for key in ("config", "runs", "spread", "epochs"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    trial.set_user_attr(SAME_AS, twin.number)
    trial.set_user_attr("seconds", 0.0)
    if pruned:
        raise optuna.TrialPruned(f"the configuration of trial {twin.number}, pruned on the same curve")
    return float(twin.value)


def _finished_summary(run_dir: Path, config: Config) -> dict[str, Any] | None:
    """The summary of a finished run of ``config`` in ``run_dir``, or None while it is unfinished.

    Raises:
        ConfigError: ``run_dir`` holds a run of another configuration (a study database lost or
            replaced while its run directories stayed).
    """
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    if saved != config.to_dict():
        raise ConfigError(f"{run_dir} holds a run of another configuration than this trial's; "
                          f"{_ORPHAN_FIX.format(trials=run_dir.parent)}")
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def _metrics(split: dict[str, Any]) -> dict[str, Any]:
    keep = ("dice_mean", "iou_mean", "dice_per_class", "iou_per_class", "loss")
    return {k: split[k] for k in keep if k in split}


def _requeue_interrupted(study: optuna.Study) -> None:
    """Queue again, with the same parameters, each trial stopped by Ctrl-C (Optuna fails them).

    Trials of dead workers are re-queued by the heartbeat callback instead.
    """
    trials = study.get_trials(deepcopy=False)
    handled = {t.user_attrs.get("requeued_from") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.params and t.number not in handled:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number, HOME: t.user_attrs.get(HOME, t.number)})


def _requeue_orphans(study: optuna.Study, spec: StudySpec) -> bool:
    """Queue again each dead worker's trial that Optuna failed but did not queue again.

    Optuna fails a stale trial and queues its retry in two steps; a worker killed between the
    two leaves the trial failed with no retry, and a grid would lose its cell. Such a trial is
    queued here once it has been failed for longer than the grace period (before that, the
    worker that failed it may still be queuing it).

    Returns:
        Whether such a trial is still too fresh to queue: the study is not done yet.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
    now, fresh = datetime.now(), False
    for t in trials:
        died = t.state == TrialState.FAIL and FAIL_REASON not in t.user_attrs and INTERRUPTED not in t.user_attrs
        if not died or t.number in retried or len(t.system_attrs.get("retry_history", ())) >= spec.max_retry:
            continue
        if t.datetime_complete is not None and (now - t.datetime_complete).total_seconds() < spec.grace_period:
            fresh = True
        else:
            retry(study, copy.deepcopy(t))
    return fresh


def _work_left(spec: StudySpec, space: Space, study: optuna.Study) -> tuple[bool, bool]:
    """(a trial should start now, some trial is still running elsewhere).

    Random and TPE studies run until ``n_trials`` distinct configurations have been trained (or
    are training, or failed with a reason): a configuration drawn again takes its earlier result
    (``same_as``) and is not counted, unless ``reuse_results`` is off. A space with fewer
    configurations than ``n_trials`` ends when each has been trained, and a study whose sampler
    keeps drawing trained ones ends after ``MAX_DRAWS * n_trials`` trials.
    """
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if any(t.state == TrialState.WAITING for t in trials):
        return True, bool(running)
    unsampled = sum(1 for t in running if not t.params)
    if spec.method.name == "grid":
        # a trial whose worker died before it drew its cell covers none (its retry runs it)
        covered = {json.dumps(t.params, sort_keys=True) for t in trials if t.params}
        return len(covered) + unsampled < space.n_grid_cells(), bool(running)
    counted = [t for t in trials if SAME_AS not in t.user_attrs and t.params and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and FAIL_REASON in t.user_attrs and INTERRUPTED not in t.user_attrs))]
    if not spec.reuse_results:
        return len(counted) + unsampled < spec.n_trials, bool(running)
    distinct = len({json.dumps(t.params, sort_keys=True) for t in counted})
    if len(trials) >= MAX_DRAWS * spec.n_trials:  # the sampler keeps drawing trained configurations
        return False, bool(running)
    return distinct + unsampled < min(spec.n_trials, _n_configurations(space)), bool(running)


def _n_configurations(space: Space) -> float:
    """How many configurations the space holds: infinite with a range that has no step."""
    try:
        return space.n_grid_cells()
    except ConfigError:
        return math.inf


_ORPHAN_FIX = ("to start the study afresh, move the old runs aside (mv {trials} {trials}.old), or restore "
               "the study database that made them")


def _check_run_dirs(study: optuna.Study, study_dir: Path) -> None:
    """Refuse to mix runs of another study database with this one's.

    Raises:
        ConfigError: ``<study dir>/trials/`` holds run directories of trials that the storage
            does not have: its database was lost, emptied or replaced.
    """
    folder = study_dir / "trials"
    if not folder.is_dir():
        return
    known = {t.number for t in study.get_trials(deepcopy=False)}
    orphans = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name.split("-")[0].isdigit()
                     and int(d.name.split("-")[0]) not in known)
    if orphans:
        shown = ", ".join(orphans[:3]) + (f" and {len(orphans) - 3} more" if len(orphans) > 3 else "")
        raise ConfigError(f"{folder} holds {len(orphans)} run director{'y' if len(orphans) == 1 else 'ies'} of "
                          f"trials this study's storage does not have ({shown}): its database was lost, emptied "
                          f"or replaced; {_ORPHAN_FIX.format(trials=folder)}")


def _print_progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    params = ", ".join(f"{k}={_show(v)}" for k, v in trial.user_attrs.get("params", {}).items())
    value = trial.value if trial.value is not None else _last_value(trial)
    shown = "" if value is None else f" {value:.4f}"
    reason = f" ({trial.user_attrs[FAIL_REASON]})" if FAIL_REASON in trial.user_attrs else ""
    print(f"trial {trial.number:>3} {trial.state.name.lower():<8}{shown}  epochs {trial.user_attrs.get('epochs', 0):>3}  "
          f"{trial.user_attrs.get('seconds', 0.0):5.0f} s  {params}{reason}", flush=True)


def run_worker(spec: StudySpec, space: Space, *, study_dir: Path, storage: str | None = None,
               num_threads: int | None = None, seed: int | None = None, verbose: bool = False,
               progress: bool = False, cache: DataCache | None = None) -> int:
    """Run trials until the study is done; returns how many trials this worker ran.

    The study is done when the grid is covered (grid) or ``n_trials`` trials have finished or are
    running (random, tpe), no re-queued trial waits, and no other worker's trial still runs
    (a dead worker's trial turns stale after the grace period and is re-queued here).
    """
    study = open_study(spec, space, open_storage(spec, study_dir, storage), seed=seed)
    _check_run_dirs(study, study_dir)
    num_threads = study_threads(study, num_threads)
    objective = _Objective(spec, space, study_dir, cache or DataCache(), num_threads, verbose)
    try:
        return _run_trials(spec, space, study, objective, progress)
    except Exception as err:
        if objective.stopped_by is None and not objective.storage_failed(err):
            raise
        try:
            objective.end_current()
        except Exception as again:
            if _storage_fault(again) is None:
                raise
        raise objective.stopped_by from None


def _run_trials(spec: StudySpec, space: Space, study: optuna.Study, objective: _Objective, progress: bool) -> int:
    n_run = 0
    while True:
        _fail_stale_trials(study)
        orphans_pending = _requeue_orphans(study, spec)
        _requeue_interrupted(study)
        start, running = _work_left(spec, space, study)
        running = running or orphans_pending
        if start:
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,),
                               callbacks=[_print_progress] if progress else [])
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # its heartbeat came too late: taken for dead and re-queued meanwhile
            if objective.stopped_by is not None:
                raise objective.stopped_by
            objective.current = None  # ended and written: a storage error from here on is no trial's
            n_run += 1
        elif running:
            time.sleep(min(spec.heartbeat_interval, 2))
        else:
            return n_run


def run_study(path: str | Path, *, study_dir: str | Path | None = None, storage: str | None = None,
              n_workers: int = 1, num_threads: int | None = None, overrides: Sequence[str] = (),
              verbose: bool = False, progress: bool = False) -> optuna.Study:
    """Run (or resume, or join) the study of a study file with ``n_workers`` local workers.

    Args:
        path: the study file.
        study_dir: run directories and the default SQLite storage; default ``runs/<name>``.
        storage: an SQLAlchemy URL of a shared storage (``postgresql://user@host:5432/db``).
        n_workers: worker processes on this machine; 1 runs in this process.
        num_threads: CPU threads per trial when the study is created; default the cores divided
            among the workers. A study keeps its count (see :func:`study_threads`).
        overrides: ``--set`` style changes of the base config (``["data.spacing=2"]``).
        verbose: print every epoch of every trial.
        progress: print one line per finished trial.

    Returns:
        The Optuna study, finished.

    Raises:
        ConfigError: an invalid study file or space, an objective naming a class the base
            config's data lacks, an unusable storage, a stored study made from a different file,
            or ``num_threads`` other than the study's.
    """
    spec, space = load_study(path, overrides)
    study_dir = Path(study_dir) if study_dir else default_study_dir(spec)
    if n_workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {n_workers}")
    cache = DataCache()
    if spec.objective_class is not None:  # checked once, before the first trial trains to a missing class
        spec.check_objective_class(cache.get(config_for(spec.base, {})).class_names, origin=str(path))
    study = open_study(spec, space, open_storage(spec, study_dir, storage), seed=spec.seed)
    _check_run_dirs(study, study_dir)
    n_configurations = _n_configurations(space)
    if spec.method.name != "grid" and spec.reuse_results and n_configurations < spec.n_trials:
        print(f"note: the space holds {n_configurations} configurations, fewer than n_trials={spec.n_trials}: "
              f"each is trained once", file=sys.stderr, flush=True)
    num_threads = study_threads(study, num_threads, n_workers)
    if progress:
        print(f"{num_threads} CPU thread(s) per trial (the study's own, fixed when it was created)", flush=True)
    if num_threads * n_workers > (os.cpu_count() or 1):
        print(f"note: {n_workers} worker(s) x {num_threads} thread(s), the study's count, exceed this machine's "
              f"{os.cpu_count()} cores: trials run slower than with fewer workers", file=sys.stderr, flush=True)
    if n_workers == 1:
        run_worker(spec, space, study_dir=study_dir, storage=storage, num_threads=num_threads,
                   seed=spec.seed, verbose=verbose, progress=progress, cache=cache)
        return study
    command = [sys.executable, "-m", "segtune", "study", str(path), "--worker", "--out", str(study_dir)]
    command += ["--set", *overrides] if overrides else []
    command += ["--progress"] if progress else []
    command += ["--threads", str(num_threads)]
    # the URL may hold a password: in the workers' environment (only their user reads it), not in
    # their command line (every user's `ps` shows it)
    env = {k: v for k, v in os.environ.items() if k != storage_url.STORAGE_ENV}
    env.update({storage_url.STORAGE_ENV: storage} if storage else {})
    procs = [subprocess.Popen(command, env=env) for _ in range(n_workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise ConfigError(f"worker processes exited with codes {codes}; re-run the same command to resume")
    return study


def leaderboard(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """The trials, best first: parameters, objective mean and spread, epochs, state, seconds.

    Returns:
        ``(header, rows)``; completed trials first (by objective), then pruned, then failed.
    """
    everything = study.get_trials(deepcopy=False)
    trials = [t for t in everything if t.state != TrialState.WAITING]
    paths = sorted({p for t in trials for p in t.user_attrs.get("params", {})})
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.FAIL: 3}

    def rank(t: optuna.trial.FrozenTrial) -> tuple:
        value = t.value if t.value is not None else _last_value(t)
        return order.get(t.state, 4), sign * value if value is not None else 0.0, t.number

    rows = []
    for t in sorted(trials, key=rank):
        runs = t.user_attrs.get("runs", [])
        value = t.value if t.value is not None else _last_value(t)
        state = t.state.name.lower()
        if t.state == TrialState.FAIL:
            state = "failed" if FAIL_REASON in t.user_attrs else "stopped" if INTERRUPTED in t.user_attrs else "died"
        rows.append([t.number] + [_show(t.user_attrs.get("params", {}).get(p, "-")) for p in paths]
                    + ["-" if value is None else float(value), float(t.user_attrs.get("spread", 0.0)),
                       f"{len(runs)}", t.user_attrs.get("epochs", "-"), state,
                       f"{t.user_attrs.get('seconds', 0.0):.0f}", trial_reason(t, everything)[:60]])
    objective = study.user_attrs.get("spec", {}).get("objective", "objective")
    header = ["trial"] + paths + [objective, "spread", "repeats", "epochs", "state", "seconds", "reason"]
    return header, rows


def trial_reason(t: optuna.trial.FrozenTrial, trials: Sequence[optuna.trial.FrozenTrial]) -> str:
    """Why ``t`` ended as it did: its failure reason; for a trial stopped by Ctrl-C or whose worker
    died, that and the trial that ran it again; for a reused result, the trial it came from."""
    if SAME_AS in t.user_attrs:
        return f"result of trial {t.user_attrs[SAME_AS]} (same configuration)"
    if FAIL_REASON in t.user_attrs or t.state != TrialState.FAIL:
        return str(t.user_attrs.get(FAIL_REASON, ""))
    again = next((c.number for c in trials if c.user_attrs.get("requeued_from") == t.number
                  or c.system_attrs.get("retry_history", [None])[-1] == t.number), None)
    what = "stopped by Ctrl-C" if INTERRUPTED in t.user_attrs else "its worker died (no heartbeat)"
    return what + (f"; run again as trial {again}" if again is not None else "")


def _last_value(t: optuna.trial.FrozenTrial) -> float | None:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial, or None when no trial has completed."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return None
    return study.best_trial


def load_existing_study(path: str | Path, *, study_dir: str | Path | None = None,
                        storage: str | None = None) -> optuna.Study:
    """Open a study that exists, for ``segtune study status``.

    Raises:
        ConfigError: no study of that name in the storage.
    """
    spec, space = load_study(path)
    study_dir = Path(study_dir) if study_dir else default_study_dir(spec)
    if storage is None and not (study_dir / "study.db").exists():
        raise ConfigError(f"no study {spec.name!r} yet: {study_dir / 'study.db'} does not exist; "
                          f"run `segtune study {path}` first")
    try:
        return optuna.load_study(study_name=spec.name, storage=open_storage(spec, study_dir, storage))
    except KeyError:
        raise ConfigError(f"no study {spec.name!r} in the storage; run `segtune study {path}` first") from None


__all__ = ["DataCache", "best_trial", "leaderboard", "load_existing_study", "open_storage", "open_study",
           "run_study", "run_worker", "study_threads", "trial_reason"]
