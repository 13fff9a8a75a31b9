"""Adaptive repeats (racing) against fixed repeats: the runs each spends and whether they pick the same winner.

Six configurations of the demo at 2 mm are each trained once per seed 0..4, a pool of 30 runs;
their validation Dice (the study objective ``val.dice_mean``) is kept in a JSON file (``--pool``,
read again instead of training). ``--configs`` chooses the six: ``lr`` (Adam at six learning
rates, 1e-4 to 3e-2: several near-equal settings, the hard case), ``decades`` (Adam at 1e-6 to
1e-1, the order-of-magnitude search users start with: half of them clearly worse) or ``demo-study`` (the
``segtune demo`` study's own space, Adam 3e-3 and RMSprop 1e-3 with the dice_ce and dice losses,
plus SGD at lr 0.1 with its default momentum, with both losses: the comparison a user of the demo
makes). Both rules are then replayed on the pool, so that every comparison is on the same numbers:

- **fixed**: every configuration gets 5 seeds (30 runs); the winner is the best mean, and the
  configurations its own paired verdicts cannot tell from it (:func:`segtune.study.stats.ranking`)
  are its tie group;
- **adaptive**: ``repeats: {min: 2, max: 5, alpha, margin}``, decided by
  :func:`segtune.study.racing.race`, the very function a study's worker loop calls before queuing
  each racing round: every configuration trains 2 seeds, then rounds of one seed go to the
  configurations still in the race. Its winner is the best mean, as the report's "Best" is.

A race depends on which seeds come first, so each of 5 "study seeds" shuffles the order of the
seeds (the same order for every configuration, so seeds stay paired). Printed: runs spent, the
share of the fixed rule's runs, each rule's winner, whether they agree (the same winner; a winner
in the fixed rule's tie group), and the seeds each configuration got. The goal: the same decision
in at least 4 of 5 at no more than 60 % of the runs.

Usage::

    python benchmarks/adaptive_repeats.py                  # the committed 4-epoch pool: no training
    python benchmarks/adaptive_repeats.py --configs demo-study   # the committed demo-study pool
    python benchmarks/adaptive_repeats.py --configs decades --epochs 10 --pool benchmarks/adaptive_repeats_pool_decades_10ep.json
    python benchmarks/adaptive_repeats.py --epochs 10 --pool /tmp/pool10.json   # train (or extend) a pool
    python benchmarks/adaptive_repeats.py --alpha 0.2 --margin 0.02             # another race
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from segtune.config import build_config, read_yaml
from segtune.study.demo import demo_config_path
from segtune.study.racing import race
from segtune.study.spec import Racing
from segtune.study.stats import ranking
from segtune.training.loop import train

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
DECADES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SEEDS = range(5)
# A pool's configurations: its key in the pool's JSON -> the overrides of demo.yaml that make it.
CONFIGS: dict[str, dict[str, list[str]]] = {
    "lr": {str(lr): [f"optimizer.lr={lr}"] for lr in LRS},
    "decades": {str(lr): [f"optimizer.lr={lr}"] for lr in DECADES},
    "demo-study": {f"{opt} {lr:g}, {loss}": [f"optimizer.name={opt}", f"optimizer.lr={lr}", f"loss.name={loss}"]
                   for opt, lr in (("adam", 3e-3), ("rmsprop", 1e-3), ("sgd", 0.1)) for loss in ("dice_ce", "dice")},
}
POOLS = {"lr": "adaptive_repeats_pool.json", "decades": "adaptive_repeats_pool_decades.json",
         "demo-study": "adaptive_repeats_pool_demo_study.json"}


def label(key: str) -> str:
    """A configuration's name in print: ``lr 0.001`` for the lr pool, its own key otherwise."""
    try:
        return f"lr {float(key):g}"
    except ValueError:
        return key


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def train_pool(configs: dict[str, list[str]], epochs: int, threads: int, pool: dict[str, dict[str, float]],
               path: Path) -> float:
    """Train every (configuration, seed) missing from ``pool``, saving it after each run; returns the seconds spent."""
    base = read_yaml(demo_config_path())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, overrides) in enumerate(configs.items()):
            for seed in SEEDS:
                if str(seed) in pool.setdefault(key, {}):
                    continue
                config = build_config(base, [*overrides, f"seed={seed}", "data.spacing=2",
                                             f"train.epochs={epochs}", "train.patience=0", "scheduler.name=none",
                                             f"train.num_threads={threads}", "metrics.surface=false"])
                summary = train(config, out_dir=Path(tmp) / f"{i}-{seed}", verbose=False).summary
                pool[key][str(seed)] = summary["val"]["dice_mean"]
                path.write_text(json.dumps(pool, indent=1))
                print(f"  {label(key)} seed {seed}: val Dice {pool[key][str(seed)]:.4f}", flush=True)
    return time.perf_counter() - t0


def fixed_rule(pool: dict[str, dict[str, float]]) -> tuple[str, int, list[str]]:
    """The best mean over every seed, the runs, and the fixed rule's tie group (best first)."""
    means = {key: statistics.fmean(v[str(s)] for s in SEEDS) for key, v in pool.items()}
    ranked = sorted(pool, key=lambda key: -means[key])
    _, steps = ranking([(i, {s: pool[key][str(s)] for s in SEEDS}, {}) for i, key in enumerate(ranked)])
    tied = [ranked[0]] + [ranked[v.b] for v in itertools.takewhile(lambda v: v is None or v.sign != ">", steps)
                          if v is not None and v.sign == "="]
    return ranked[0], len(pool) * len(SEEDS), tied


def adaptive_rule(pool: dict[str, dict[str, float]], study_seed: int, racing: Racing) -> tuple[str, dict[str, int]]:
    """Replay a racing study on the pool with the seed order ``study_seed`` draws: every configuration
    trains ``min`` seeds, then each round the configurations :func:`race` names train one more.
    Returns the winner (the best mean) and the seeds per configuration."""
    order = list(SEEDS)
    random.Random(study_seed).shuffle(order)
    keys = list(pool)
    table: dict[int, dict[int, float]] = {c: {} for c in range(len(keys))}
    for c in table:  # the sampled trials: min seeds each
        for k in range(racing.min):
            table[c][k] = pool[keys[c]][str(order[k])]
    while not (state := race(table, racing, maximize=True)).over:
        for c in state.more:  # one racing round: a queued trial per configuration
            table[c][len(table[c])] = pool[keys[c]][str(order[len(table[c])])]
    best = max(table, key=lambda c: (statistics.fmean(table[c].values()), -c))
    return keys[best], {keys[c]: len(v) for c, v in table.items()}


def replay(pool: dict[str, dict[str, float]], racing: Racing, *, verbose: bool) -> tuple[int, int, float]:
    """Both rules on the pool for study seeds 0..4: (same winner, winner in the fixed tie group, mean share of runs)."""
    winner, fixed_runs, tied = fixed_rule(pool)
    same, in_group, shares = 0, 0, []
    for study_seed in range(5):
        chosen, spent = adaptive_rule(pool, study_seed, racing)
        runs = sum(spent.values())
        same += chosen == winner
        in_group += chosen in tied
        shares.append(runs / fixed_runs)
        if verbose:
            per_config = "; ".join(f"{label(key)}: {n}" for key, n in spent.items())
            print(f"study seed {study_seed}: adaptive {runs} runs ({runs / fixed_runs:.0%}), winner {label(chosen)} "
                  f"({'same' if chosen == winner else 'in the tie group' if chosen in tied else 'DIFFERENT'}); "
                  f"seeds per configuration {per_config}")
    return same, in_group, statistics.fmean(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run of the pool (few: compute is scarce)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--configs", choices=sorted(CONFIGS), default="lr",
                        help="the pool's six configurations: Adam learning rates near the best (lr), six decades of them "
                             "(decades), or the demo study's space plus SGD (demo-study)")
    parser.add_argument("--pool", type=Path, default=None,
                        help="the pool's results, read if present (runs missing from it are trained); "
                             "default: the committed pool of --configs next to this script")
    parser.add_argument("--alpha", type=float, default=0.05, help="racing's error rate")
    parser.add_argument("--margin", type=float, default=0.0, help="racing's practical-tie margin (Dice)")
    args = parser.parse_args()
    configs = CONFIGS[args.configs]
    path = args.pool or Path(__file__).with_name(POOLS[args.configs])
    pool = json.loads(path.read_text()) if path.is_file() else {}
    print(f"CPU: {cpu_name()}; load average {Path('/proc/loadavg').read_text().split()[:3]}; pool {args.configs}: "
          f"{len(configs)} configurations x {len(SEEDS)} seeds, demo 2 mm, {args.epochs} epochs, "
          f"{args.threads} thread(s)")
    seconds = train_pool(configs, args.epochs, args.threads, pool, path)
    print(f"pool trained in {seconds:.0f} s (runs already in {path} are not trained again)")
    for key in configs:
        values = [pool[key][str(s)] for s in SEEDS]
        print(f"  {label(key)}: val Dice {statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f} "
              "(sd over seeds)")
    winner, fixed_runs, tied = fixed_rule(pool)
    print(f"\nfixed 5 repeats: {fixed_runs} runs, winner {label(winner)}; its paired verdicts tie it with "
          f"{'; '.join(label(key) for key in tied[1:]) or 'none'}")
    racing = Racing(min=2, max=5, alpha=args.alpha, margin=args.margin)
    print(f"racing {{min 2, max 5, alpha {args.alpha:g}, margin {args.margin:g}}}:")
    same, in_group, share = replay(pool, racing, verbose=True)
    print(f"\nsame winner in {same} of 5, a winner in the fixed rule's tie group in {in_group} of 5, at {share:.0%} "
          f"of the fixed rule's runs on average (goal: the same decision in >= 4 of 5 at <= 60 %)")
    print("\nother races on the same pool (same winner / in the tie group / runs):")
    for alpha, margin in itertools.product((0.05, 0.2), (0.0, 0.02, 0.05)):
        same, in_group, share = replay(pool, Racing(min=2, max=5, alpha=alpha, margin=margin), verbose=False)
        print(f"  alpha {alpha:g}, margin {margin:g}: {same} / {in_group} of 5, {share:.0%}")


if __name__ == "__main__":
    main()
