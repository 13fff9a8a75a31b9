"""``segtune study``: run, resume or join a study; ``segtune study status`` prints its leaderboard."""

from __future__ import annotations

import argparse
import os
from typing import Any

from segtune.cli.options import add_set
from segtune.cli.tables import print_table

__all__ = ["cmd_study", "print_study_results", "register"]

USAGE = "usage: segtune study STUDY.yaml [options] | segtune study status STUDY.yaml"


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
                                               "(default: cores / workers)")
    p.add_argument("--verbose", action="store_true", help="print every epoch of every trial")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # set for spawned workers
    add_set(p)
    p.set_defaults(handler=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    """``segtune study [status] STUDY``: the leaderboard, one worker's trials, or the whole study and its report."""
    from segtune import study as st

    status = args.target[0] == "status" and len(args.target) == 2
    if len(args.target) != 1 and not status:
        raise SystemExit(USAGE)
    path = args.target[-1]
    if status:
        print_study_results(st.load_existing_study(path, study_dir=args.out, storage=args.storage))
    elif args.worker:
        _run_one_worker(args, path)
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

    from segtune.study.records import best_trial, leaderboard, objective_name

    header, rows = leaderboard(study)
    print(f"study {study.study_name}: {len(rows)} trial(s)")
    if rows:
        print_table(rows, header)
    best = best_trial(study)
    if best is None:
        print("no trial has completed yet")
        return None
    print(f"\nbest: trial {best.number}, {objective_name(study)} {best.value:.4f}; its configuration:")
    print(yaml.safe_dump(best.config, sort_keys=False).rstrip())
    return best
