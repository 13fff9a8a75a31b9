"""Real-data benchmark: segtune's planned default and `segtune tune` against a plain MONAI script.

The datasets are built at run time from files shipped inside two packages, downloaded with
``pip download`` and nothing else (see ``benchmarks/real_datasets.py``): the DSB 2018 nuclei
image in the ``stardist`` wheel (2D fluorescence, 16 tiles) and the four tumour cases of the
``pyradiomics`` 3.0.1 source archive (two brain MRI, two lung CT; the tumour is 0.007 to 0.25 %
of the voxels). On each, in this process or its children, one after the other:

- ``monai``: the script a user writes from MONAI's tutorials: ``UNet`` with its usual settings
  (2D, channels 16..256, strides 2, 2 residual units), ``DiceCELoss``, Adam 1e-3, random flips,
  whole images padded to a multiple of 16, batch 8, the best validation epoch kept; where the
  images are larger than segtune's planned patch (the lung CT's 512x512 slices), it trains on
  crops of that patch, half of them centred on foreground (MONAI's ``RandCropByPosNegLabeld``
  with ``pos=neg=1``, as in its tutorials), and evaluates by MONAI's sliding windows of that
  size, so both sides train on crops of the same size for the same epochs. It reads the
  data through segtune's own loading (the same split, images and normalisation) and is scored
  with segtune's Dice, so the numbers compare;
- ``default``: ``segtune train --data DIR --set train.epochs=E`` (the plan from the data);
- ``tune``: ``segtune tune DIR --budget 10m`` (skipped, with a note, where this checkout has no
  ``tune`` command).

A tumour dataset has two cases and two folds (its ``splits_final.json``: fold 0 trains on the
larger tumour and validates on the smaller, fold 1 the reverse); ``--folds`` picks which of them
run (``data.fold``), each its own row ``<dataset> fold <k>``.

It prints each row as its method ends, then one table (dataset x method: mean foreground test Dice,
Dice per class, wall seconds), and writes the table to ``benchmarks/real_data.md``. The runs are kept under ``CACHE/runs/``.

Usage::

    python benchmarks/real_data.py                         # 3 datasets x 3 methods: 1 to 1.5 hours on 2 idle CPU cores
    python benchmarks/real_data.py --quick --methods monai,default     # a smoke run: 5 to 13 minutes on 2 CPU cores
    python benchmarks/real_data.py --datasets nuclei --epochs 20 --budget 5m --out /tmp/nuclei.md
    python benchmarks/real_data.py --datasets brain_tumour,lung_tumour --folds 0,1   # both directions
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

import monai
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks` and this checkout's segtune

from benchmarks.real_datasets import DATASETS, DEFAULT_CACHE, build_dataset  # noqa: E402
from segtune.config import data_config  # noqa: E402
from segtune.training.evaluate import evaluate_split  # noqa: E402
from segtune.training.patches import PatchSampler  # noqa: E402
from segtune.training.runtime import load_data, resolve_device  # noqa: E402

__all__ = ["METHODS", "Result", "main", "monai_baseline", "read_summary", "segtune_command"]

METHODS = ("monai", "default", "tune")
BASELINE_BATCH = 8  # what a hand-written script picks for 128..512 px slices on one machine
QUICK = {"epochs": 2, "budget": "1m"}


@dataclass(frozen=True)
class Result:
    """One cell of the table: test metrics (segtune's summary format) or the reason there are none."""

    dataset: str
    method: str
    test: dict | None
    seconds: float
    note: str = ""


class PadToMultiple(torch.nn.Module):
    """Pads ``(B, C, H, W)`` on the bottom and right to a multiple of ``multiple``; crops the logits back."""

    def __init__(self, net: torch.nn.Module, multiple: int = 16) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.multiple, 0, -h % self.multiple))
        return self.net(x)[..., :h, :w]


def _random_flips(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
    for dim in (-1, -2):  # each image flipped left-right and up-down with probability 1/2
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(dim), x)
        y = torch.where(flip[:, None, None], y.flip(dim), y)
    return x, y


def _baseline_crops(config, data) -> tuple[PatchSampler | None, tuple[int, int] | None]:
    """Where the images are larger than the plan's patch (the lung CT's 512x512 slices), the crops the
    baseline trains on: the plan's patch size, half of each batch centred on a foreground pixel (MONAI's
    ``RandCropByPosNegLabeld(pos=1, neg=1)`` of its tutorials), and sliding windows of that size to
    evaluate; else None: whole images, as before."""
    patch = config.train.patch_size
    if patch is None or all(s <= p for s, p in zip(data.train.images.shape[2:], patch)):
        return None, None
    sampler = PatchSampler(data.train.images, data.train.masks, patch_size=patch, foreground_oversample=0.5,
                           n_classes=data.n_classes)
    return sampler, tuple(patch)


def monai_baseline(folder: Path, epochs: int, seed: int, overrides: Sequence[str] = ()) -> Result:
    """The plain MONAI script on the dataset in ``folder`` (``overrides``: ``data.fold=1``, say):
    its test metrics and wall seconds (data loading included, as in the CLI runs)."""
    start = time.perf_counter()
    config = data_config(str(folder), [f"seed={seed}", *overrides])
    data = load_data(config)  # segtune's split, images, normalisation
    sampler, windows = _baseline_crops(config, data)
    torch.manual_seed(seed)
    generator, device = torch.Generator().manual_seed(seed), resolve_device("auto")  # as train.device: auto
    net = PadToMultiple(UNet(spatial_dims=2, in_channels=data.in_channels, out_channels=data.n_classes,
                             channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    best, best_state = -1.0, None
    for _ in range(epochs):
        net.train()
        for index in torch.randperm(len(data.train), generator=generator).split(BASELINE_BATCH):
            x, y = sampler(index, generator) if sampler else (data.train.images[index], data.train.masks[index])
            x, y = _random_flips(x, y, generator)
            loss = loss_fn(net(x.to(device)), y[:, None].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = evaluate_split(net, data.val, data.class_names, batch_size=BASELINE_BATCH, device=device,
                             patch_size=windows)["dice_mean"]
        if val > best:
            best, best_state = val, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    test = evaluate_split(net, data.test, data.class_names, batch_size=BASELINE_BATCH, device=device,
                          patch_size=windows)
    crops = f"; {windows[0]}x{windows[1]} crops (half on foreground), sliding windows" if windows else ""
    return Result(folder.name, "monai", test, time.perf_counter() - start, f"best val epoch, val Dice {best:.3f}{crops}")


def segtune_command(method: str, folder: Path, out: Path, *, epochs: int, budget: str, seed: int,
                    overrides: Sequence[str] = ()) -> list[str]:
    """The ``segtune`` command line of ``method`` (``default`` or ``tune``) on ``folder``, with
    ``overrides`` (``KEY=VALUE``) set on the run or the tune's base."""
    segtune = [sys.executable, "-m", "segtune"]
    if method == "default":
        return [*segtune, "train", "--data", str(folder), "--set", f"train.epochs={epochs}", f"seed={seed}",
                *overrides, "--out", str(out), "--quiet"]
    if method == "tune":
        extra = ["--set", *overrides] if overrides else []
        return [*segtune, "tune", str(folder), "--budget", budget, *extra, "--out", str(out), "--seed", str(seed)]
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _environment() -> dict[str, str]:
    """The children's environment: this checkout's segtune first on the path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _has_command(name: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "segtune", name, "--help"], capture_output=True, env=_environment())
    return done.returncode == 0


def read_summary(out: Path) -> tuple[dict, str]:
    """The test metrics of a run or a tuning in ``out`` and the summary file they come from.

    A run's own ``summary.json``; for a tuning, ``best/summary.json`` where it exists, else the
    trial summary with the highest validation Dice (the one tune picks).

    Raises:
        FileNotFoundError: no summary with test metrics under ``out``.
    """
    for file in (out / "summary.json", out / "best" / "summary.json"):
        if file.is_file() and "test" in (tree := json.loads(file.read_text())):
            return tree["test"], str(file.relative_to(out))
    found = [(json.loads(f.read_text()), f) for f in sorted(out.rglob("summary.json"))]
    found = [(tree, f) for tree, f in found if "test" in tree and "val" in tree]
    if not found:
        raise FileNotFoundError(f"{out}: no summary.json with test metrics")
    tree, file = max(found, key=lambda pair: pair[0]["val"]["dice_mean"])
    return tree["test"], f"{file.relative_to(out)} (highest val Dice)"


def run_segtune(method: str, folder: Path, out: Path, **options) -> Result:
    """Run ``segtune train`` or ``segtune tune`` in a child process; its test metrics and wall seconds."""
    start = time.perf_counter()
    done = subprocess.run(segtune_command(method, folder, out, **options), capture_output=True, text=True,
                          env=_environment())
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        return Result(folder.name, method, None, seconds, f"failed ({done.returncode}): {tail[0][:200]}")
    test, source = read_summary(out)
    return Result(folder.name, method, test, seconds, f"from {source}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cell(result: Result, baseline: Result | None) -> str:
    if result.test is None:
        return f"| {result.dataset} | {result.method} | – | – | – | {result.seconds:.0f} | {result.note} |"
    classes = list(result.test["dice_per_class"].items())[1:]  # the foreground classes
    per_class = ", ".join(f"{name} {dice:.3f}" for name, dice in classes)
    gap = ("" if baseline is None or baseline.test is None or baseline is result
           else f"{result.test['dice_mean'] - baseline.test['dice_mean']:+.3f}")
    return (f"| {result.dataset} | {result.method} | {result.test['dice_mean']:.3f} | {gap} | {per_class} | "
            f"{result.seconds:.0f} | {result.note} |")


def _bars(results: list[Result]) -> list[str]:
    """The issue's bars, checked on this run's numbers."""
    by = {(r.dataset, r.method): r.test for r in results if r.test is not None}
    names = sorted({r.dataset for r in results})
    lines = []
    pairs = [(n, by[(n, "default")]["dice_mean"] - by[(n, "monai")]["dice_mean"]) for n in names
             if (n, "default") in by and (n, "monai") in by]
    if pairs:
        ok = all(gap >= -0.01 for _, gap in pairs)
        lines.append(f"- planned default at least the MONAI script's Dice less 0.01 on every dataset: "
                     f"{'met' if ok else 'NOT met'} ({', '.join(f'{n} {g:+.3f}' for n, g in pairs)})")
    gains = [(n, by[(n, "tune")]["dice_mean"] - by[(n, "monai")]["dice_mean"]) for n in names
             if (n, "tune") in by and (n, "monai") in by]
    if gains:
        ok = any(gain >= 0.02 for _, gain in gains)
        lines.append(f"- tune beats the MONAI script by at least 0.02 on one dataset: {'met' if ok else 'NOT met'} "
                     f"({', '.join(f'{n} {g:+.3f}' for n, g in gains)})")
    tumours = [(n, by[(n, "tune")]["dice_per_class"]["tumour"]) for n in names
               if (n, "tune") in by and "tumour" in by[(n, "tune")]["dice_per_class"]]
    if tumours:
        ok = all(d > 0.3 for _, d in tumours)
        lines.append(f"- tune's tumour Dice above 0.3 on each tumour dataset: {'met' if ok else 'NOT met'} "
                     f"({', '.join(f'{n} {d:.3f}' for n, d in tumours)})")
    return lines or ["- not checked: the bars need the monai method beside default or tune"]


def _table(results: list[Result], args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# Real-data benchmark ({date.today()}{', quick smoke run: NOT a result' if args.quick else ''})", "",
             f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
             f"torch {torch.__version__}, MONAI {monai.__version__}. Epochs {args.epochs} (monai, default), "
             f"tune budget {args.budget}, seed {args.seed}; {seconds / 60:.1f} minutes in all.", "",
             "Test Dice: the mean over the foreground classes, all pixels of the test split pooled (for the "
             "tumour datasets the test split is the val case). The gap is to the MONAI script's.", "",
             "| dataset | method | test Dice | gap to monai | Dice per class | seconds | notes |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        baseline = next((r for r in results if r.dataset == result.dataset and r.method == "monai"), None)
        lines.append(_cell(result, baseline))
    lines += ["", "Datasets:", ""]
    lines += [f"- `{DATASETS[n].folder}` ({n}): {DATASETS[n].source}" for n in args.datasets]
    return "\n".join(lines + ["", "Bars (issue 16):", "", *_bars(results)])


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated: {', '.join(DATASETS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--epochs", type=int, help="epochs of the monai and default runs (default 40; --quick 2)")
    parser.add_argument("--budget", help="wall-clock budget of each tune (default 10m; --quick 1m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", default="0", help="comma-separated folds (data.fold) of the datasets with a "
                                                     "splits_final.json, the tumours': 0 (default), 1, or 0,1")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="packages, datasets and runs")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs, a 1-minute tune")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "real_data.md")
    args = parser.parse_args()
    args.epochs = args.epochs or (QUICK["epochs"] if args.quick else 40)
    args.budget = args.budget or (QUICK["budget"] if args.quick else "10m")
    args.datasets, args.methods = args.datasets.split(","), args.methods.split(",")
    try:
        args.folds = [int(f) for f in args.folds.split(",")]
    except ValueError:
        parser.error(f"--folds {args.folds!r}: give fold numbers separated by commas, e.g. 0,1")
    for name, chosen, known in (("--datasets", args.datasets, DATASETS), ("--methods", args.methods, METHODS)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main() -> None:
    """Build the datasets, run every method on each, print the table and write it to ``--out``."""
    args = _arguments()
    start, cache = time.perf_counter(), args.cache.expanduser()
    runs = cache / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    available = {m: m == "monai" or _has_command({"default": "train", "tune": "tune"}[m]) for m in args.methods}
    results = []
    for name in args.datasets:
        folder = build_dataset(name, cache)
        folds = args.folds if (folder / "splits_final.json").is_file() else [None]  # splits.json: one split
        for fold in folds:
            label, overrides = (name, []) if fold is None else (f"{name} fold {fold}", [f"data.fold={fold}"])
            for method in args.methods:
                print(f"{label}: {method} ...", flush=True)
                if not available[method]:
                    result = Result(name, method, None, 0.0, f"skipped: this checkout has no `segtune {method}` command")
                elif method == "monai":
                    result = monai_baseline(folder, args.epochs, args.seed, overrides)
                else:
                    out = runs / name / ("" if fold is None else f"fold{fold}") / method
                    result = run_segtune(method, folder, out, epochs=args.epochs, budget=args.budget, seed=args.seed,
                                         overrides=overrides)
                results.append(replace(result, dataset=label))
                baseline = next((r for r in results if r.dataset == label and r.method == "monai"), None)
                print(_cell(results[-1], baseline), flush=True)  # each row when it is measured: a long run's rows survive a stop
    text = _table(results, args, time.perf_counter() - start)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
