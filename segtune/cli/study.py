"""``segtune study``: run, resume or join a study; ``segtune study status`` prints its leaderboard."""

from __future__ import annotations

import argparse
import os
from typing import Any

from segtune.cli.options import add_set
from segtune.cli.tables import print_table

__all__ = ["cmd_study", "print_dry_run", "print_study_results", "register"]

USAGE = "usage: segtune study STUDY.yaml [--dry-run] [options] | segtune study status STUDY.yaml"


def register(subparsers: Any) -> None:
    """Add ``study`` to the ``segtune`` subparsers."""
    p = subparsers.add_parser("study", help="run, resume or join a hyperparameter study; `study status` shows it")
    p.add_argument("target", nargs="+", metavar="[status] STUDY",
                   help="the study YAML file; `status STUDY` prints its leaderboard")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--workers-per-gpu", type=int, default=1,
                   help="with --workers on a machine with GPUs: workers sharing each GPU (default 1)")
    p.add_argument("--storage", help="shared Optuna storage URL, e.g. postgresql://user@host:5432/db, the password "
                                     "from PGPASSWORD or ~/.pgpass (default: SQLite file study.db in the study directory)")
    p.add_argument("--worker", action="store_true", help="run as one worker of the study, no leaderboard "
                                                         "(--storage default: $SEGTUNE_STORAGE)")
    p.add_argument("--out", help="study directory (default: runs/<study name>)")
    p.add_argument("--threads", type=int, help="CPU threads per trial, fixed when the study is created "
                                               "(default: every CPU but one, divided among the workers)")
    p.add_argument("--verbose", action="store_true", help="print every epoch of every trial")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.add_argument("--dry-run", action="store_true", help="check every cell, print the trials, repeats, varied "
                                                          "values and an estimate of the time; train nothing")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # set for spawned workers
    p.add_argument("--stage", type=int, help=argparse.SUPPRESS)  # a spawned worker's stage of a staged study
    add_set(p)
    p.set_defaults(handler=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    """``segtune study [status] STUDY``: the leaderboard, one worker's trials, or the whole study and its report."""
    from segtune import study as st

    status = args.target[0] == "status" and len(args.target) == 2
    if len(args.target) != 1 and not status:
        raise SystemExit(USAGE)
    path = args.target[-1]
    if args.dry_run:
        print_dry_run(st.dry_run(path, args.set))
    elif status and st.is_staged(path):
        _print_staged_status(args, path)
    elif status:
        print_study_results(st.load_existing_study(path, study_dir=args.out, storage=args.storage))
    elif args.worker:
        _run_one_worker(args, path)
    elif st.is_staged(path):
        _run_staged(args, path)
    else:
        from segtune.report import study_report

        study = st.run_study(path, study_dir=args.out, storage=args.storage, n_workers=args.workers,
                             workers_per_gpu=args.workers_per_gpu, num_threads=args.threads, overrides=args.set,
                             verbose=args.verbose, progress=not args.quiet)
        print_study_results(study)
        print(f"\nreport: {study_report(study, study_dir=args.out)}")
    return 0


def _run_one_worker(args: argparse.Namespace, path: str) -> None:
    from pathlib import Path

    from segtune import study as st
    from segtune.study.storage import STORAGE_ENV

    if args.stage is not None:
        spec, space = st.stage_for_worker(path, args.set, Path(args.out), args.stage)
    else:
        spec, space = st.load_study(path, args.set)
    n = st.run_worker(spec, space, study_dir=Path(args.out) if args.out else st.default_study_dir(spec),
                      storage=args.storage or os.environ.get(STORAGE_ENV), num_threads=args.threads,
                      seed=spec.seed, verbose=args.verbose, progress=args.progress)
    print(f"worker {os.getpid()}: ran {n} trial(s); the study is done", flush=True)


def print_study_results(study: Any) -> Any:
    """Print a study's leaderboard and its best configuration.

    Args:
        study: an Optuna study run by segtune.

    Returns:
        The best complete trial, or None when none has completed.
    """
    import yaml

    from segtune.study.records import RACE_END, Status, best_trial, leaderboard, no_winner, objective_name

    header, rows = leaderboard(study)
    print(f"study {study.study_name}: {len(rows)} trial(s)")
    if rows:
        print_table(rows, header)
    if study.user_attrs.get(RACE_END):
        print(f"\nthe race: {study.user_attrs[RACE_END]}")
    best = best_trial(study)
    if best is None:
        completed = any(row[header.index("state")] == str(Status.COMPLETE) for row in rows)
        print("no best configuration: the race has no winner (above)" if no_winner(study)
              else f"no best configuration: no trial has completed with a finite {objective_name(study)}" if completed
              else "no trial has completed yet")
        return None
    print(f"\nbest: trial {best.number}, {objective_name(study)} {best.value:.4f}; its configuration:")
    print(yaml.safe_dump(best.config, sort_keys=False).rstrip())
    return best


def _run_staged(args: argparse.Namespace, path: str) -> None:
    from segtune import study as st
    from segtune.report.stages import staged_report

    def done(decision: Any) -> None:
        print(f"stage {decision.index + 1} ({decision.name}) decided: {decision.rule}; fixed "
              f"{decision.changes or 'nothing'}", flush=True)

    staged, decisions = st.run_stages(path, study_dir=args.out, storage=args.storage, n_workers=args.workers,
                                      num_threads=args.threads, overrides=args.set, verbose=args.verbose,
                                      progress=not args.quiet, on_stage_done=done)
    root = args.out or f"runs/{staged.name}"
    print(f"\nreport: {staged_report(staged, decisions, root, storage=args.storage)}")


def _print_staged_status(args: argparse.Namespace, path: str) -> None:
    from pathlib import Path

    from segtune import study as st
    from segtune.study.stages import read_decision, stage_dir, stage_studies

    staged = st.load_stages(path, args.set)
    root = Path(args.out or f"runs/{staged.name}")
    for i, (stage, study) in enumerate(zip(staged.stages, stage_studies(staged, root, args.storage))):
        decision = read_decision(stage_dir(root, i, stage))
        state = (f"decided ({decision.rule}): fixed {decision.changes or 'nothing'}" if decision
                 else "not started" if study is None else "running or stopped: run the command again to resume")
        print(f"stage {i + 1} ({stage.name}): {state}")
        if study is not None and decision is None:
            print_study_results(study)


def print_dry_run(plan: Any) -> None:
    """Print a :class:`~segtune.study.dry_run.DryRun`: per study or stage its counts and its cells."""
    for study in plan.studies:
        print(f"{study.name}: {study.method}, {study.n_trials} trial(s) x {study.repeats} repeat(s) = {study.runs} "
              f"run(s) of at most {study.epochs} epochs")
        if study.rows:
            print_table(study.rows, study.header)
        print()
    runs = sum(s.runs for s in plan.studies)
    line = f"in all: {len(plan.studies)} stage(s), {runs} run(s), at most {plan.epochs} epochs"
    if plan.minutes is not None:
        line += (f", about {plan.minutes:.0f} minutes at {plan.seconds_per_epoch:.1f} s per epoch of the base "
                 f"(timed batches; pruning and early stopping end runs sooner)")
    print(line + "; nothing was trained")
