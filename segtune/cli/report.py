"""``segtune report``: the HTML and Markdown report of a study or a run."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["cmd_report", "register"]

USAGE = "usage: segtune report STUDY_DIR | RUN_DIR | --storage URL [--study NAME] [STUDY_DIR]"


def register(subparsers: Any) -> None:
    """Add ``report`` to the ``segtune`` subparsers."""
    p = subparsers.add_parser("report", help="HTML and Markdown report of a study or a run: tables, curves, "
                                             "predictions")
    p.add_argument("path", nargs="?", help="study directory (holding study.db) or run directory (holding config.yaml)")
    p.add_argument("--storage", help="a study storage URL instead, e.g. postgresql://user@host:5432/db")
    p.add_argument("--study", help="the study's name in --storage (needed when it holds several)")
    p.add_argument("--out", help="report folder (default: PATH/report)")
    p.add_argument("--layout", nargs="+", metavar="PARAM",
                   help="one or two hyperparameters laying out the curve grids (columns, or rows then columns), "
                        "e.g. optimizer.name scheduler.name")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``segtune report PATH``: write report.html, report.md and figures/ and say where."""
    from segtune.report import write_report

    if args.path is None and args.storage is None:
        raise SystemExit(USAGE)
    html = write_report(args.path, storage=args.storage, study_name=args.study, out=args.out, layout=args.layout)
    print(f"report: {html} (and report.md, figures/ beside it)")
    return 0
