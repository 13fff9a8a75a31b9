"""Commands that train or use one model: ``train``, ``demo``, ``evaluate``, ``predict``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segtune.cli.options import add_set
from segtune.cli.tables import print_dice_table, print_table

__all__ = ["cmd_demo", "cmd_evaluate", "cmd_predict", "cmd_train", "register"]


def register(subparsers: Any) -> None:
    """Add ``train``, ``demo``, ``evaluate`` and ``predict`` to the ``segtune`` subparsers."""
    p = subparsers.add_parser("train", help="train one model from a YAML config, or from a dataset folder alone")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--data", metavar="DIR", help="instead of a config: a dataset folder (its layout names the "
                   "source: dataset.json, images/ + masks/, annotations/trimaps); the other settings are "
                   "planned from the data (segtune inspect --data DIR shows them) or take --set")
    add_set(p)
    p.add_argument("--out", help="run directory (default: runs/<name>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last.pt (same config and --set)")
    p.set_defaults(handler=cmd_train)

    p = subparsers.add_parser("demo", help="a small study on the built-in brain MRI demo data; prints the test Dice")
    add_set(p)
    p.add_argument("--single", action="store_true", help="train demo.yaml once instead of running the study")
    p.add_argument("--out", help="study directory (default: runs/demo-study-<timestamp>), "
                                 "or with --single the run directory (default: runs/demo-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(handler=cmd_demo)

    p = subparsers.add_parser("evaluate", help="per-class Dice / IoU of a trained run on one split")
    p.add_argument("run", nargs="+", help="run directory (holding config.yaml and best.pt); several (the folds "
                                          "of a cross-validated trial, trials/0003-seed0-fold*): their ensemble "
                                          "(mean softmax) next to each of them")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="all: every image or case once, e.g. a separate test set given with --set data.path=...")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--postprocess", action="store_true", help="choose keep-the-largest-component per class on "
                   "the val split, save it to RUN/postprocessing.json, and report Dice with and without it")
    add_set(p)
    p.set_defaults(handler=cmd_evaluate)

    p = subparsers.add_parser("predict", help="write label masks with a trained run: PNG for images, NIfTI for volumes")
    p.add_argument("run", help="run directory (holding best.pt)")
    p.add_argument("inputs", nargs="+", help="image files, NIfTI volumes (.nii, .nii.gz) or folders of them")
    p.add_argument("--out", required=True, help="folder for the label masks")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--postprocess", action="store_true",
                   help="apply RUN/postprocessing.json (chosen on the val split first if there is none)")
    p.set_defaults(handler=cmd_predict)


def cmd_train(args: argparse.Namespace) -> int:
    """``segtune train CONFIG``: train, then print the best epoch and the val / test Dice."""
    from segtune.errors import ConfigError
    from segtune.training.loop import train

    if (args.config is None) == (args.data is None):
        raise ConfigError("segtune train needs a config file or --data DIR (one of them): e.g. "
                          "`segtune train tissue.yaml` or `segtune train --data Dataset001_Heart`")
    if args.data is not None and not Path(args.data).expanduser().is_dir():
        raise ConfigError(f"--data {args.data}: no such dataset folder; give the folder that holds dataset.json, "
                          f"images/ + masks/, or annotations/trimaps")
    config, auto = _train_config(args)
    data = None
    if auto:
        config, data = _with_auto_lr(config, resumed=Path(args.out) if args.resume and args.out else None)
    result = train(config, out_dir=args.out, data=data, verbose=not args.quiet, resume=args.resume)
    s = result.summary
    unit, best, ran = (("step", s["best_step"], s["steps_run"]) if s.get("unit") == "step"
                       else ("epoch", s["best_epoch"], s["epochs_run"]))
    print(f"\nbest {unit} {best} of {ran}, {s['seconds']:.1f} s -> {result.run_dir}")
    print_dice_table({"val": s["val"], "test": s["test"]}, s["class_names"])
    return 0


def _train_config(args: argparse.Namespace) -> tuple[Any, bool]:
    """The run's config from its file (or ``--data`` folder) and ``--set``, and whether it asks for
    ``optimizer.lr: auto``: then the optimizer's default lr stands in until the range test's is known."""
    from segtune.config import data_config, parse_override, read_yaml, with_overrides
    from segtune.planning import plan_config
    from segtune.study.space import AUTO_LR, without_auto_lr

    if args.config is None:
        lrs = [value for path, value in map(parse_override, args.set) if path == ["optimizer", "lr"]]
        auto = bool(lrs) and lrs[-1] == AUTO_LR
        kept = [item for item in args.set if not auto or parse_override(item)[0] != ["optimizer", "lr"]]
        return data_config(args.data, kept), auto
    tree, auto = without_auto_lr(with_overrides(read_yaml(args.config), args.set))  # as load_config, auto taken out
    return plan_config(tree, origin=str(args.config)).config, auto


def _with_auto_lr(config: Any, *, resumed: Path | None) -> tuple[Any, Any]:
    """``optimizer.lr: auto``: the config with the lr of the LR range test (the one a study's ``auto`` runs),
    and the data it loaded; a resumed run keeps the lr its config.yaml holds."""
    from segtune.config import build_config
    from segtune.training.lr_find import lr_range_test
    from segtune.training.rundir import saved_config
    from segtune.training.runtime import load_data

    data = load_data(config)
    saved = saved_config(resumed) if resumed is not None and (resumed / "config.yaml").is_file() else None
    if saved is not None:
        lr, how = saved["optimizer"]["lr"], f"as in {resumed / 'config.yaml'}"
    else:
        found = lr_range_test(config, data=data)
        lr, how = found.suggestion, f"LR range test of {config.optimizer.name}, rule {found.rule}"
    print(f"optimizer.lr: auto -> {lr:.3g} ({how})", flush=True)
    return build_config(config.to_dict(), [f"optimizer.lr={lr!r}"], origin="optimizer.lr: auto"), data


def cmd_demo(args: argparse.Namespace) -> int:
    """``segtune demo``: the demo study and its report, or with ``--single`` one training of demo.yaml."""
    from segtune.data.demo import COPYRIGHT

    print("segtune demo: brain tissue segmentation on the MNI ICBM152 2009 template (nilearn), "
          "held-out contiguous blocks of axial slices\n")
    if args.single:
        _demo_single(args)
    else:
        _demo_study(args)
    print("\n" + COPYRIGHT.splitlines()[0] + " Copyright notice: see NOTICE.")
    return 0


def _demo_single(args: argparse.Namespace) -> None:
    from segtune.config import load_config
    from segtune.study.demo import demo_config_path
    from segtune.training.loop import train

    result = train(load_config(demo_config_path(), args.set), out_dir=args.out, verbose=not args.quiet)
    s = result.summary
    print(f"\nbest epoch {s['best_epoch']} of {s['epochs_run']}, {s['seconds']:.1f} s, "
          f"run directory {result.run_dir}")
    print("Dice on held-out test slices:")
    print_dice_table({"test": s["test"]}, s["class_names"])


def _demo_study(args: argparse.Namespace) -> None:
    from pathlib import Path

    from segtune.cli.study import print_study_results
    from segtune.report import study_report
    from segtune.study.demo import default_demo_dir, demo_study_path, run_demo

    out = Path(args.out) if args.out else default_demo_dir()
    print(f"a study of optimizer x learning rate x loss with median pruning ({demo_study_path().name}) -> {out}",
          flush=True)
    demo = run_demo(study_dir=out, overrides=args.set, progress=not args.quiet)
    print(f"\n{demo.seconds:.0f} s in all")
    print_study_results(demo.study)
    if demo.best_run is not None:
        print(f"\nbest trial {demo.best_trial.number}: Dice on held-out test slices ({demo.best_run.run_dir})")
        print_dice_table({"test": demo.best_run.test}, list(demo.best_run.class_names))
    print(f"\nreport: {study_report(demo.study, study_dir=out)}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``segtune evaluate RUN``: per-class Dice / IoU of a run on one split (and per case for volumes)."""
    from segtune.training.predict import evaluate_run

    if len(args.run) > 1:
        return _evaluate_ensemble(args)
    metrics, names = evaluate_run(args.run[0], split=args.split, checkpoint=args.checkpoint, overrides=args.set,
                                  postprocess=args.postprocess)
    _print_evaluation(metrics, names, args.split)
    if args.postprocess:
        kept = [n for n, keep in metrics["postprocessing"].items() if keep] or ["no class"]
        print(f"\nkeep the largest component (chosen on val): {', '.join(kept)}; with it:")
        _print_evaluation(metrics["postprocessed"], names, args.split)
    return 0


def _evaluate_ensemble(args: argparse.Namespace) -> int:
    """``segtune evaluate RUN RUN ...``: the fold models' ensemble against each fold alone."""
    from segtune.errors import ConfigError
    from segtune.training.ensemble import evaluate_ensemble

    if args.postprocess:
        raise ConfigError("--postprocess scores one run; evaluate the runs of an ensemble without it")
    result = evaluate_ensemble(args.run, split=args.split, checkpoint=args.checkpoint, overrides=args.set)
    keys = [k for k in ("dice_mean", "case_dice_mean", "hd95_mean", "nsd_mean", "asd_mean", "avd_mean")
            if k in result["ensemble"]]
    rows = [[Path(run).name] + [m.get(k) for k in keys] for run, m in result["runs"].items()]
    rows.append(["mean of the runs"] + [result["mean_of_runs"].get(k) for k in keys])
    rows.append([f"ensemble of {len(result['runs'])} (mean softmax)"] + [result["ensemble"].get(k) for k in keys])
    print(f"{args.split} split: each run alone and their ensemble")
    print_table(rows, ["model"] + keys)
    return 0


def _print_evaluation(metrics: dict, names: list[str], split: str) -> None:
    if "per_case" in metrics:
        print(f"3D Dice per case, whole volumes ({split} split):")
        rows = [[case] + [dice[n] for n in names[1:]] for case, dice in metrics["per_case"].items()]
        rows.append(["mean over cases"] + [metrics["case_mean_dice_per_class"][n] for n in names[1:]])
        print_table(rows, ["case"] + list(names[1:]))
        print("\nall voxels of the split pooled:")
    print_dice_table({split: metrics}, names)
    surface = [k for k in ("hd95_mean", "nsd_mean", "asd_mean", "avd_mean") if metrics.get(k) is not None]
    if surface:  # means over cases and foreground classes; hd95 and asd in mm
        print("\nsurface metrics, mean over cases and classes: "
              + ", ".join(f"{k.removesuffix('_mean')} {metrics[k]:.3f}" for k in surface))


def cmd_predict(args: argparse.Namespace) -> int:
    """``segtune predict RUN INPUTS... --out FOLDER``: write a label mask per input."""
    from segtune.training.predict import predict_files

    written = predict_files(args.run, args.inputs, args.out, checkpoint=args.checkpoint,
                            postprocess=args.postprocess)
    print(f"wrote {len(written)} label mask(s) to {args.out}")
    return 0
