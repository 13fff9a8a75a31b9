"""The ``segtune`` command line: parsing only; every command calls a public function.

A user error (bad config, bad data, unknown name) prints ``error: <message>`` and exits 2,
with no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def decorator(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return decorator


def demo_config_path() -> Path:
    """The built-in demo config shipped with the package."""
    return Path(str(resources.files("segtune") / "configs" / "demo.yaml"))


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    """Print an aligned plain-text table (floats with 4 decimals)."""
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def print_dice_table(metrics: dict[str, dict], class_names: list[str]) -> None:
    """Per-class Dice (and IoU) of each split in ``metrics``, foreground classes and their mean."""
    rows = []
    for name in class_names[1:]:
        rows.append([name] + [m["dice_per_class"][name] for m in metrics.values()]
                    + [m["iou_per_class"][name] for m in metrics.values()])
    rows.append(["mean (foreground)"] + [m["dice_mean"] for m in metrics.values()]
                + [m["iou_mean"] for m in metrics.values()])
    header = ["class"] + [f"{s} dice" for s in metrics] + [f"{s} iou" for s in metrics]
    print_table(rows, header)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from segtune.config import load_config
    from segtune.training.loop import train

    config = load_config(args.config, args.set)
    result = train(config, out_dir=args.out, verbose=not args.quiet, resume=args.resume)
    s = result.summary
    print(f"\nbest epoch {s['best_epoch']} of {s['epochs_run']}, {s['seconds']:.1f} s -> {result.run_dir}")
    print_dice_table({"val": s["val"], "test": s["test"]}, s["class_names"])
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from segtune.config import load_config
    from segtune.data.demo import COPYRIGHT
    from segtune.training.loop import train

    print("segtune demo: brain tissue segmentation on the MNI ICBM152 2009 template (nilearn), "
          "held-out contiguous blocks of axial slices\n")
    if not args.single:
        _demo_study(args)
    else:
        config = load_config(demo_config_path(), args.set)
        result = train(config, out_dir=args.out, verbose=not args.quiet)
        s = result.summary
        print(f"\nbest epoch {s['best_epoch']} of {s['epochs_run']}, {s['seconds']:.1f} s, "
              f"run directory {result.run_dir}")
        print("Dice on held-out test slices:")
        print_dice_table({"test": s["test"]}, s["class_names"])
    print("\n" + COPYRIGHT.splitlines()[0] + " Copyright notice: see NOTICE.")
    return 0


def _demo_study(args: argparse.Namespace) -> None:
    import time

    from segtune.study import run_study

    path = demo_config_path().with_name("demo_study.yaml")
    out = args.out or Path("runs") / f"demo-study-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"a study of optimizer x learning rate x loss with median pruning ({path.name}) -> {out}", flush=True)
    t0 = time.perf_counter()
    study = run_study(path, study_dir=out, overrides=args.set, verbose=False, progress=not args.quiet)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    best = print_study_results(study)
    if best is not None:
        run = max(best.runs, key=lambda r: r.value)
        print(f"\nbest trial {best.number}: Dice on held-out test slices ({run.run_dir})")
        print_dice_table({"test": run.test}, list(run.class_names))
    from segtune.report import study_report

    print(f"\nreport: {study_report(study, study_dir=out)}")


@command("study")
def cmd_study(args: argparse.Namespace) -> int:
    from segtune import study as st
    from segtune.report import study_report

    status = args.target[0] == "status" and len(args.target) == 2
    if len(args.target) != 1 and not status:
        raise SystemExit("usage: segtune study STUDY.yaml [options] | segtune study status STUDY.yaml")
    path = args.target[-1]
    if status:
        print_study_results(st.load_existing_study(path, study_dir=args.out, storage=args.storage))
        return 0
    if args.worker:
        from segtune.study.storage import STORAGE_ENV

        spec, space = st.load_study(path, args.set)
        n = st.run_worker(spec, space, study_dir=Path(args.out) if args.out else st.default_study_dir(spec),
                          storage=args.storage or os.environ.get(STORAGE_ENV), num_threads=args.threads,
                          seed=spec.seed, verbose=args.verbose, progress=args.progress)
        print(f"worker {os.getpid()}: ran {n} trial(s); the study is done", flush=True)
        return 0
    study = st.run_study(path, study_dir=args.out, storage=args.storage, n_workers=args.workers,
                         num_threads=args.threads, overrides=args.set, verbose=args.verbose,
                         progress=not args.quiet)
    print_study_results(study)
    print(f"\nreport: {study_report(study, study_dir=args.out)}")
    return 0


def print_study_results(study: Any) -> Any:
    """Print a study's leaderboard and its best configuration; returns the best trial's record or None."""
    import yaml

    from segtune.study.records import SPEC, best_trial, leaderboard

    header, rows = leaderboard(study)
    print(f"study {study.study_name}: {len(rows)} trial(s)")
    if rows:
        print_table(rows, header)
    best = best_trial(study)
    if best is None:
        print("no trial has completed yet")
        return None
    objective = study.user_attrs.get(SPEC, {}).get("objective", "objective")
    print(f"\nbest: trial {best.number}, {objective} {best.value:.4f}; its configuration:")
    print(yaml.safe_dump(best.config, sort_keys=False).rstrip())
    return best


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from segtune.report import write_report

    if args.path is None and args.storage is None:
        raise SystemExit("usage: segtune report STUDY_DIR | RUN_DIR | --storage URL [--study NAME] [STUDY_DIR]")
    html = write_report(args.path, storage=args.storage, study_name=args.study, out=args.out, layout=args.layout)
    print(f"report: {html} (and report.md, figures/ beside it)")
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from segtune.training.predict import evaluate_run

    metrics, names = evaluate_run(args.run, split=args.split, checkpoint=args.checkpoint, overrides=args.set)
    if "per_case" in metrics:
        print(f"3D Dice per case ({args.split} split):")
        rows = [[case] + [dice[n] for n in names[1:]] for case, dice in metrics["per_case"].items()]
        rows.append(["mean over cases"] + [metrics["case_mean_dice_per_class"][n] for n in names[1:]])
        print_table(rows, ["case"] + list(names[1:]))
        print("\nall voxels of the split pooled:")
    print_dice_table({args.split: metrics}, names)
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    from segtune.training.predict import predict_files

    written = predict_files(args.run, args.inputs, args.out, checkpoint=args.checkpoint)
    print(f"wrote {len(written)} label mask(s) to {args.out}")
    return 0


@command("download")
def cmd_download(args: argparse.Namespace) -> int:
    from segtune.data.download import download

    folder = download(args.dataset, args.folder, mirror=args.mirror)
    print(f"ready: use data.source=oxford_pet data.path={folder}")
    return 0


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from segtune.data.fingerprint import data_config, fingerprint, format_fingerprint

    fp = fingerprint(data_config(args.data, args.set))
    print(json.dumps(fp, indent=2) if args.json else format_fingerprint(fp))
    return 0


@command("list")
def cmd_list(args: argparse.Namespace) -> int:
    from segtune.components.catalog import format_components

    print(format_components(args.sections or None), end="")
    return 0


@command("pretrain")
def cmd_pretrain(args: argparse.Namespace) -> int:
    from segtune.config import load_config
    from segtune.training.pretrain import pretrain

    config = load_config(args.config, args.set)
    s = pretrain(config, out_dir=args.out, verbose=not args.quiet).summary
    print(f"\nbest epoch {s['best_epoch']} of {s['epochs_run']}, {s['seconds']:.1f} s: validation MSE "
          f"{s['val']['mse']:.4f}, MAE {s['val']['mae']:.4f}")
    print(f"encoder weights: {s['encoder']}\ntrain from them with: --set model.encoder_weights={s['encoder']} "
          f"[model.freeze_encoder=true [model.unfreeze_encoder_after=N]]")
    return 0


@command("lr-find")
def cmd_lr_find(args: argparse.Namespace) -> int:
    from segtune.config import load_config
    from segtune.training.lr_find import LR_RULES, find_lrs, refine_lr
    from segtune.training.loop import default_run_dir, load_data

    config = load_config(args.config, args.set)
    out = Path(args.out) if args.out else default_run_dir(config).with_name(f"lr-find-{config.name}")
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] if args.optimizers else [config.optimizer.name]
    data = load_data(config)
    if args.refine:
        options = {k: getattr(args, k) for k in ("low", "high", "n_bisect", "epochs") if hasattr(args, k)}
        rows, total = [], 0.0
        for name in names:
            r = refine_lr(config, out_dir=out, data=data, optimizer=name, verbose=not args.quiet, **options)
            rows += [[name, t["stage"], f"{t['lr']:.3g}", t["val_dice"], f"{t['seconds']:.1f}", t["status"]]
                     for t in r.trials]
            total += r.seconds
            print(f"{name}: best lr {r.best_lr:.3g}, val Dice {r.best_dice:.4f}, {len(r.trials)} trainings of "
                  f"{r.epochs} epochs, {r.seconds:.0f} s", flush=True)
        print_table(rows, ["optimizer", "stage", "lr", "val dice", "seconds", "status"])
        print(f"\ntotal cost: {len(rows)} trainings, {total:.0f} s; run directories in {out}")
        return 0
    options = {k: getattr(args, k) for k in ("n_steps", "start_lr", "end_lr", "smoothing", "rule") if hasattr(args, k)}
    curves = find_lrs(config, names, out_dir=out, data=data, **options)
    rows = [[c.optimizer, f"{c.suggestion:.3g}", *(f"{c.suggestions[r]:.3g}" for r in sorted(c.suggestions)),
             len(c.lrs), f"{c.seconds:.1f}", c.stopped] for c in curves]
    print_table(rows, ["optimizer", f"suggested lr ({curves[0].rule})", *sorted(curves[0].suggestions),
                       "steps", "seconds", "stopped"])
    rule = curves[0].rule
    print(f"\nrule {rule}: {LR_RULES.entry(rule).summary} {RULE_REASONS.get(rule, '')}".rstrip())
    print(f"curves: {out / 'lr_find.png'}, table: {out / 'lr_find.csv'}")
    return 0


RULE_REASONS = {  # why each rule, from benchmarks/lr_search.py on the demo data (README: Learning rate search)
    "steepest": "The default: measured closest to the best of a 5-point grid (Adam within 0.01 Dice); "
                "momentum SGD trains best at 5 to 10x it (use --refine).",
    "valley": "Measured one to two decades too low on the demo data.",
    "min_tenth": "Measured within 0.01 Dice of the grid's best for Adam, 0.05 short for momentum SGD.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segtune", description="Declarative, reproducible hyperparameter studies for U-Net segmentation.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override config values, e.g. --set optimizer.name=sgd optimizer.lr=0.01")

    p = sub.add_parser("train", help="train one model from a YAML config")
    p.add_argument("config", help="YAML config file")
    add_set(p)
    p.add_argument("--out", help="run directory (default: runs/<name>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last.pt (same config and --set)")

    p = sub.add_parser("demo", help="a small study on the built-in brain MRI demo data; prints the test Dice")
    add_set(p)
    p.add_argument("--single", action="store_true", help="train demo.yaml once instead of running the study")
    p.add_argument("--out", help="study directory (default: runs/demo-study-<timestamp>), "
                                 "or with --single the run directory (default: runs/demo-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")

    p = sub.add_parser("study", help="run, resume or join a hyperparameter study; `study status` shows it")
    p.add_argument("target", nargs="+", metavar="[status] STUDY",
                   help="the study YAML file; `status STUDY` prints its leaderboard")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
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

    p = sub.add_parser("report", help="HTML and Markdown report of a study or a run: tables, curves, predictions")
    p.add_argument("path", nargs="?", help="study directory (holding study.db) or run directory (holding config.yaml)")
    p.add_argument("--storage", help="a study storage URL instead, e.g. postgresql://user@host:5432/db")
    p.add_argument("--study", help="the study's name in --storage (needed when it holds several)")
    p.add_argument("--out", help="report folder (default: PATH/report)")
    p.add_argument("--layout", nargs="+", metavar="PARAM",
                   help="one or two hyperparameters laying out the curve grids (columns, or rows then columns), "
                        "e.g. optimizer.name scheduler.name")

    p = sub.add_parser("evaluate", help="per-class Dice / IoU of a trained run on one split")
    p.add_argument("run", help="run directory (holding config.yaml and best.pt)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="all: every image or case once, e.g. a separate test set given with --set data.path=...")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    add_set(p)

    p = sub.add_parser("predict", help="write label masks with a trained run: PNG for images, NIfTI for volumes")
    p.add_argument("run", help="run directory (holding best.pt)")
    p.add_argument("inputs", nargs="+", help="image files, NIfTI volumes (.nii, .nii.gz) or folders of them")
    p.add_argument("--out", required=True, help="folder for the label masks")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])

    p = sub.add_parser("download", help="fetch a public dataset (oxford-pet), check its MD5 sums and unpack it")
    p.add_argument("dataset", help="dataset name: oxford-pet")
    p.add_argument("folder", help="where to put the archives and the unpacked files")
    p.add_argument("--mirror", help="base URL of a mirror holding the same archive files (https://, file://)")

    p = sub.add_parser("inspect", help="dataset fingerprint: sizes, spacings, intensities, class frequencies, "
                                       "warnings and suggested settings")
    p.add_argument("--data", help="dataset folder (layout recognised) or YAML config; or give --set data.source=...")
    add_set(p)
    p.add_argument("--json", action="store_true", help="print the fingerprint as JSON")

    p = sub.add_parser("list", help="every model, loss, optimizer, schedule, augmentation and data source, "
                                    "with its options and defaults")
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help="only these config sections: model loss optimizer scheduler augment data")
    p = sub.add_parser("pretrain", help="pre-train the model's encoder as an autoencoder on the training images")
    p.add_argument("config", help="YAML config file (data, model, optimizer, train.epochs)")
    add_set(p)
    p.add_argument("--out", help="run directory (default: runs/<name>-pretrain-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")

    p = sub.add_parser("lr-find", help="LR range test per optimizer (one table, one figure); --refine: "
                                        "coarse-to-fine search on validation Dice")
    p.add_argument("config", help="YAML config file")
    add_set(p)
    p.add_argument("--optimizers", help="comma-separated optimizer names (default: the configured one)")
    p.add_argument("--out", help="output folder (default: runs/lr-find-<name>-<timestamp>)")
    keep = argparse.SUPPRESS  # unset options keep the defaults of segtune.training.lr_find
    p.add_argument("--steps", dest="n_steps", type=int, default=keep, help="range test: optimizer steps (100)")
    p.add_argument("--start-lr", type=float, default=keep, help="range test: first lr (1e-7)")
    p.add_argument("--end-lr", type=float, default=keep, help="range test: last lr (10)")
    p.add_argument("--smoothing", type=float, default=keep,
                   help="range test: moving-average weight of the newest loss (0.05; 0.3 for short tests)")
    p.add_argument("--rule", default=keep, help="range test: steepest (default), valley or min_tenth")
    p.add_argument("--refine", action="store_true",
                   help="short trainings at each decade from --low to --high, then bisection on validation Dice")
    p.add_argument("--low", type=float, default=keep, help="refine: lowest lr (1e-5)")
    p.add_argument("--high", type=float, default=keep, help="refine: highest lr (1e-1)")
    p.add_argument("--n-bisect", type=int, default=keep, help="refine: bisection rounds, 2 trainings each (2)")
    p.add_argument("--epochs", type=int, default=keep, help="refine: epochs per training (train.epochs)")
    p.add_argument("--quiet", action="store_true", help="refine: no per-epoch lines")
    return parser


def _version() -> str:
    from segtune import __version__

    return f"segtune {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segtune.errors import USER_ERRORS

    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished epochs are in the run directory (metrics.csv, last.pt)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
