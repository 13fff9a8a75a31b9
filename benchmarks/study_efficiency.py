"""Study efficiency: how reliably, and at what compute, a study finds the grid's best configuration.

1. **Cache of real runs.** Every cell of a 24-cell grid (optimizer x learning rate x loss, demo
   data) is trained with 3 seeds through segtune's own training (:func:`segtune.training.loop.train`,
   the config built by :func:`segtune.study.space.config_for` as a study builds it). Each run's
   per-epoch validation Dice, its final objective (``val.dice_mean`` of the restored best weights)
   and its seconds per epoch are written to a JSON-lines cache; an interrupted run resumes there.
   "The grid's best" is the cell with the best mean over its 3 seeds.
2. **Replayed studies.** Each method is a real Optuna study whose sampler and pruner are built by
   the registries ``segtune study`` uses (``SAMPLERS.build``, ``PRUNERS.build``, from a study tree
   validated by :func:`segtune.study.spec.parse_study`), whose trials are drawn by the study's own
   :class:`~segtune.study.space.Space`. Its objective replays the cached curve of the drawn cell and
   the trial's training seed epoch by epoch, reporting each epoch to the real pruner, and counts the
   epochs and seconds the run would have cost. As in ``segtune study``: the training seed of
   repeat r is ``base.seed + r`` (the study seed s runs with ``base.seed = s mod 3``, so the ten
   studies see all three seeds' luck), the objective is the mean over repeats, the pruner follows
   the first repeat, and a configuration drawn again takes its finished result at no cost.
3. **The verdict.** A study is given 25 % of the 3-seed grid's compute (epochs); its answer is its
   best completed trial at the last trial that fits the budget. It succeeds when that cell's
   3-seed mean is within ``--tolerance`` of the grid's best mean. 10 study seeds per method.
4. **Real studies** (``--real N``): the chosen method as real ``segtune study`` runs, trained, not
   replayed, checked against the cache's grid.

Usage::

    python benchmarks/study_efficiency.py                       # the cache: about 10 min on 2 idle cores
    python benchmarks/study_efficiency.py --real 2 --out benchmarks/study_efficiency.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from segtune.study import run_study
from segtune.study.objective import DataCache
from segtune.study.records import EPOCHS, PARAMS, SAME_AS, SECONDS
from segtune.study.space import Space, config_for
from segtune.study.spec import PRUNERS, SAMPLERS, parse_study
from segtune.training.loop import train

SPACE = {
    "optimizer.name": ["adam", "rmsprop", "sgd", "adamw"],
    "optimizer.lr": {"when": "optimizer.name", "cases": {
        "adam": [3e-4, 1e-3, 3e-3], "rmsprop": [1e-4, 3e-4, 1e-3],
        "sgd": [0.01, 0.03, 0.1], "adamw": [3e-4, 1e-3, 3e-3]}},
    "loss.name": ["dice_ce", "dice"],
}
N_SEEDS = 3  # training seeds per cell in the cache
CURVE = "val_dice_mean"  # the per-epoch objective the pruners see


def base_config(epochs: int, spacing: int, smoke: bool, threads: int, channels: list[int], res_units: int) -> dict:
    data = ({"source": "synthetic", "n_train": 16, "n_val": 8, "n_test": 8, "size": 32} if smoke
            else {"source": "demo", "spacing": spacing})
    return {"name": "bench", "seed": 0, "data": data,
            "model": {"name": "monai_unet", "channels": channels, "num_res_units": res_units, "norm": "instance"},
            "optimizer": {"name": "adam"}, "augment": {"name": "flip"},
            "train": {"epochs": epochs, "batch_size": 8, "patience": 0, "num_threads": threads}}


def cell_key(cell: dict[str, Any]) -> str:
    return json.dumps(cell, sort_keys=True)


# ---------------------------------------------------------------- 1. the cache of real runs

def fill_cache(path: Path, base: dict, space: Space, tmp: Path, *, order: str = "forward") -> dict[tuple[str, int], dict]:
    """Train every (cell, seed) missing from the cache at ``path``; returns the whole cache.

    Processes filling one cache at once each take another ``order``: forward, reverse or middle.
    """
    data = DataCache()
    todo = [(c, s) for c in space.cells() for s in range(N_SEEDS)]
    half = len(todo) // 2
    todo = {"forward": todo, "reverse": todo[::-1], "middle": todo[half:] + todo[:half]}[order]
    for i, (cell, seed) in enumerate(todo):
        cache = read_cache(path)  # another process may fill the same cache from the other end
        if (cell_key(cell), seed) in cache:
            continue
        config = config_for(base, space.changes(cell), seed=seed, name="cell")
        t0 = time.perf_counter()
        result = train(config, out_dir=tmp / f"run-{i}", data=data.get(config), verbose=False)
        row = {"cell": cell, "seed": seed, "curve": [float(r[CURVE]) for r in result.history],
               "epoch_seconds": [float(r["seconds"]) for r in result.history],
               "value": float(result.summary["val"]["dice_mean"]), "seconds": time.perf_counter() - t0,
               "loadavg": Path("/proc/loadavg").read_text().split()[0]}
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{len(todo)}] {cell} seed {seed}: {row['value']:.4f} in {row['seconds']:.1f} s", flush=True)
    return read_cache(path)


def read_cache(path: Path) -> dict[tuple[str, int], dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {(cell_key(r["cell"]), r["seed"]): r for r in rows}


@dataclass
class Grid:
    """The 3-seed grid read from the cache."""

    cache: dict[tuple[str, int], dict]
    means: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        cells = sorted({k for k, _ in self.cache})
        self.means = {c: statistics.fmean(self.cache[c, s]["value"] for s in range(N_SEEDS)) for c in cells}

    @property
    def best(self) -> float:
        return max(self.means.values())

    @property
    def epochs(self) -> int:
        return sum(len(r["curve"]) for r in self.cache.values())

    @property
    def seconds(self) -> float:
        return sum(sum(r["epoch_seconds"]) for r in self.cache.values())

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.means.items(), key=lambda kv: -kv[1])


# ---------------------------------------------------------------- 2. studies replayed over the cache

@dataclass(frozen=True)
class Method:
    """One way to run a study: the study file's ``method``, ``pruner`` and ``repeats``."""

    label: str
    method: Any = "tpe"
    pruner: Any = "none"
    repeats: Any = 1
    within: str | None = None  # the pruner compares a trial only with trials of its own value of this path
    patience: int | None = None  # the pruner acts only after this many epochs without improvement

    def tree(self, base: dict, seed: int, n_trials: int) -> dict:
        return {"name": "replay", "base": {**base, "seed": seed % N_SEEDS}, "method": self.method, "seed": seed,
                "n_trials": n_trials, "space": SPACE, "pruner": self.pruner, "repeats": self.repeats}


@dataclass
class Replay:
    """The outcome of one replayed study: after each trial, the compute spent and the answer."""

    epochs: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)  # the best completed trial's cell
    trained: list[int] = field(default_factory=list)  # distinct configurations trained (or pruned)

    def at_budget(self, budget: int) -> tuple[str | None, int, int]:
        """The answer, the epochs spent and the configurations trained when the next trial would pass ``budget``."""
        fits = [i for i, e in enumerate(self.epochs) if e <= budget]
        if not fits:
            return None, 0, 0
        i = fits[-1]
        return self.answers[i], self.epochs[i], self.trained[i]


class _GroupView:
    """A study seen through ``keep``: its trials filtered, everything else the study's own."""

    def __init__(self, study: optuna.Study, keep) -> None:
        self._study, self._keep = study, keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if self._keep(t)]


class WithinGroup(optuna.pruners.BasePruner):
    """``inner`` judging a trial only against the trials with its value of ``path`` (e.g. its optimizer)."""

    def __init__(self, inner: optuna.pruners.BasePruner, path: str) -> None:
        self._inner, self._path = inner, path

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        group = trial.user_attrs.get(PARAMS, {}).get(self._path)
        view = _GroupView(study, lambda t: t.user_attrs.get(PARAMS, {}).get(self._path) == group)
        return self._inner.prune(view, trial)  # type: ignore[arg-type]


def replay_study(method: Method, seed: int, base: dict, cache: dict[tuple[str, int], dict], *,
                 budget: int, n_trials: int) -> Replay:
    """Run ``method``'s study, with study seed ``seed``, over the cached runs until it has spent ``budget`` epochs."""
    from segtune.study.objective import _finished_twin, replay_twin
    from segtune.study.workers import _work_left

    spec, space = parse_study(method.tree(base, seed, n_trials), origin=method.label)
    sampler = SAMPLERS.build(spec.method.name, spec.method.options, space, spec.seed)
    max_epochs = config_for(spec.base, {}).train.length
    pruner = PRUNERS.build(spec.pruner.name, spec.pruner.options, max_epochs)
    if method.patience is not None:
        pruner = optuna.pruners.PatientPruner(pruner, patience=method.patience)
    if method.within is not None:
        pruner = WithinGroup(pruner, method.within)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, pruner=pruner, direction=spec.resolved_direction)
    out, spent = Replay(), [0, 0.0]

    def charge(row: dict, n: int) -> None:
        spent[0] += n
        spent[1] += sum(row["epoch_seconds"][:n])

    def objective(trial: optuna.Trial) -> float:
        values = space.sample_grid(trial) if spec.method.name == "grid" else space.sample(trial)
        trial.set_user_attr(PARAMS, values)
        twin = _finished_twin(trial, values) if spec.reuse_results else None
        if twin is not None:
            value = replay_twin(trial, twin)
            if value is not None:
                return value
        replayed = set(twin.intermediate_values) if twin is not None else set()
        scores: dict[int, float] = {}
        for repeat in range(spec.max_repeats):
            run_seed = (spec.base["seed"] + repeat) % N_SEEDS
            row = cache[cell_key(values), run_seed]
            if repeat == 0:  # the pruner follows the first repeat, epoch by epoch
                for epoch, value in enumerate(row["curve"], start=1):
                    charge(row, 1)
                    if epoch not in replayed:
                        trial.report(value, epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            else:
                charge(row, len(row["curve"]))
            scores[run_seed] = row["value"]
        trial.set_user_attr("per_seed", {int(k): v for k, v in scores.items()})
        return statistics.fmean(scores.values())

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        best = max(done, key=lambda t: (t.value, -t.number), default=None)
        out.epochs.append(spent[0])
        out.seconds.append(spent[1])
        out.answers.append(None if best is None else cell_key(best.user_attrs[PARAMS]))
        out.trained.append(len({cell_key(t.user_attrs[PARAMS]) for t in study.get_trials(deepcopy=False)
                                if SAME_AS not in t.user_attrs and PARAMS in t.user_attrs}))
    # the trials as `segtune study` runs them: until n_trials distinct configurations (the grid: every
    # cell) or MAX_DRAWS x n_trials draws, here also until the budget is spent
    while _work_left(spec, space, study)[0] and spent[0] <= budget:
        study.optimize(objective, n_trials=1, callbacks=[record], catch=())
    return out


# ---------------------------------------------------------------- 3. the verdicts

def _methods() -> list[Method]:
    """The methods compared: samplers, pruners (first rungs, reduction factors) and repeats.

    TPE is measured with fewer pruners: it redraws trained configurations (free, but each draw
    costs its own fitting), so each of its replays takes about a minute on a busy machine.
    """
    sh, median4 = "successive_halving", {"name": "median", "min_epochs": 4}
    out = []
    for s in ("random", "grid"):
        out += [Method(s, s)]
        out += [Method(f"{s}+median(min {m})", s, {"name": "median", "min_epochs": m}) for m in (2, 4, 6, 8)]
        out += [Method(f"{s}+{sh}(min {m}, rf {rf})", s, {"name": sh, "min_epochs": m, "reduction_factor": rf})
                for m in (1, 2, 4, 6) for rf in (2, 3)]
        out += [Method(f"{s}+hyperband(min {m}, rf 3)", s, {"name": "hyperband", "min_epochs": m}) for m in (1, 2, 4)]
        out += [Method(f"{s}+repeats {r}{label}", s, p, r) for r in (2, 3)
                for label, p in (("", "none"), (" + median(min 4)", median4))]
    for s in ("random", "grid"):
        out += [Method(f"{s}+median(min {m}) within optimizer", s, {"name": "median", "min_epochs": m},
                       within="optimizer.name") for m in (2, 4)]
        out += [Method(f"{s}+{sh}(min {m}, rf 2) within optimizer", s, {"name": sh, "min_epochs": m,
                       "reduction_factor": 2}, within="optimizer.name") for m in (1, 2, 4)]
        out += [Method(f"{s}+median(min {m}), patience 2", s, {"name": "median", "min_epochs": m}, patience=2)
                for m in (2, 4)]
    out += [Method("tpe", "tpe"), Method("tpe+median(min 4)", "tpe", median4),
            Method(f"tpe+{sh}(min 2, rf 3)", "tpe", {"name": sh, "min_epochs": 2}),
            Method("tpe+hyperband(min 2, rf 3)", "tpe", {"name": "hyperband", "min_epochs": 2})]
    return out


@dataclass
class Verdict:
    method: Method
    hits: int
    shares: list[float]  # epochs spent at the answer, of the grid's
    trials: list[int]
    gaps: list[float]  # the grid's best mean minus the answer's mean


def judge(method: Method, grid: Grid, base: dict, seeds: list[int], *, share: float, tolerance: float,
          n_trials: int) -> Verdict:
    budget = int(share * grid.epochs)
    hits, shares, trials, gaps = 0, [], [], []
    for seed in seeds:
        answer, epochs, n = replay_study(method, seed, base, grid.cache, budget=budget, n_trials=n_trials).at_budget(budget)
        gap = grid.best - grid.means[answer] if answer is not None else math.inf
        hits += gap <= tolerance
        shares.append(epochs / grid.epochs)
        trials.append(n)
        gaps.append(gap)
    return Verdict(method, hits, shares, trials, gaps)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor() or platform.machine())
    return f"{cpu}, {torch.get_num_threads()} threads, load average {Path('/proc/loadavg').read_text().split()[0]}"


def short(key: str | None) -> str:
    """A cell as ``sgd lr 0.1 dice_ce``."""
    if key is None:
        return "none"
    cell = json.loads(key)
    return f"{cell['optimizer.name']} lr {cell['optimizer.lr']:g} {cell['loss.name']}"


def grid_lines(grid: Grid, tolerance: float) -> list[str]:
    ranked = grid.ranked()
    near = [c for c, m in ranked if m >= grid.best - tolerance]
    rows = ["| rank | cell | mean | " + " | ".join(f"seed {s}" for s in range(N_SEEDS)) + " | best single run? |",
            "|---|---|---|" + "---|" * N_SEEDS + "---|"]
    single = {s: max(grid.means, key=lambda c: grid.cache[c, s]["value"]) for s in range(N_SEEDS)}
    for i, (c, m) in enumerate(ranked[:8], start=1):
        label = short(c)
        runs = " | ".join(f"{grid.cache[c, s]['value']:.4f}" for s in range(N_SEEDS))
        tops = ", ".join(f"seed {s}" for s, t in single.items() if t == c) or ""
        rows.append(f"| {i} | {label} | {m:.4f} | {runs} | {tops} |")
    return [f"Grid: {len(grid.means)} cells x {N_SEEDS} seeds, {grid.epochs} epochs, {grid.seconds:.0f} s of "
            f"training epochs (cache). Best mean {grid.best:.4f}; {len(near)} cell(s) within {tolerance} of it.", "",
            *rows]


def verdict_lines(verdicts: list[Verdict], share: float, tolerance: float) -> list[str]:
    rows = [f"| method | within {tolerance} of the best mean, of {len(verdicts[0].gaps) if verdicts else 0} "
            f"| epochs spent (share of grid) | configurations trained | worst gap |", "|---|---|---|---|---|"]
    for v in sorted(verdicts, key=lambda v: (-v.hits, statistics.fmean(v.shares))):
        rows.append(f"| {v.method.label} | {v.hits} | {statistics.fmean(v.shares):.0%} | "
                    f"{statistics.fmean(v.trials):.0f} | {max(v.gaps):.4f} |")
    return rows


def real_studies(method: Method, base: dict, grid: Grid, seeds: list[int], budget: int, tolerance: float,
                 tmp: Path) -> list[str]:
    """``method`` as real ``segtune study`` runs (trained, not replayed), ``n_trials`` from the replays."""
    rows = ["| study seed | configurations | epochs (share of grid) | answer | its grid mean | gap | the replay's answer |",
            "|---|---|---|---|---|---|---|"]
    for seed in seeds:
        replayed = replay_study(method, seed, base, grid.cache, budget=budget, n_trials=24)
        n = max(1, replayed.at_budget(budget)[2])  # the configurations it trains within the budget
        path = tmp / f"real-{seed}.yaml"
        path.write_text(yaml.safe_dump(method.tree(base, seed, n) | {"name": f"real-{seed}"}))
        study = run_study(path, study_dir=tmp / f"real-{seed}", num_threads=base["train"]["num_threads"])
        trained = [t for t in study.trials if SAME_AS not in t.user_attrs]
        epochs = sum(int(t.user_attrs.get(EPOCHS, 0)) for t in trained)
        answer = cell_key(study.best_trial.user_attrs[PARAMS])
        rows.append(f"| {seed} | {n} | {epochs} ({epochs / grid.epochs:.0%}) | {short(answer)} | "
                    f"{grid.means[answer]:.4f} | {grid.best - grid.means[answer]:.4f} | "
                    f"{short(replayed.at_budget(budget)[0])} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="the fixed budget of every grid cell")
    parser.add_argument("--spacing", type=int, default=2, choices=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="train.num_threads of the cached runs")
    parser.add_argument("--channels", default="8,16,32,64", help="the U-Net's channels (the demo's: 16,32,64,128)")
    parser.add_argument("--res-units", type=int, default=1, help="the U-Net's residual units (the demo's: 2)")
    parser.add_argument("--cache", default="benchmarks/study_efficiency_cache.jsonl")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9", help="study seeds of every method")
    parser.add_argument("--share", type=float, default=0.25, help="each study's budget, of the grid's epochs")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--n-trials", type=int, default=24, help="n_trials of every study (distinct "
                        "configurations; the grid's 24 cells: a study ends at its budget)")
    parser.add_argument("--methods", default="", help="labels to run (separated by ;); default: all")
    parser.add_argument("--real", default="", help="LABEL:SEEDS, e.g. 'tpe:0,1': real studies of that method")
    parser.add_argument("--out", default="")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data: checks the script in minutes")
    args = parser.parse_args()
    base = base_config(args.epochs, args.spacing, args.smoke, args.threads,
                       [int(c) for c in args.channels.split(",")], args.res_units)
    spec, space = parse_study({"name": "grid", "base": base, "method": "grid", "space": SPACE})
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        grid = Grid(fill_cache(Path(args.cache), base, space, Path(tmp)))
        wanted = set(filter(None, args.methods.split(";")))
        methods = [m for m in _methods() if not wanted or m.label in wanted]
        t0 = time.perf_counter()
        verdicts = [judge(m, grid, base, seeds, share=args.share, tolerance=args.tolerance, n_trials=args.n_trials)
                    for m in methods]
        lines = [f"Machine: {machine()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
                 *grid_lines(grid, args.tolerance), "",
                 f"Replayed studies, budget {args.share:.0%} of the grid's epochs ({int(args.share * grid.epochs)}), "
                 f"study seeds {args.seeds} ({time.perf_counter() - t0:.0f} s):", "",
                 *verdict_lines(verdicts, args.share, args.tolerance)]
        if args.real:
            label, _, real_seeds = args.real.partition(":")
            method = next(m for m in _methods() if m.label == label)
            lines += ["", f"Real studies of {label} (trained, not replayed):", "",
                      *real_studies(method, base, grid, [int(s) for s in real_seeds.split(",")],
                                    int(args.share * grid.epochs), args.tolerance, Path(tmp))]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
