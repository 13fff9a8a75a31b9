"""Study efficiency: how much compute a pruned study needs to find a grid's best configuration.

1. An exhaustive grid (optimizer x learning rate x loss, 24 cells) on the demo data, each cell
   trained to the same fixed budget, no pruning: its best validation Dice is the reference.
2. Pruned studies over the same 24 cells (TPE or random sampling with successive halving or
   hyperband), one per study seed: the compute (training epochs and seconds) spent until the
   first trial within ``--tolerance`` of the grid's best, as a share of the grid's compute.
3. Trials per hour with 1 worker of 2 threads against 2 workers of 1 thread (8 trials of the
   full budget each, results never reused).

A pruned study that draws a configuration again reuses its result at no cost (``reuse_results``),
so a study may draw more than the 24 cells (``--n-trials``, default 48).

All studies are real ``segtune study`` runs (SQLite storage in a temporary directory).

Usage::

    python benchmarks/study_efficiency.py                        # about 25 minutes on 2 CPU cores
    python benchmarks/study_efficiency.py --epochs 8 --seeds 0,1,2 --out benchmarks/study_efficiency.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import optuna
import torch
import yaml

from segtune.study import run_study
from segtune.study.records import EPOCHS, PARAMS, SAME_AS, SECONDS

SPACE = {
    "optimizer.name": ["adam", "rmsprop", "sgd", "adamw"],
    "optimizer.lr": {"when": "optimizer.name", "cases": {
        "adam": [3e-4, 1e-3, 3e-3], "rmsprop": [1e-4, 3e-4, 1e-3],
        "sgd": [0.01, 0.03, 0.1], "adamw": [3e-4, 1e-3, 3e-3]}},
    "loss.name": ["dice_ce", "dice"],
}


def base_config(epochs: int, spacing: int, smoke: bool) -> dict:
    data = ({"source": "synthetic", "n_train": 16, "n_val": 8, "n_test": 8, "size": 32} if smoke
            else {"source": "demo", "spacing": spacing})
    return {"name": "bench", "seed": 0, "data": data,
            "model": {"name": "monai_unet", "channels": [16, 32, 64, 128], "num_res_units": 2, "norm": "instance"},
            "optimizer": {"name": "adam"}, "augment": {"name": "flip"},
            "train": {"epochs": epochs, "batch_size": 8, "patience": 0}}


def run(tmp: Path, name: str, study: dict, *, n_workers: int = 1, num_threads: int | None = None) -> optuna.Study:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **study}))
    return run_study(path, study_dir=tmp / name, n_workers=n_workers, num_threads=num_threads)


def compute(trials: list[optuna.trial.FrozenTrial]) -> tuple[int, float]:
    """Training epochs and seconds spent by ``trials`` (a reused result costs nothing)."""
    trained = [t for t in trials if SAME_AS not in t.user_attrs]
    return (sum(int(t.user_attrs.get(EPOCHS, 0)) for t in trained),
            sum(float(t.user_attrs.get(SECONDS, 0.0)) for t in trained))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="the fixed budget of every grid cell")
    parser.add_argument("--spacing", type=int, default=2, choices=[1, 2])
    parser.add_argument("--seeds", default="0,1,2", help="study seeds of the pruned studies")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--methods", default="tpe+successive_halving,random+hyperband")
    parser.add_argument("--n-trials", type=int, default=48, help="trials per pruned study (a repeated "
                        "configuration reuses its result, so a study may draw more than the 24 cells)")
    parser.add_argument("--min-epochs", type=int, default=2, help="the pruners' first rung")
    parser.add_argument("--reduction-factor", type=int, default=3, help="the pruners' 1/keep at each rung")
    parser.add_argument("--no-tph", action="store_true", help="skip the trials-per-hour comparison")
    parser.add_argument("--out", default="benchmarks/study_efficiency.md")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data: checks the script in a minute")
    args = parser.parse_args()
    base = base_config(args.epochs, args.spacing, args.smoke)
    lines = [f"# Study efficiency ({date.today()}, {platform.machine()}, {torch.get_num_threads()} threads)", "",
             f"{'Synthetic data' if args.smoke else f'Demo data at {args.spacing} mm'}; 24 cells (optimizer x lr x loss), "
             f"{args.epochs} epochs each; pruners from epoch {args.min_epochs}, reduction factor "
             f"{args.reduction_factor}; up to {args.n_trials} trials per pruned study.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        grid = run(tmp, "grid", {"base": base, "method": "grid", "space": SPACE})
        grid_wall = time.perf_counter() - t0
        done = [t for t in grid.trials if t.state == optuna.trial.TrialState.COMPLETE]
        grid_epochs, grid_seconds = compute(grid.trials)
        best = max(t.value for t in done)
        ranked = sorted(done, key=lambda t: -t.value)
        near = [t for t in ranked if t.value >= best - args.tolerance]
        lines += [f"Exhaustive grid: {len(done)} cells, best val Dice {best:.4f} ({grid.best_trial.user_attrs.get(PARAMS)}), "
                  f"{grid_epochs} epochs, {grid_seconds:.0f} s of training, {grid_wall:.0f} s wall. "
                  f"{len(near)} cell(s) within {args.tolerance} of the best. The top five: "
                  + "; ".join(f"{t.value:.4f} {t.user_attrs.get(PARAMS)}" for t in ranked[:5]) + ".", "",
                  "| method | study seed | trials to reach best - tol | epochs | share of grid epochs | seconds | "
                  "share of grid seconds | best found |", "|---|---|---|---|---|---|---|---|"]
        for method in args.methods.split(","):
            sampler, pruner = method.split("+")
            shares, shares_hit = [], []
            for seed in map(int, args.seeds.split(",")):
                study = run(tmp, f"{sampler}-{pruner}-{seed}", {
                    "base": base, "method": sampler, "seed": seed, "n_trials": args.n_trials, "space": SPACE,
                    "pruner": {"name": pruner, "min_epochs": args.min_epochs, "reduction_factor": args.reduction_factor}})
                trials = sorted(study.trials, key=lambda t: t.number)
                hit = next((i for i, t in enumerate(trials) if t.value is not None
                            and t.state == optuna.trial.TrialState.COMPLETE and t.value >= best - args.tolerance), None)
                spent = trials if hit is None else trials[:hit + 1]
                epochs, seconds = compute(spent)
                shares.append(epochs / grid_epochs)
                found = max((t.value for t in trials if t.value is not None), default=float("nan"))
                if hit is not None:
                    shares_hit.append(epochs / grid_epochs)
                lines.append(f"| {method} | {seed} | {'not reached' if hit is None else hit + 1} | {epochs} | "
                             f"{epochs / grid_epochs:.0%} | {seconds:.0f} | {seconds / grid_seconds:.0%} | {found:.4f} |")
            lines.append(f"| {method} | mean | {len(shares_hit)} of {len(shares)} reached | | {statistics.fmean(shares):.0%} "
                         f"| | | |")
        lines += ["", "| workers x threads | trials | wall seconds | trials per hour |", "|---|---|---|---|"]
        for n_workers, threads in () if args.no_tph else ((1, 2), (2, 1)):
            t0 = time.perf_counter()
            study = run(tmp, f"tph-{n_workers}x{threads}", {
                "base": base, "method": "random", "seed": 0, "n_trials": 8, "space": SPACE, "reuse_results": False},
                n_workers=n_workers, num_threads=threads)
            wall = time.perf_counter() - t0
            n = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
            lines.append(f"| {n_workers} x {threads} | {n} | {wall:.0f} | {3600 * n / wall:.0f} |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
