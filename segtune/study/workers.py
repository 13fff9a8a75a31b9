"""The worker loop: open the study, run trials until it is done, resume what was lost.

Resume is the same command: finished trials stay; a trial left RUNNING by a dead worker is
found by its heartbeat (or, if it never had one, by its start time), marked failed and re-queued
with the same parameters; a trial stopped by Ctrl-C is re-queued too. ``n_workers`` local worker
processes, or workers on other machines on a shared storage, split the trials.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch
from optuna.trial import TrialState

from segtune.errors import USER_ERRORS, ConfigError
from segtune.study.dry_run import data_errors
from segtune.study.objective import ORPHAN_FIX, DataCache, Objective
from segtune.study.progress import EpochProgress
from segtune.study.racing import queue_round
from segtune.study.records import (EXTENDS, HOME, REQUEUED_FROM, RETRY_HISTORY, SAME_AS, SPEC, THREADS, TRIALS_DIR,
                                   Status, progress_line, requeued_on_resume, status_of)
from segtune.study.space import Space, config_for
from segtune.study.spec import PRUNERS, SAMPLERS, StudySpec, comparable, load_study
from segtune.study.storage import (STORAGE_ENV, default_study_dir, fail_stale_trials, open_storage,
                                   storage_fault)
from segtune.training.runtime import available_cpus
from segtune.training.threads import default_threads, environment_threads

MAX_DRAWS = 10  # a random or TPE study ends after MAX_DRAWS x n_trials trials, however few were new


def study_threads(study: optuna.Study, requested: int | None, n_workers: int = 1) -> int:
    """The CPU threads every trial of ``study`` trains with, in every worker and every later command.

    The numbers a trial gives depend on its thread count (see the README's Reproducibility), so
    the count is stored when the study is created: ``requested``, else a run's default divided among
    ``n_workers`` (:func:`~segtune.training.threads.default_threads`: every CPU this process may use
    but one, at most torch's own count, at least 1). Every trial trains
    at it, never following the load: a base config with ``train.num_threads: auto`` is refused when
    the study file is read (:class:`~segtune.study.spec.StudySpec`).

    Raises:
        ConfigError: ``requested`` differs from the count stored with the study.
    """
    stored = study.user_attrs.get(THREADS)
    if stored is None:
        stored = requested or environment_threads() or default_threads(available_cpus(), n_workers)
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
    # the pruners' rungs count on the base's clock: epochs, or steps with train.steps
    pruner = PRUNERS.build(spec.pruner.name, spec.pruner.options, config_for(spec.base, {}).train.length)
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=spec.resolved_direction, load_if_exists=True)
    stored = study.user_attrs.get(SPEC)
    if stored is None:
        study.set_user_attr(SPEC, spec.fingerprint())
    elif comparable(stored) != (now := comparable(json.loads(json.dumps(spec.fingerprint())))):
        changed = sorted(k for k in comparable(stored) if comparable(stored)[k] != now.get(k))
        raise ConfigError(f"study {spec.name!r} in this storage was made from a different study file "
                          f"({', '.join(changed)} differ); rename the study or use another study directory")
    return study


def _requeue_interrupted(study: optuna.Study) -> None:
    """Queue again, with the same parameters, each trial stopped by Ctrl-C (Optuna fails them).

    Trials of dead workers are re-queued by the heartbeat callback instead.
    """
    trials = study.get_trials(deepcopy=False)
    handled = {t.user_attrs.get(REQUEUED_FROM) for t in trials}
    for t in trials:
        if requeued_on_resume(t) and t.params and t.number not in handled:
            extends = {EXTENDS: t.user_attrs[EXTENDS]} if EXTENDS in t.user_attrs else {}  # a racing round's
            study.enqueue_trial(t.params, user_attrs={REQUEUED_FROM: t.number, HOME: t.user_attrs.get(HOME, t.number),
                                                      **extends})


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
    retried = {n for t in trials for n in t.system_attrs.get(RETRY_HISTORY, ())}
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
    now, fresh = datetime.now(), False
    for t in trials:
        n_retries = len(t.system_attrs.get(RETRY_HISTORY, ()))
        if status_of(t) != Status.DIED or t.number in retried or n_retries >= spec.max_retry:
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
    counted = [t for t in trials if SAME_AS not in t.user_attrs and EXTENDS not in t.user_attrs and t.params
               and not requeued_on_resume(t)
               and status_of(t) in (Status.COMPLETE, Status.PRUNED, Status.RUNNING, Status.FAILED)]
    if not spec.reuse_results:
        return len(counted) + unsampled < spec.n_trials, bool(running)
    distinct = len({json.dumps(t.params, sort_keys=True) for t in counted})
    if sum(EXTENDS not in t.user_attrs for t in trials) >= MAX_DRAWS * spec.n_trials:  # drawing trained ones
        return False, bool(running)
    return distinct + unsampled < min(spec.n_trials, _n_configurations(space)), bool(running)


def _n_configurations(space: Space) -> float:
    """How many configurations the space holds: infinite with a range that has no step."""
    try:
        return space.n_grid_cells()
    except ConfigError:
        return math.inf


def _check_run_dirs(study: optuna.Study, study_dir: Path) -> None:
    """Refuse to mix runs of another study database with this one's.

    Raises:
        ConfigError: ``<study dir>/trials/`` holds run directories of trials that the storage
            does not have: its database was lost, emptied or replaced.
    """
    folder = study_dir / TRIALS_DIR
    if not folder.is_dir():
        return
    known = {t.number for t in study.get_trials(deepcopy=False)}
    orphans = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name.split("-")[0].isdigit()
                     and int(d.name.split("-")[0]) not in known)
    if orphans:
        shown = ", ".join(orphans[:3]) + (f" and {len(orphans) - 3} more" if len(orphans) > 3 else "")
        raise ConfigError(f"{folder} holds {len(orphans)} run director{'y' if len(orphans) == 1 else 'ies'} of "
                          f"trials this study's storage does not have ({shown}): its database was lost, emptied "
                          f"or replaced; {ORPHAN_FIX.format(trials=folder)}")


def _print_progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    print(progress_line(trial), flush=True)


def run_worker(spec: StudySpec, space: Space, *, study_dir: Path, storage: str | None = None,
               num_threads: int | None = None, seed: int | None = None, verbose: bool = False,
               progress: bool = False, cache: DataCache | None = None, may_start: Callable[[], bool] | None = None,
               run_changes: Callable[[Path], dict[str, Any]] | None = None) -> int:
    """Run trials until the study is done; returns how many trials this worker ran.

    The study is done when the grid is covered (grid) or ``n_trials`` trials have finished or are
    running (random, tpe), no re-queued trial waits, and no other worker's trial still runs
    (a dead worker's trial turns stale after the grace period and is re-queued here).

    ``may_start()``, asked before each trial, ends the worker when it says no (a time budget
    spent); ``run_changes(run_dir)`` gives config changes of each run besides the trial's
    parameters (the time that run may take).
    """
    backend = open_storage(spec, study_dir, storage)
    study = open_study(spec, space, backend, seed=seed)
    _check_run_dirs(study, study_dir)
    num_threads = study_threads(study, num_threads)
    objective = Objective(spec, space, study_dir, cache or DataCache(), num_threads, verbose, storage=backend,
                          run_changes=run_changes,
                          on_epoch=EpochProgress(min(spec.n_trials or math.inf, _n_configurations(space)),
                                                 spec.max_repeats * len(spec.folds), spec.pruner.options.get("min_epochs"))
                          if progress and not verbose else None)
    try:
        return _run_trials(spec, space, study, objective, progress, may_start)
    except Exception as err:
        if objective.stopped_by is None and not objective.storage_failed(err):
            raise
        try:
            objective.end_current()
        except Exception as again:
            if storage_fault(again) is None:
                raise
        raise objective.stopped_by from None


def _run_trials(spec: StudySpec, space: Space, study: optuna.Study, objective: Objective, progress: bool,
                may_start: Callable[[], bool] | None) -> int:
    n_run = 0
    while True:
        fail_stale_trials(study)
        orphans_pending = _requeue_orphans(study, spec)
        _requeue_interrupted(study)
        start, running = _work_left(spec, space, study)
        running = running or orphans_pending
        if start and may_start is not None and not may_start():
            return n_run
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
        elif not queue_round(study, spec):  # racing repeats: the next round's seeds, if any
            return n_run


def run_study(path: str | Path, *, study_dir: str | Path | None = None, storage: str | None = None,
              n_workers: int = 1, num_threads: int | None = None, overrides: Sequence[str] = (),
              verbose: bool = False, progress: bool = False, workers_per_gpu: int = 1) -> optuna.Study:
    """Run (or resume, or join) the study of a study file with ``n_workers`` local workers.

    Args:
        path: the study file.
        study_dir: run directories and the default SQLite storage; default ``runs/<name>``.
        storage: an SQLAlchemy URL of a shared storage (``postgresql://user@host:5432/db``).
        n_workers: worker processes on this machine; 1 runs in this process.
        num_threads: CPU threads per trial when the study is created; default every CPU this
            process may use but one, divided among the workers. A study keeps its count (see :func:`study_threads`).
        overrides: ``--set`` style changes of the base config (``["data.spacing=2"]``).
        verbose: print every epoch of every trial.
        progress: print one line per finished trial.
        workers_per_gpu: with several workers on a machine with GPUs, each worker process sees one
            GPU (``CUDA_VISIBLE_DEVICES``), ``workers_per_gpu`` workers to a GPU (see :func:`gpu_assignment`).

    Returns:
        The Optuna study, finished.

    Raises:
        ConfigError: an invalid study file or space, an objective naming a class the base
            config's data lacks, an unusable storage, a stored study made from a different file,
            or ``num_threads`` other than the study's.
    """
    spec, space = load_study(path, overrides)
    return run_loaded(spec, space, path, study_dir=study_dir, storage=storage, n_workers=n_workers,
                      num_threads=num_threads, overrides=overrides, verbose=verbose, progress=progress,
                      workers_per_gpu=workers_per_gpu)


def run_loaded(spec: StudySpec, space: Space, path: str | Path, *, study_dir: str | Path | None = None,
               storage: str | None = None, n_workers: int = 1, num_threads: int | None = None,
               overrides: Sequence[str] = (), verbose: bool = False, progress: bool = False,
               workers_per_gpu: int = 1, worker_args: Sequence[str] = (),
               cache: DataCache | None = None) -> optuna.Study:
    """:func:`run_study` of a study already loaded from ``path`` (a stage of a staged study);
    ``worker_args`` are added to each spawned worker's command line (``--stage N``), and ``cache``
    holds data loaded before (by an earlier stage)."""
    study_dir = Path(study_dir) if study_dir else default_study_dir(spec)
    if n_workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {n_workers}")
    if workers_per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu must be at least 1, got {workers_per_gpu}")
    cache = cache or DataCache()
    # checked once, before the first trial trains to a missing class or builds a loss the data cannot take
    errors = data_errors([(str(path), spec, space)], cache, every_cell=True)  # a finite space: every cell
    if errors:
        raise ConfigError("\n".join(errors))
    study = open_study(spec, space, open_storage(spec, study_dir, storage), seed=spec.seed)
    _check_run_dirs(study, study_dir)
    _note_small_space(spec, space)
    num_threads = study_threads(study, num_threads, n_workers)
    _note_threads(num_threads, n_workers, progress)
    if n_workers == 1:
        run_worker(spec, space, study_dir=study_dir, storage=storage, num_threads=num_threads,
                   seed=spec.seed, verbose=verbose, progress=progress, cache=cache)
    else:
        visible = _visible_gpus()
        _note_gpus(n_workers, workers_per_gpu, visible)
        _run_worker_processes(path, study_dir=study_dir, storage=storage, n_workers=n_workers,
                              num_threads=num_threads, overrides=overrides, progress=progress,
                              gpus=gpu_assignment(n_workers, workers_per_gpu, visible), worker_args=worker_args)
    return study


def _note_small_space(spec: StudySpec, space: Space) -> None:
    n_configurations = _n_configurations(space)
    if spec.method.name != "grid" and spec.reuse_results and n_configurations < spec.n_trials:
        print(f"note: the space holds {n_configurations} configurations, fewer than n_trials={spec.n_trials}: "
              f"each is trained once", file=sys.stderr, flush=True)


def _note_threads(num_threads: int, n_workers: int, progress: bool) -> None:
    if progress:
        print(f"{num_threads} CPU thread(s) per trial (the study's own, fixed when it was created)", flush=True)
    if num_threads * n_workers > available_cpus():
        print(f"note: {n_workers} worker(s) x {num_threads} thread(s), the study's count, exceed the "
              f"{available_cpus()} CPUs this process may use: trials run slower than with fewer workers",
              file=sys.stderr, flush=True)


def _note_gpus(n_workers: int, workers_per_gpu: int, visible: list[str]) -> None:
    if visible and n_workers > workers_per_gpu * len(visible):
        print(f"note: {n_workers} workers on {len(visible)} GPU(s) at --workers-per-gpu {workers_per_gpu}: "
              f"some GPUs get more than {workers_per_gpu} (round again); raise --workers-per-gpu to say so, "
              f"or run fewer workers", file=sys.stderr, flush=True)


def _run_worker_processes(path: str | Path, *, study_dir: Path, storage: str | None, n_workers: int,
                          num_threads: int, overrides: Sequence[str], progress: bool,
                          gpus: list[str | None], worker_args: Sequence[str] = ()) -> None:
    """Run ``n_workers`` worker processes (``segtune study --worker``), worker ``i`` on GPU ``gpus[i]``
    (None: the GPUs of this process), and wait for them all; ``worker_args`` are added to each command."""
    command = [sys.executable, "-m", "segtune", "study", str(path), "--worker", "--out", str(study_dir),
               *worker_args]
    command += ["--set", *overrides] if overrides else []
    command += ["--progress"] if progress else []
    command += ["--threads", str(num_threads)]
    # the URL may hold a password: in the workers' environment (only their user reads it), not in
    # their command line (every user's `ps` shows it)
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV}
    env.update({STORAGE_ENV: storage} if storage else {})
    if any(gpus):
        print("GPUs: " + ", ".join(f"worker {i + 1} -> GPU {gpu}" for i, gpu in enumerate(gpus)), flush=True)
    procs = [subprocess.Popen(command, env={**env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu else {})})
             for gpu in gpus]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise ConfigError(f"worker processes exited with codes {codes}; re-run the same command to resume")


def gpu_assignment(n_workers: int, workers_per_gpu: int, visible: list[str]) -> list[str | None]:
    """The GPU each of ``n_workers`` worker processes gets: ``workers_per_gpu`` consecutive workers to each
    of the ``visible`` GPUs (their ``CUDA_VISIBLE_DEVICES`` names), round again when there are more
    workers than places; all None without GPUs.

    Example:
        >>> gpu_assignment(5, 2, ["0", "1"])
        ['0', '0', '1', '1', '0']
    """
    if not visible:
        return [None] * n_workers
    return [visible[(i // workers_per_gpu) % len(visible)] for i in range(n_workers)]


def _visible_gpus() -> list[str]:
    """The GPUs worker processes may be given: those of ``CUDA_VISIBLE_DEVICES`` where it is set, else all."""
    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(count)]


__all__ = ["MAX_DRAWS", "gpu_assignment", "open_study", "run_loaded", "run_study", "run_worker", "study_threads"]
