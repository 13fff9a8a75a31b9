"""``segtune tune DATA --budget 30m``: the data's own config, then the built-in study, within a wall-clock budget."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from segtune.cli.options import add_set
from segtune.cli.tables import print_table

__all__ = ["cmd_tune", "print_tune_result", "register"]


def register(subparsers: Any) -> None:
    """Add ``tune`` to the ``segtune`` subparsers."""
    p = subparsers.add_parser("tune", help="tune a dataset in one command: its own config, then a study of lr, loss, "
                                           "augmentation and depth/width within a wall-clock budget")
    p.add_argument("data", metavar="DATA", help="a dataset folder (as `segtune train --data`) or a YAML config file")
    p.add_argument("--budget", required=True,
                   help="wall-clock time for the whole tune: 90s, 30m, 1.5h, or a number of minutes (45)")
    p.add_argument("--out", help="study directory (default: runs/tune-<folder name>); the same one again continues "
                                 "the tune with what is left of its budget")
    add_set(p)
    p.add_argument("--seed", type=int, default=0, help="the search's seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads per trial, fixed when the tune starts "
                                           "(default: every CPU this process may use but one)")
    p.add_argument("--verbose", action="store_true", help="print every epoch of every trial")
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    p.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    """``segtune tune DATA --budget B``: tune, then the leaderboard, the report and how to predict with the best."""
    from segtune.report import study_report
    from segtune.study.budget import parse_budget
    from segtune.study.tune import default_tune_dir, run_tune

    budget = parse_budget(args.budget)  # a bad budget fails before any data is read
    out = args.out or str(default_tune_dir(args.data))
    result = run_tune(args.data, budget=budget, study_dir=out, overrides=args.set, seed=args.seed,
                      num_threads=args.threads, progress=not args.quiet, verbose=args.verbose)
    print_tune_result(result)
    print(f"\nreport: {study_report(result.study, study_dir=out)}")
    return 0


def _test_dice(record: Any) -> str:
    tests = [r.test["dice_mean"] for r in record.runs if "dice_mean" in r.test]
    return f"{sum(tests) / len(tests):.4f}" if tests else "-"


def print_tune_result(result: Any) -> None:
    """Print a tune's leaderboard, its base and best trials, and the commands that use the best model.

    Args:
        result: a :class:`~segtune.study.tune.TuneResult`.
    """
    from segtune.study.records import leaderboard
    from segtune.study.budget import format_duration as _minutes

    header, rows = leaderboard(result.study)
    ended = "the budget is spent" if result.ended == "budget" else "every trial of the study ran"
    print(f"\ntune {result.study.study_name}: {len(rows)} trial(s), {_minutes(result.seconds)} this time, "
          f"{_minutes(result.spent)} of the {_minutes(result.budget)} budget in all; ended: {ended}")
    if result.left_out:
        print(f"not searched (the base's components do not take them): {', '.join(result.left_out)}")
    if rows:
        print_table(rows, header)
    if result.best is None:
        print("no trial has completed: nothing to predict with yet; give the tune more --budget")
        return
    base, best = result.base, result.best
    if base is not None:
        print(f"\nbase (trial {base.number}, the data's own config): val Dice {base.value:.4f}, "
              f"test Dice {_test_dice(base)}")
    gain = f" ({best.value - base.value:+.4f} over the base)" if base is not None else ""
    print(f"best (trial {best.number}): val Dice {best.value:.4f}{gain}, test Dice {_test_dice(best)}")
    print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()))
    where = shlex.quote(str(result.best_dir))
    print(f"\nbest model: {result.best_dir} (its config.yaml, best.pt)")
    print(f"predict with: segtune predict {where} IMAGES_OR_VOLUMES... --out masks/")
    print(f"evaluate with: segtune evaluate {where} --split test")
