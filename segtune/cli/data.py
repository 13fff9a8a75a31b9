"""Commands about data and components: ``download``, ``inspect``, ``list``."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.cli.options import add_set

__all__ = ["cmd_download", "cmd_inspect", "cmd_list", "register"]


def register(subparsers: Any) -> None:
    """Add ``download``, ``inspect`` and ``list`` to the ``segtune`` subparsers."""
    from segtune.catalog import REGISTRIES, SETTINGS

    p = subparsers.add_parser("download", help="fetch a public dataset (oxford-pet), check its MD5 sums and unpack it")
    p.add_argument("dataset", help="dataset name: oxford-pet")
    p.add_argument("folder", help="where to put the archives and the unpacked files")
    p.add_argument("--mirror", help="base URL of a mirror holding the same archive files (https://, file://)")
    p.set_defaults(handler=cmd_download)

    p = subparsers.add_parser("inspect", help="dataset fingerprint (sizes, spacings, intensities, class frequencies, "
                                              "warnings) and the settings planned from it, each with its reason")
    p.add_argument("--data", help="dataset folder (layout recognised) or YAML config; or give --set data.source=...")
    add_set(p)
    p.add_argument("--json", action="store_true", help="print the fingerprint and the plan as JSON")
    p.set_defaults(handler=cmd_inspect)

    p = subparsers.add_parser("list", help="every model, loss, optimizer, schedule, augmentation and data source, "
                                           "with its options and defaults, and the train settings")
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"only these config sections: {' '.join([*REGISTRIES, *SETTINGS])}")
    p.set_defaults(handler=cmd_list)


def cmd_download(args: argparse.Namespace) -> int:
    """``segtune download DATASET FOLDER``: fetch, check and unpack; print the config to use it."""
    from segtune.data.download import download

    folder = download(args.dataset, args.folder, mirror=args.mirror)
    print(f"ready: use data.source=oxford_pet data.path={folder}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``segtune inspect``: print the dataset fingerprint and the plan a training would use, as text or JSON."""
    import json

    from segtune.data.fingerprint import fingerprint, format_fingerprint
    from segtune.data.plan import format_plan
    from segtune.planning import data_plan

    planned = data_plan(args.data, args.set, explain=True)
    fp = fingerprint(planned.config)
    if args.json:
        print(json.dumps({**fp, "plan": planned.report.to_dict()}, indent=2))
    else:
        print(format_fingerprint(fp) + "\n\n" + format_plan(planned.report))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``segtune list [SECTION...]``: every registered component with its options and defaults."""
    from segtune.catalog import format_components

    print(format_components(args.sections or None), end="")
    return 0
