"""The ``segtune`` command line: parsing only; every command calls a public function.

Each command group's module (:mod:`~segtune.cli.run`, :mod:`~segtune.cli.study`,
:mod:`~segtune.cli.tune`, :mod:`~segtune.cli.report`, :mod:`~segtune.cli.data`, :mod:`~segtune.cli.tools`) adds its
subcommands with ``register(subparsers)`` and sets each one's ``handler`` (its command function).

A user error (bad config, bad data, unknown name) prints ``error: <message>`` and exits 2,
with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from segtune import __version__
from segtune.cli import data, report, run, study, tools, tune

__all__ = ["GROUPS", "build_parser", "main"]

GROUPS = (run, study, tune, report, data, tools)  # the command groups, in the order of `segtune --help`


def build_parser() -> argparse.ArgumentParser:
    """The ``segtune`` argument parser with every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="segtune", description="Declarative, reproducible hyperparameter studies for U-Net segmentation.")
    parser.add_argument("--version", action="version", version=f"segtune {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``segtune`` command.

    Args:
        argv: the arguments after ``segtune``; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 done, 2 a user error (printed as ``error: ...``), 130 interrupted.

    Example:
        >>> main(["list", "loss"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    from segtune.errors import USER_ERRORS

    try:
        return args.handler(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished epochs are in the run directory (metrics.csv, last.pt)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
