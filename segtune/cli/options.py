"""Options that several commands share."""

from __future__ import annotations

import argparse

__all__ = ["add_set"]


def add_set(parser: argparse.ArgumentParser) -> None:
    """Add ``--set KEY=VALUE ...``: config overrides, collected in ``args.set`` (a list)."""
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set optimizer.name=sgd optimizer.lr=0.01")
