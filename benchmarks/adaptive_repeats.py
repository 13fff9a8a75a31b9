"""Adaptive repeats (racing) against fixed repeats: the runs each spends and whether they pick the same winner.

Six configurations of the demo at 2 mm (Adam at six learning rates) are each trained once per
seed 0..4, a pool of 30 runs; their validation Dice (the study objective ``val.dice_mean``) is
kept. Both rules are then replayed on the pool, so that every comparison is on the same numbers:

- **fixed**: every configuration gets 5 seeds (30 runs); the winner is the best mean;
- **adaptive**: ``repeats: {min: 2, max: 5}``, decided by :func:`segtune.study.racing.next_seed`,
  the very function a study's trials call before each extra seed, against the leader so far.

Racing depends on the order in which configurations arrive (the first one has no leader and
trains 5 seeds; the leader changes as trials complete) and on which seeds come first, so each of
5 "study seeds" shuffles the order of the configurations and the order of the seeds (the same
seed order for every configuration, so seeds stay paired). Printed: runs spent, the share of the
fixed rule's runs, each rule's winner, and how often they agree. The goal: the same decision in at
least 4 of 5 at no more than 60 % of the runs.

Usage::

    python benchmarks/adaptive_repeats.py                      # trains the pool (minutes on 2 cores)
    python benchmarks/adaptive_repeats.py --epochs 6 --pool /tmp/pool.json   # reuse / extend a pool
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from segtune.config import build_config, read_yaml
from segtune.study.demo import demo_config_path
from segtune.study.racing import next_seed
from segtune.study.spec import Racing
from segtune.training.loop import train

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = range(5)
RACING = Racing(min=2, max=5)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def train_pool(epochs: int, threads: int, pool: dict[str, dict[str, float]], path: Path) -> float:
    """Train every (lr, seed) missing from ``pool``, saving it after each run; returns the seconds spent."""
    base = read_yaml(demo_config_path())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for lr in LRS:
            for seed in SEEDS:
                if str(seed) in pool.setdefault(str(lr), {}):
                    continue
                config = build_config(base, [f"optimizer.lr={lr}", f"seed={seed}", "data.spacing=2",
                                             f"train.epochs={epochs}", "train.patience=0", "scheduler.name=none",
                                             f"train.num_threads={threads}", "metrics.surface=false"])
                summary = train(config, out_dir=Path(tmp) / f"{lr}-{seed}", verbose=False).summary
                pool[str(lr)][str(seed)] = summary["val"]["dice_mean"]
                path.write_text(json.dumps(pool, indent=1))
                print(f"  lr {lr:g} seed {seed}: val Dice {pool[str(lr)][str(seed)]:.4f}", flush=True)
    return time.perf_counter() - t0


def fixed_rule(pool: dict[str, dict[str, float]]) -> tuple[str, int]:
    means = {lr: statistics.fmean(v[str(s)] for s in SEEDS) for lr, v in pool.items()}
    return max(means, key=means.get), len(pool) * len(SEEDS)


def adaptive_rule(pool: dict[str, dict[str, float]], study_seed: int) -> tuple[str, int, dict[str, int]]:
    """Replay racing on the pool in the order ``study_seed`` draws; returns the winner, the runs, the runs per lr."""
    rng = random.Random(study_seed)
    order = list(pool)
    rng.shuffle(order)
    seed_order = list(SEEDS)
    rng.shuffle(seed_order)
    completed: list[tuple[int, float, dict[int, float]]] = []
    spent = {}
    for number, lr in enumerate(order):
        ours: dict[int, float] = {}
        for k, seed in enumerate(seed_order):
            if k >= RACING.min and not next_seed(ours, completed, racing=RACING, maximize=True).more:
                break
            ours[seed] = pool[lr][str(seed)]
        completed.append((number, statistics.fmean(ours.values()), ours))
        spent[lr] = len(ours)
    best = max(completed, key=lambda t: (t[1], -t[0]))
    return order[best[0]], sum(spent.values()), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run of the pool (few: compute is scarce)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--pool", type=Path, default=Path("adaptive_repeats_pool.json"),
                        help="the pool's results, read if present and completed")
    args = parser.parse_args()
    pool = json.loads(args.pool.read_text()) if args.pool.is_file() else {}
    print(f"CPU: {cpu_name()}; pool: {len(LRS)} configurations x {len(SEEDS)} seeds, demo 2 mm, "
          f"{args.epochs} epochs, {args.threads} thread(s)")
    seconds = train_pool(args.epochs, args.threads, pool, args.pool)
    print(f"pool trained in {seconds:.0f} s (runs already in {args.pool} are not trained again)")
    for lr in LRS:
        values = [pool[str(lr)][str(s)] for s in SEEDS]
        print(f"  lr {lr:g}: val Dice {statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f} (sd over seeds)")
    winner, fixed_runs = fixed_rule(pool)
    print(f"\nfixed 5 repeats: {fixed_runs} runs, winner lr {float(winner):g}")
    agree, ratios = 0, []
    for study_seed in range(5):
        chosen, runs, spent = adaptive_rule(pool, study_seed)
        agree += chosen == winner
        ratios.append(runs / fixed_runs)
        per_lr = ", ".join(f"{float(lr):g}: {n}" for lr, n in spent.items())
        print(f"study seed {study_seed}: adaptive {runs} runs ({runs / fixed_runs:.0%}), winner lr {float(chosen):g} "
              f"({'same' if chosen == winner else 'DIFFERENT'}); seeds per lr in arrival order {per_lr}")
    print(f"\nsame decision in {agree} of 5 at {statistics.fmean(ratios):.0%} of the fixed rule's runs on average "
          f"(goal: >= 4 of 5 at <= 60 %)")


if __name__ == "__main__":
    main()
