"""``segtune report``: the HTML and Markdown report of a study or a run."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["cmd_report", "register"]

USAGE = "usage: segtune report STUDY_DIR | RUN_DIR | --storage URL [--study NAME] [STUDY_DIR]"


def register(subparsers: Any) -> None:
    """Add ``report`` to the ``segtune`` subparsers."""
    from segtune.report.cells import DEFAULT_METRICS, METRICS
    from segtune.report.export import DEFAULT_FORMATS, FORMATS
    from segtune.report.options import ReportOptions

    defaults = ReportOptions()
    p = subparsers.add_parser("report", help="HTML and Markdown report of a study or a run: tables, curves, "
                                             "predictions")
    p.add_argument("path", nargs="?", help="study directory (holding study.db) or run directory (holding config.yaml)")
    p.add_argument("--storage", help="a study storage URL instead, e.g. postgresql://user@host:5432/db")
    p.add_argument("--study", help="the study's name in --storage (needed when it holds several)")
    p.add_argument("--out", help="report folder (default: PATH/report)")
    p.add_argument("--layout", nargs="+", metavar="PARAM",
                   help="one or two hyperparameters laying out the curve grids and the prediction grid (columns, "
                        "or rows then columns), e.g. optimizer.name x scheduler.name")
    p.add_argument("--metrics", nargs="*", metavar="METRIC", default=list(DEFAULT_METRICS),
                   help=f"columns of the metrics table per pivot cell, from {', '.join(METRICS)} "
                        f"(default: {' '.join(DEFAULT_METRICS)}; none: no such table)")
    p.add_argument("--format", nargs="+", dest="formats", metavar="FMT", default=list(DEFAULT_FORMATS),
                   help=f"export formats, from {', '.join(FORMATS)}: figures as PNG (always), PDF, SVG; tables as "
                        f"CSV and LaTeX booktabs (default: {' '.join(DEFAULT_FORMATS)})")
    p.add_argument("--test-loss", metavar="LOSS",
                   help="a loss computed on every trial's test predictions, so losses compare (e.g. dice)")
    p.add_argument("--trials", type=int, default=defaults.n_best, metavar="N",
                   help=f"trials in the panel of the best trials (default {defaults.n_best})")
    p.add_argument("--n-images", type=int, default=defaults.n_images, metavar="N",
                   help=f"validation images per prediction panel and worst cases shown (default {defaults.n_images})")
    p.add_argument("--images", type=int, nargs="+", metavar="INDEX",
                   help="the validation images to show (indices), instead of evenly spaced ones")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``segtune report PATH``: write report.html, report.md and figures/ and say where."""
    from segtune.report import ReportOptions, write_report

    if args.path is None and args.storage is None:
        raise SystemExit(USAGE)
    options = ReportOptions(layout=args.layout, metrics=args.metrics, formats=args.formats, test_loss=args.test_loss,
                            n_best=args.trials, n_images=args.n_images, images=args.images)
    html = write_report(args.path, storage=args.storage, study_name=args.study, out=args.out, options=options)
    print(f"report: {html} (and report.md, figures/, tables/ beside it)")
    return 0
