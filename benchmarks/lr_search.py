"""Learning-rate search: the LR range test's suggestion against a 5-point log grid of learning rates.

For each optimizer, on the built-in demo data (brain tissue, 2 mm axial slices, the demo's
MONAI UNet, step schedule and flip augmentation, no early stopping), this trains the model at every point of a 5-point log grid for the same budget of
epochs and takes the best validation Dice; then it runs the LR range test (the search), trains
at the suggested learning rate for the same budget, and reports:

- the validation Dice at the suggestion against the best of the grid (aim: within 0.02), and
- the cost of the search (the range test) as a share of the grid's cost (aim: at most 10 %).

The suggestions of the rules in ``--rules`` (default steepest and valley) are trained.
Everything runs in this process, one run after the other, so all see the same machine.

Usage::

    python benchmarks/lr_search.py                         # adam and sgd, about 20 minutes on one CPU core
    python benchmarks/lr_search.py --optimizers adam --epochs 10 --out lr.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path


from segtune.config import load_config
from segtune.errors import TrainingDiverged
from segtune.training.lr_find import lr_range_test
from segtune.training.loop import train
from segtune.training.runtime import load_data

GRIDS = {  # the usual 5-point log grids, one decade apart
    "adam": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    "sgd": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
}


def _train_dice(config, data, out: Path) -> tuple[float, float]:
    """Validation Dice and seconds of one training (0 Dice when it diverges)."""
    t0 = time.perf_counter()
    try:
        dice = train(config, out_dir=out, data=data, verbose=False).summary["val"]["dice_mean"]
    except TrainingDiverged:
        dice = 0.0
    return dice, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default="adam,sgd")
    parser.add_argument("--epochs", type=int, default=15, help="training budget of every run")
    parser.add_argument("--steps", type=int, default=40, help="range-test steps")
    parser.add_argument("--start-lr", type=float, default=1e-6)
    parser.add_argument("--end-lr", type=float, default=1.0)
    parser.add_argument("--smoothing", type=float, default=0.3,
                        help="moving-average weight of the newest loss (0.3 for short tests: less lag)")
    parser.add_argument("--rules", default="steepest,valley", help="rules whose suggestions are trained")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--spacing", type=int, default=2, choices=[1, 2])
    parser.add_argument("--out", default="benchmarks/lr_search.md", help="Markdown file for the table")
    args = parser.parse_args()

    base = ["data.spacing=" + str(args.spacing), f"train.epochs={args.epochs}", "train.patience=0",
            f"train.num_threads={args.threads}"]
    lines = [f"# LR search on the demo data ({date.today()}, {platform.processor() or platform.machine()}, "
             f"{args.threads} thread(s))", "",
             f"Budget {args.epochs} epochs per training, {args.spacing} mm slices, range test {args.steps} steps "
             f"from {args.start_lr:g} to {args.end_lr:g}, smoothing {args.smoothing:g}.", "",
             "| optimizer | grid lrs: val Dice | best grid lr | best grid Dice | rule | suggested lr "
             "| Dice at suggestion | Dice gap | search s | grid s | search / grid |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n.strip() for n in args.optimizers.split(",")]:
            cfg = load_config("segtune/configs/demo.yaml", base + [f"optimizer.name={name}"])
            data = load_data(cfg)
            grid = {}
            grid_seconds = 0.0
            for lr in GRIDS[name]:
                run_cfg = load_config("segtune/configs/demo.yaml", base + [f"optimizer.name={name}",
                                                                         f"optimizer.lr={lr}"])
                dice, seconds = _train_dice(run_cfg, data, Path(tmp) / f"{name}-{lr:g}")
                grid[lr], grid_seconds = dice, grid_seconds + seconds
                print(f"{name} lr {lr:g}: val Dice {dice:.4f} ({seconds:.0f} s)", flush=True)
            curve = lr_range_test(cfg, data=data, n_steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr,
                                  smoothing=args.smoothing)
            best_lr = max(grid, key=grid.get)
            for rule in args.rules.split(","):
                lr = curve.suggestions[rule]
                at = load_config("segtune/configs/demo.yaml", base + [f"optimizer.name={name}", f"optimizer.lr={lr:.3g}"])
                dice, _ = _train_dice(at, data, Path(tmp) / f"{name}-{rule}")
                print(f"{name}: range test {curve.seconds:.0f} s ({curve.stopped}), {rule} {lr:.3g} "
                      f"-> val Dice {dice:.4f}; best grid lr {best_lr:g} -> {grid[best_lr]:.4f}", flush=True)
                lines.append(
                    f"| {name} | {', '.join(f'{g:g}: {d:.3f}' for g, d in grid.items())} | {best_lr:g} "
                    f"| {grid[best_lr]:.4f} | {rule} | {lr:.3g} | {dice:.4f} | {dice - grid[best_lr]:+.4f} "
                    f"| {curve.seconds:.0f} | {grid_seconds:.0f} | {curve.seconds / grid_seconds:.1%} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
