"""Commands that prepare a training: ``pretrain`` (the encoder) and ``lr-find`` (the learning rate).

The defaults shown in ``lr-find --help`` are read from :func:`~segtune.training.lr_find.lr_range_test`,
:func:`~segtune.training.lr_find.refine_lr` and the config models, so the help cannot drift from them.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any, Callable

from segtune.cli.options import add_set
from segtune.cli.tables import print_table

__all__ = ["cmd_lr_find", "cmd_pretrain", "register"]

RANGE_TEST_OPTIONS = ("n_steps", "start_lr", "end_lr", "smoothing", "rule")  # passed on to lr_range_test
REFINE_OPTIONS = ("low", "high", "n_bisect", "epochs")  # passed on to refine_lr


def _default(fn: Callable, name: str) -> Any:
    return inspect.signature(fn).parameters[name].default


def register(subparsers: Any) -> None:
    """Add ``pretrain`` and ``lr-find`` to the ``segtune`` subparsers."""
    p = subparsers.add_parser("pretrain", help="pre-train the model's encoder as an autoencoder on the training images")
    p.add_argument("config", help="YAML config file (data, model, optimizer, train.epochs)")
    add_set(p)
    p.add_argument("--out", help="run directory (default: runs/<name>-pretrain-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(handler=cmd_pretrain)
    _register_lr_find(subparsers)


def _register_lr_find(subparsers: Any) -> None:
    from segtune.config import TrainConfig
    from segtune.training.lr_find import LR_RULES, lr_range_test, refine_lr

    p = subparsers.add_parser("lr-find", help="LR range test per optimizer (one table, one figure); --refine: "
                                              "coarse-to-fine search on validation Dice")
    p.add_argument("config", help="YAML config file")
    add_set(p)
    p.add_argument("--optimizers", help="comma-separated optimizer names (default: the configured one)")
    p.add_argument("--out", help="output folder (default: runs/lr-find-<name>-<timestamp>)")
    keep = argparse.SUPPRESS  # an option left out keeps the function's own default, shown in its help
    test = {name: _default(lr_range_test, name) for name in RANGE_TEST_OPTIONS}
    p.add_argument("--steps", dest="n_steps", type=int, default=keep,
                   help=f"range test: optimizer steps ({test['n_steps']})")
    p.add_argument("--start-lr", type=float, default=keep, help=f"range test: first lr ({test['start_lr']:g})")
    p.add_argument("--end-lr", type=float, default=keep, help=f"range test: last lr ({test['end_lr']:g})")
    p.add_argument("--smoothing", type=float, default=keep,
                   help=f"range test: moving-average weight of the newest loss ({test['smoothing']:g}; "
                        f"0.3 for short tests)")
    p.add_argument("--rule", default=keep, help=f"range test: the rule reading the lr off the curve, one of "
                                                f"{', '.join(LR_RULES.names())} ({test['rule']})")
    p.add_argument("--refine", action="store_true",
                   help="short trainings at each decade from --low to --high, then bisection on validation Dice")
    p.add_argument("--low", type=float, default=keep, help=f"refine: lowest lr ({_default(refine_lr, 'low'):g})")
    p.add_argument("--high", type=float, default=keep, help=f"refine: highest lr ({_default(refine_lr, 'high'):g})")
    p.add_argument("--n-bisect", type=int, default=keep,
                   help=f"refine: bisection rounds, 2 trainings each ({_default(refine_lr, 'n_bisect')})")
    p.add_argument("--epochs", type=int, default=keep,
                   help=f"refine: epochs per training (the config's train.epochs, "
                        f"{TrainConfig.model_fields['epochs'].default} unless it sets them; or its train.steps)")
    p.add_argument("--quiet", action="store_true", help="refine: no per-epoch lines")
    p.set_defaults(handler=cmd_lr_find)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``segtune pretrain CONFIG``: pre-train the encoder, write the run's report, say how to use the weights."""
    from segtune.config import load_config
    from segtune.report import run_report
    from segtune.training.pretrain import pretrain

    result = pretrain(load_config(args.config, args.set), out_dir=args.out, verbose=not args.quiet)
    html = run_report(result.run_dir, result.run_dir)
    s = result.summary
    print(f"\nbest epoch {s['best_epoch']} of {s['epochs_run']}, {s['seconds']:.1f} s: validation MSE "
          f"{s['val']['mse']:.4f}, MAE {s['val']['mae']:.4f}")
    print(f"encoder weights: {s['encoder']}\ntrain from them with: --set model.encoder_weights={s['encoder']} "
          f"[model.freeze_encoder=true [model.unfreeze_encoder_after=N]]")
    print(f"report: {html} (and report.md, figures/ beside it)")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """``segtune lr-find CONFIG``: the LR range test per optimizer, or with ``--refine`` the search on Dice."""
    from segtune.config import load_config
    from segtune.training.rundir import default_run_dir
    from segtune.training.runtime import load_data

    config = load_config(args.config, args.set)
    stamped = default_run_dir(config)  # runs/<name>-<timestamp>
    out = Path(args.out) if args.out else stamped.with_name(f"lr-find-{stamped.name}")
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] if args.optimizers else [config.optimizer.name]
    data = load_data(config)
    if args.refine:
        _refine(args, config, names, out, data)
    else:
        _range_tests(args, config, names, out, data)
    return 0


def _range_tests(args: argparse.Namespace, config: Any, names: list[str], out: Path, data: Any) -> None:
    from segtune.report import lr_find_report
    from segtune.training.lr_find import explain_rule, find_lrs

    options = {k: getattr(args, k) for k in RANGE_TEST_OPTIONS if hasattr(args, k)}
    curves = find_lrs(config, names, out_dir=out, data=data, **options)
    rows = [[c.optimizer, f"{c.suggestion:.3g}", *(f"{c.suggestions[r]:.3g}" for r in sorted(c.suggestions)),
             len(c.lrs), f"{c.seconds:.1f}", c.stopped] for c in curves]
    print_table(rows, ["optimizer", f"suggested lr ({curves[0].rule})", *sorted(curves[0].suggestions),
                       "steps", "seconds", "stopped"])
    rule = curves[0].rule
    print(f"\nrule {rule}: {explain_rule(rule)}")
    print(f"curves: {out / 'lr_find.png'}, table: {out / 'lr_find.csv'}")
    print(f"report: {lr_find_report(out, curves=curves)} (and report.md, figures/, tables/ beside it)")


def _refine(args: argparse.Namespace, config: Any, names: list[str], out: Path, data: Any) -> None:
    from segtune.report import lr_find_report
    from segtune.training.lr_find import refine_lr

    options = {k: getattr(args, k) for k in REFINE_OPTIONS if hasattr(args, k)}
    rows, total, results = [], 0.0, []
    for name in names:
        r = refine_lr(config, out_dir=out, data=data, optimizer=name, verbose=not args.quiet, **options)
        results.append(r)
        rows += [[name, t["stage"], f"{t['lr']:.3g}", t["val_dice"], f"{t['seconds']:.1f}", t["status"]]
                 for t in r.trials]
        total += r.seconds
        print(f"{name}: best lr {r.best_lr:.3g}, val Dice {r.best_dice:.4f}, {len(r.trials)} trainings of "
              f"{r.budget}, {r.seconds:.0f} s", flush=True)
    print_table(rows, ["optimizer", "stage", "lr", "val dice", "seconds", "status"])
    print(f"\ntotal cost: {len(rows)} trainings, {total:.0f} s; run directories in {out}")
    print(f"report: {lr_find_report(out, refined=results)} (and report.md, figures/, tables/ beside it)")

