"""Training throughput: segtune's loop against a plain PyTorch loop written the usual way.

The reference is how such studies are usually written by hand: a per-sample ``Dataset`` that
augments with numpy/scipy (flip, small rotation and shift), a ``DataLoader``, fp32 and the
default memory format. segtune trains the same model on the same data with the same batch size,
augmentation, loss and optimizer through ``segtune.training.loop`` (data resident as tensors, batched
augmentation), in each memory format, in fp32 and bf16 autocast, and with ``torch.compile``
(its one-off compile time is left out with the warm-up epoch; it is printed). Both run in this
process, one after the other, so they see the same machine, on its CUDA GPU where it has one (the
reference copies each batch from its loader to it, as such scripts do); the step profile, the thread
table and the augmentation cost are of the CPU.

Also printed: FLOPs of one training step (torch.utils.flop_counter), achieved GFLOP/s against
this machine's measured matmul and convolution peaks for the same precision, and per model the
bar (the fastest segtune setting at least 1.5x the reference and at least 50 % of the convolution
peak of its precision); where a training step's time goes (torch.profiler, ``--profile-steps``);
`predict` speed, the cost of augmenting the training set (per-sample scipy against segtune's
batched tensors), peak resident memory, and the final Dice check: the reference loop and
segtune's default (at the reference's thread count) each train each model of ``--dice-models``
for ``--dice-epochs`` epochs with each of ``--dice-seeds``, each keeping the weights of its best
validation epoch (``--dice-weights``; the last epoch's swing too much between seeds at a constant
lr), and their test Dice (segtune's mean at least the reference's less 0.01: the bar) and wall
time are compared (the short throughput runs are too short to compare Dice);
``segtune demo``, the main job, in a child process: its wall time and peak resident memory, and
its wall time again beside one busy process; the thread settings idle and beside one busy
process (child processes: segtune's default, every CPU but one with the passive wait, fixed;
``train.num_threads: auto``, which follows the free CPUs; every CPU with the passive wait; every
CPU with OpenMP's own wait policy; 1 thread); and the demo config's final
Dice in fp32, bf16 and ``train.precision: auto``. The load average is printed at the start, the
end and around each load, since other work on the machine changes every figure.

Usage::

    python benchmarks/throughput.py                  # everything: about an hour on 2 idle cores with bf16
                                                     # units (most of it the Dice check), longer without
    python benchmarks/throughput.py --models '' --dice-epochs 0 --no-demo --precision-epochs 0 \
        --profile-steps 0                            # the thread table only, about 4 minutes there
    python benchmarks/throughput.py --models monai_unet --epochs 2 --dice-epochs 0 --out bench.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date

import numpy as np
import optuna
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from segtune.components.augment import AUGMENTATIONS
from segtune.config import build_config, load_config
from segtune.training.evaluate import evaluate_split, predict_labels
from segtune.components.losses import LOSSES
from segtune.components.models import build_model
from segtune.training.loop import train
from segtune.study.records import best_trial
from segtune.study.demo import demo_config_path
from segtune.training.runtime import available_cpus, cpu_model, load_data, resolve_device
from segtune.training.threads import default_threads

DEVICE = resolve_device("auto")  # where both loops and the peaks run: a CUDA GPU where there is one, as segtune's


def sync() -> None:
    """Wait for the device's queued work before reading a clock (a GPU runs behind the host)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "the CPU"


MODELS = {
    "unet": {"name": "unet", "depth": 4, "base": 16},
    "monai_unet": {"name": "monai_unet", "channels": [16, 32, 64, 128], "num_res_units": 2},
}


class HandWrittenDataset(Dataset):
    """Per-sample numpy augmentation, the way hand-written training scripts do it."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, seed: int) -> None:
        self.images, self.masks = images, masks
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x, y = self.images[i, 0], self.masks[i]
        angle = self.rng.uniform(-20, 20)
        shift = self.rng.uniform(-0.1, 0.1, 2) * x.shape
        x = ndimage.shift(ndimage.rotate(x, angle, reshape=False, order=1), shift, order=1)
        y = ndimage.shift(ndimage.rotate(y, angle, reshape=False, order=0), shift, order=0)
        if self.rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        return torch.from_numpy(x.copy())[None].float(), torch.from_numpy(y.copy()).long()


def same_threads() -> list[str]:
    """segtune's runs train with the reference loop's thread count (torch's), not segtune's default."""
    return [f"train.num_threads={torch.get_num_threads()}"]


def reference_loop(cfg, data, epochs: int, *, keep_best: bool = False) -> tuple[float, float, torch.nn.Module, float]:
    """The hand-written loop: returns (train images/s, val Dice, model, first epoch's seconds); with
    ``keep_best`` it validates after every epoch (outside the timed seconds) and returns the weights of
    its best validation epoch, as scripts written from MONAI's tutorials do."""
    torch.manual_seed(cfg.seed)
    loss_fn = LOSSES.build(cfg.loss.name, cfg.loss.options, data.n_classes)
    model = build_model(cfg.model.name, cfg.model.options, data.in_channels, data.n_classes).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.options["lr"])
    ds = HandWrittenDataset(data.train.images.numpy(), data.train.masks.numpy(), cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, num_workers=0, drop_last=True)
    n, seconds, first, best = 0, 0.0, 0.0, (-1.0, None)
    for epoch in range(epochs):
        model.train()
        t = time.perf_counter()
        for x, y in loader:
            x, y = x.to(DEVICE), y.to(DEVICE)  # as scripts do: each batch from the loader to the device
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(x) if epoch else 0
        sync()
        seconds += time.perf_counter() - t if epoch else 0.0  # epoch 0 is warm-up
        first = first or time.perf_counter() - t
        if keep_best:
            dice = evaluate_split(model, data.val, data.class_names, device=DEVICE)["dice_mean"]
            if dice > best[0]:
                best = (dice, copy.deepcopy(model.state_dict()))
    if keep_best:
        model.load_state_dict(best[1])
        return n / seconds, best[0], model, first
    dice = evaluate_split(model, data.val, data.class_names, device=DEVICE)["dice_mean"]
    return n / seconds, dice, model, first


def segtune_loop(cfg, data, epochs: int) -> tuple[float, float, float]:
    """segtune.training.loop with validation only at the end: (train images/s, val Dice, first epoch's seconds)."""
    cfg = build_config(cfg.to_dict(), [f"train.epochs={epochs}", f"train.val_every={epochs}", "train.patience=0",
                                       "train.restore_best=false", *same_threads()])
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, out_dir=f"{tmp}/run", data=data, verbose=False)
    images = (len(data.train) // cfg.train.batch_size) * cfg.train.batch_size
    seconds = sum(r["seconds"] for r in result.history[1:-1])  # skip warm-up and the validated last epoch
    return images * (epochs - 2) / seconds, result.summary["val"]["dice_mean"], result.history[0]["seconds"]


def final_dice(tree: dict, data, epochs: int, weights: str = "best") -> list[tuple[str, float, float, float]]:
    """Train to ``epochs`` with each loop, each keeping the ``weights`` of its best validation epoch or of
    its last: (label, test Dice, val Dice, wall seconds incl. validation)."""
    cfg = build_config(tree, [f"train.epochs={epochs}"])
    t = time.perf_counter()
    _, val_dice, model, _ = reference_loop(cfg, data, epochs, keep_best=weights == "best")
    test_dice = evaluate_split(model, data.test, data.class_names, device=DEVICE)["dice_mean"]
    ref = ("plain PyTorch (reference)", test_dice, val_dice, time.perf_counter() - t)
    cfg = build_config(tree, [f"train.epochs={epochs}", "train.patience=0",
                              f"train.restore_best={str(weights == 'best').lower()}", *same_threads()])
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, out_dir=f"{tmp}/run", data=data, verbose=False).summary
    chosen = summary["precision"]
    label = (f"segtune default (precision auto: {chosen['precision']}"
             f"{', channels_last' if chosen['channels_last'] else ''}; validation every epoch)")
    return [ref, (label, summary["test"]["dice_mean"],
                  summary["val"]["dice_mean"], time.perf_counter() - t)]


def dice_check(checks, epochs: int, seeds: list[int], weights: str = "best") -> tuple[list[str], list[str]]:
    """The final Dice check of each ``(model, tree, data)`` of ``checks``: the reference loop and segtune's
    default trained ``epochs`` epochs with each of ``seeds``; (the table's lines, one verdict per model: the
    mean test Dice of segtune's default at least the reference's less 0.01)."""
    lines = ["", f"Final Dice check: {epochs} epochs, seeds {', '.join(map(str, seeds))}, the {weights} epoch's "
             "weights of each loop (best: of its best validation epoch), test Dice over the held-out test slices.", "",
             "| model | seed | loop | test Dice | val Dice | wall s |", "|---|---|---|---|---|---|"]
    verdicts = []
    for model, tree, data in checks:
        tests: dict[int, list[float]] = {0: [], 1: []}  # reference, segtune
        for seed in seeds:
            rows = final_dice({**tree, "seed": seed}, data, epochs, weights)
            lines += [f"| {model} | {seed} | {label} | {test:.3f} | {val:.3f} | {sec:.0f} |"
                      for label, test, val, sec in rows]
            for i, (_, test, _, _) in enumerate(rows):
                tests[i].append(test)
        ref, ours = (float(np.mean(tests[i])) for i in (0, 1))
        verdicts.append(f"{model}: final test Dice of segtune's default {ours:.3f} against the reference's {ref:.3f} "
                        f"(mean over {len(seeds)} seed(s)): at least the reference's less 0.01 is "
                        + ("met" if ours >= ref - 0.01 else "NOT met"))
    return lines, verdicts


def augment_seconds(cfg, data) -> tuple[float, float]:
    """Seconds per training image to augment the training set: per-sample scipy, segtune batched."""
    ds = HandWrittenDataset(data.train.images.numpy(), data.train.masks.numpy(), cfg.seed)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    per_sample = (time.perf_counter() - t) / len(ds)
    augment = AUGMENTATIONS.build(cfg.augment.name, cfg.augment.options)
    generator = torch.Generator().manual_seed(cfg.seed)
    t = time.perf_counter()
    for start in range(0, len(data.train), cfg.train.batch_size):
        augment(data.train.images[start:start + cfg.train.batch_size],
                data.train.masks[start:start + cfg.train.batch_size], generator)
    return per_sample, (time.perf_counter() - t) / len(data.train)


def demo_beside_a_busy_process() -> float:
    """``segtune demo``'s wall seconds beside one busy process (a Python loop burning one core)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "segtune", "demo", "--out", f"{tmp}/demo"], check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - t
    finally:
        busy.kill()
        busy.wait()


def demo_run() -> tuple[float, float, dict]:
    """``segtune demo`` (the main job) in a child process: (wall seconds, peak resident MiB, the
    best trial's test metrics)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "segtune", "demo", "--out", f"{tmp}/demo"], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
        study = optuna.load_study(study_name="demo-study", storage=f"sqlite:///{tmp}/demo/study.db")
        test = best_trial(study).runs[0].test
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise RuntimeError("the demo's peak memory could not be told apart from an earlier child's; run it alone")
    return seconds, peak / 1024, test


DEFAULT_ROW, AUTO_ROW = "default", "train.num_threads: auto"  # the thread table's rows of the two settings

THREADS_CHILD = """
import collections, json, statistics, sys, tempfile
if sys.argv[1] == "torch-first":
    import torch  # OpenMP starts with its own wait policy, before segtune can set a passive one
from segtune.config import load_config
from segtune.study.demo import demo_config_path
from segtune.training.loop import train
from segtune.training.runtime import load_data
repeats, base, settings = int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
data = load_data(load_config(demo_config_path(), base))
seconds, threads = {label: [] for label in settings}, {label: collections.Counter() for label in settings}
for _ in range(repeats):  # round robin: a change of the machine's load hits every setting alike
    for label, extra in settings.items():
        with tempfile.TemporaryDirectory() as tmp:
            result = train(load_config(demo_config_path(), base + extra), out_dir=f"{tmp}/run", data=data,
                           verbose=False)
        seconds[label] += [row["seconds"] for row in result.history[1:]]  # the first epoch warms up
        threads[label].update(row["threads"] for row in result.history[1:])
print(json.dumps({label: [statistics.median(s), dict(threads[label])] for label, s in seconds.items()}))
"""


def thread_rows(epochs: int, repeats: int) -> list[tuple[str, str, float, str]]:
    """Median seconds per epoch of the demo's model (2 mm, fp32) idle and beside one busy process (a
    Python loop burning one core), in child processes: segtune's default (every CPU but one with the
    passive wait, fixed), ``train.num_threads: auto`` (the CPUs left free), every CPU with the passive
    wait (the default before), every CPU with OpenMP's own wait policy (torch imported first: the
    default before segtune set the passive one), and 1 thread;
    each setting ``repeats`` times, round robin; (load with the load averages before and after,
    setting, s per epoch, the epochs' thread counts). Other work on the machine counts too, hence
    the load averages."""
    base = ["data.spacing=2", f"train.epochs={epochs}", "train.patience=0", "train.precision=fp32"]
    cpus = available_cpus()
    children = [("segtune-first", {f"{DEFAULT_ROW}: {default_threads(cpus)} thread(s) (every CPU but one), passive "
                                   "wait, fixed": [],
                                   f"{AUTO_ROW}: the CPUs left free, followed between epochs": ["train.num_threads=auto"],
                                   f"every CPU, {cpus} threads, passive wait": [f"train.num_threads={cpus}"],
                                   "1 thread": ["train.num_threads=1"]}),
                ("torch-first", {f"{cpus} threads, OpenMP's own wait policy": [f"train.num_threads={cpus}"]})]
    rows = []
    for load in ("idle", "one busy process"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
        before, block = _loadavg(), []
        try:
            for first, settings in children:
                out = subprocess.run([sys.executable, "-c", THREADS_CHILD, first, str(repeats), json.dumps(base),
                                      json.dumps(settings)], check=True, capture_output=True, text=True).stdout
                for label, (sec, counts) in json.loads(out.strip().splitlines()[-1]).items():
                    block.append((label, sec, ", ".join(f"{n} x{k}" for n, k in sorted(counts.items(),
                                                                                        key=lambda c: int(c[0])))))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        label = f"{load} (load average {before} -> {_loadavg()})"
        print(f"threads: {label} done", flush=True)
        rows += [(label, *row) for row in block]
    return rows


def _loadavg() -> str:
    """The 1-minute load average (``/proc/loadavg``), or ``?`` off Linux."""
    with contextlib.suppress(OSError):
        return open("/proc/loadavg").read().split()[0]
    return "?"


def thread_lines(rows: list[tuple[str, str, float, str]]) -> list[str]:
    """The table of :func:`thread_rows` and the bar: under load, the default (and ``auto``) at least
    0.8x the best setting."""
    lines = ["", f"Threads ({available_cpus()} CPUs available; the demo's model at 2 mm, fp32, median s per "
             "epoch after the first):", "",
             "| load | setting | s/epoch | speed x best of its load | threads (epochs) |", "|---|---|---|---|---|"]
    for load, label, sec, counts in rows:
        best = min(s for l, _, s, _ in rows if l == load)
        lines.append(f"| {load} | {label} | {sec:.2f} | {best / sec:.2f} | {counts} |")
    busy = {label: sec for load, label, sec, _ in rows if not load.startswith("idle")}
    lines.append("")
    for name, what in ((DEFAULT_ROW, "the default (fixed, reproducible)"), (AUTO_ROW, "auto (follows the load)")):
        sec = next((sec for label, sec in busy.items() if label.startswith(name)), None)
        if sec is not None:
            ratio = min(busy.values()) / sec
            lines.append(f"Under one busy process {what} runs at {ratio:.2f}x the best setting: the bar (at least "
                         f"0.8x) is {'met' if ratio >= 0.8 else 'NOT met'}.")
    return lines


def precision_lines(epochs: int, models: list[str], seeds: list[int]) -> list[str]:
    """The demo config (1 mm) trained for ``epochs`` in fp32, in bf16 autocast and in what ``train.precision:
    auto`` chooses here, with its own model (``monai_unet``) or another of :data:`MODELS` in its place, once
    per seed: test Dice and s/epoch of each run, and the mean test Dice over the seeds."""
    lines = ["", f"Precision: the demo config, {epochs} epochs, the best epoch's weights, seeds "
             f"{', '.join(map(str, seeds))}:", "",
             "| model | precision | seed | s/epoch | test Dice | CSF / grey / white |", "|---|---|---|---|---|---|"]
    means = []
    for model in models:
        for precision in ("fp32", "bf16", "auto"):
            tests = []
            for seed in seeds:
                changes = [f"train.epochs={epochs}", f"train.precision={precision}", f"seed={seed}"]
                tree = load_config(demo_config_path(), changes).to_dict()
                if model != "monai_unet":
                    tree["model"] = MODELS[model]
                with tempfile.TemporaryDirectory() as tmp:
                    result = train(build_config(tree), out_dir=f"{tmp}/run", verbose=False)
                test, chosen = result.summary["test"], result.summary["precision"]
                label = precision if precision != "auto" else f"auto -> {chosen['precision']} ({chosen['source']})"
                per_class = " / ".join(f"{v:.3f}" for v in list(test["dice_per_class"].values())[1:])
                lines.append(f"| {model} | {label} | {seed} | "
                             f"{sum(r['seconds'] for r in result.history) / len(result.history):.2f} | "
                             f"{test['dice_mean']:.3f} | {per_class} |")
                tests.append(test["dice_mean"])
            means.append(f"{model} {precision}: mean test Dice {np.mean(tests):.3f}")
    return lines + ["", "; ".join(means)]


STEP_PARTS = {  # the profiler's operators, grouped by what they do in a training step
    "convolutions (forward and backward)": ("convolution", "conv2d", "conv_transpose", "mkldnn_conv"),
    "normalisation and activations": ("batch_norm", "instance_norm", "group_norm", "relu", "threshold", "prelu",
                                      "leaky_relu", "clamp_min"),
    "pooling, up-sampling, concatenation": ("max_pool", "avg_pool", "upsample", "cat"),
    "loss": ("softmax", "nll_loss", "log_softmax"),
    "optimizer step": ("_foreach", "adam", "addcdiv", "lerp", "sqrt"),
}


def step_profile(cfg, data, steps: int = 3) -> list[tuple[str, float]]:
    """Where a training step of ``cfg`` goes in segtune's loop (torch.profiler over ``steps`` steps after one
    warm-up): (part, share of the step's time), the parts of :data:`STEP_PARTS` by the operators' own
    time, and segtune's own stages (drawing and augmenting the batch, the on-device train Dice) by
    their wall time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from segtune.training.runtime import EpochTally, build_training, run_samples

    device = torch.device("cpu")
    model, loss_fn, optimizer = build_training(cfg, data, device)
    samples, augment = run_samples(cfg, data, device), AUGMENTATIONS.build(cfg.augment.name, cfg.augment.options)
    generator = torch.Generator().manual_seed(cfg.seed)
    tally = EpochTally(data.n_classes, device, first_loss=None, divergence_factor=None)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    stages = {"drawing and augmenting the batch": 0.0, "train Dice and divergence tally": 0.0}

    def step() -> None:
        with record_function("batch"):
            x, y = samples(torch.randint(0, len(data.train), (cfg.train.batch_size,), generator=generator), generator)
            x, y = augment(x, y, generator)
            x = x.contiguous(memory_format=fmt)
        out = model(x).float()
        loss = loss_fn(out, y)
        with record_function("tally"):
            tally.add(out.detach(), y, loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = time.perf_counter() - t
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares = {part: 0.0 for part in STEP_PARTS}
    for e in events:
        part = next((p for p, keys in STEP_PARTS.items() if any(k in e.key for k in keys)), None)
        if part is not None:
            shares[part] += e.self_cpu_time_total / total
    for e in events:
        if e.key == "batch":
            stages["drawing and augmenting the batch"] = e.cpu_time_total / 1e6 / wall
        elif e.key == "tally":
            stages["train Dice and divergence tally"] = e.cpu_time_total / 1e6 / wall
    rest = 1.0 - sum(shares.values())
    return [*shares.items(), *stages.items(), ("everything else (of the operators' time)", rest),
            ("seconds per step", wall / steps)]


def profile_lines(model: str, parts: list[tuple[str, float]]) -> list[str]:
    """The table of :func:`step_profile`."""
    lines = ["", f"Where a training step of {model} goes (segtune fp32/channels_last as configured, torch.profiler, "
             f"load average {_loadavg()}):", "", "| part | share of the step |", "|---|---|"]
    for part, share in parts:
        value = f"{share:.2f} s" if part == "seconds per step" else f"{100 * share:.0f} %"
        lines.append(f"| {part} | {value} |")
    return lines


def step_flops(cfg, data, precision: str) -> float:
    """FLOPs of one forward + backward pass per training image."""
    model = build_model(cfg.model.name, cfg.model.options, data.in_channels, data.n_classes)
    loss_fn = LOSSES.build(cfg.loss.name, cfg.loss.options, data.n_classes)
    x, y = data.train.images[:4], data.train.masks[:4]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with FlopCounterMode(display=False) as counter, ctx:
        loss_fn(model(x).float(), y).backward()
    return counter.get_total_flops() / 4


def peak_gflops(dtype: torch.dtype) -> dict[str, float]:
    """Measured peaks: a 2048^3 matmul and a 64->64 3x3 convolution (channels_last), the fastest of 8 runs."""
    a, b = (torch.randn(2048, 2048, dtype=dtype, device=DEVICE) for _ in range(2))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(DEVICE, dtype, memory_format=torch.channels_last)
    x = torch.randn(16, 64, 128, 128, dtype=dtype, device=DEVICE).contiguous(memory_format=torch.channels_last)
    out = {}
    for name, fn, flops in (("matmul", lambda: a @ b, 2 * 2048**3),
                            ("conv", lambda: conv(x), 2 * 16 * 64 * 64 * 9 * 128 * 128)):
        best = float("inf")
        with torch.no_grad():
            fn()
            for _ in range(8):  # the fastest of 8: a peak, not an average over other processes' noise
                sync()
                t = time.perf_counter()
                fn()
                sync()
                best = min(best, time.perf_counter() - t)
        out[name] = flops / best / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet,monai_unet")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement (first is warm-up)")
    parser.add_argument("--spacing", type=int, default=1, choices=[1, 2], help="demo data resolution in mm")
    parser.add_argument("--dice-epochs", type=int, default=40,
                        help="epochs of the final Dice check of each model in --dice-models; 0 skips it")
    parser.add_argument("--dice-seeds", default="0,1,2",
                        help="the seeds of the final Dice check, each a run of both loops")
    parser.add_argument("--dice-weights", default="best", choices=["best", "last"],
                        help="the final Dice check judges each loop's best validation epoch (default) or its last")
    parser.add_argument("--dice-models", default="unet,monai_unet",
                        help="the models of --models whose final Dice is checked (reference against segtune's default)")
    parser.add_argument("--no-demo", action="store_true", help="skip timing `segtune demo` and its peak memory")
    parser.add_argument("--no-demo-busy", dest="demo_busy", action="store_false",
                        help="skip timing `segtune demo` a second time, beside one busy process")
    parser.add_argument("--thread-epochs", type=int, default=5,
                        help="epochs of each thread setting, idle and beside a busy process; 0 skips it")
    parser.add_argument("--thread-repeats", type=int, default=3, help="runs of each thread setting, round robin")
    parser.add_argument("--precision-epochs", type=int, default=40,
                        help="epochs of the fp32 / bf16 / auto Dice check on the demo config; 0 skips it")
    parser.add_argument("--precision-models", default="monai_unet,unet",
                        help="models of the precision check: the demo config with each in place of its own")
    parser.add_argument("--precision-seeds", default="0,1", help="the seeds of the precision check")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="training steps of each model profiled (where a step's time goes); 0 skips it")
    parser.add_argument("--out", default="benchmarks/throughput.md")
    args = parser.parse_args()

    started = time.perf_counter()
    lines = [f"# Training throughput ({date.today()}, {cpu_model()}, {available_cpus()} CPUs, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {_loadavg()} at the start; "
             f"both loops and the peaks on {_device_name()})",
             "", "`" + " ".join(["python", *sys.argv]) + "`", "",
             f"Demo data at {args.spacing} mm, batch 16, flip + rotation + shift augmentation, Dice+CE, Adam.", "",
             f"| model | loop | train img/s | x reference | val Dice after {args.epochs} epochs | GFLOP/s "
             "| % of conv peak | first epoch (s) |",
             "|---|---|---|---|---|---|---|---|"]
    demo = None if args.no_demo else demo_run()  # first: its peak memory is told apart from no other child's
    demo_loads = f"load average {_loadavg()}"
    demo_busy = None if args.no_demo or not args.demo_busy else demo_beside_a_busy_process()
    demo_loads += f" -> {_loadavg()}"
    threads = thread_rows(args.thread_epochs, args.thread_repeats) if args.thread_epochs else []
    if threads:
        print("\n".join(thread_lines(threads)), flush=True)  # at once: the runs below take long on a busy machine
    models = list(filter(None, args.models.split(",")))
    peaks = {"fp32": peak_gflops(torch.float32), "bf16": peak_gflops(torch.bfloat16)} if models else {}
    checks, profiles, bars = [], [], []
    for model in models:
        tree = {"name": "bench", "data": {"source": "demo", "spacing": args.spacing}, "model": MODELS[model],
                "loss": {"name": "dice_ce"}, "optimizer": {"name": "adam", "lr": 3e-3},
                "augment": {"name": "combine"}, "train": {"batch_size": 16}}
        cfg = build_config(tree)
        data = load_data(cfg)
        ref_speed, ref_dice, ref_model, ref_first = reference_loop(cfg, data, args.epochs)
        flops = {p: step_flops(cfg, data, p) for p in ("fp32", "bf16")}
        rows = [("plain PyTorch (reference)", ref_speed, ref_dice, "fp32", ref_first)]
        for label, overrides, precision in (
            ("segtune fp32, default layout", ["train.precision=fp32", "train.channels_last=false"], "fp32"),
            ("segtune fp32, channels_last", ["train.precision=fp32", "train.channels_last=true"], "fp32"),
            ("segtune bf16, default layout", ["train.precision=bf16", "train.channels_last=false"], "bf16"),
            ("segtune bf16, channels_last", ["train.precision=bf16", "train.channels_last=true"], "bf16"),
            ("segtune fp32, compiled", ["train.compile=true", "train.precision=fp32", "train.channels_last=false"],
             "fp32"),
            ("segtune bf16, compiled", ["train.compile=true", "train.precision=bf16", "train.channels_last=false"],
             "bf16"),
        ):
            speed, dice, first = segtune_loop(build_config(tree, overrides), data, args.epochs)
            rows.append((label, speed, dice, precision, first))
        for label, speed, dice, precision, first in rows:
            achieved = flops[precision] * speed / 1e9
            lines.append(f"| {model} | {label} | {speed:.1f} | {speed / ref_speed:.2f} | {dice:.3f} | "
                         f"{achieved:.0f} | {100 * achieved / peaks[precision]['conv']:.0f}% | {first:.1f} |")
        label, speed, _, precision, _ = max(rows[1:], key=lambda r: r[1])
        share = flops[precision] * speed / 1e9 / peaks[precision]["conv"]
        bars.append(f"{model}: the fastest segtune setting ({label}) at {speed / ref_speed:.2f}x the reference and "
                    f"{100 * share:.0f} % of the {precision} convolution peak: the bars (at least 1.5x and 50 %) are "
                    + ("met" if speed / ref_speed >= 1.5 and share >= 0.5 else "NOT met"))
        t = time.perf_counter()
        predict_labels(ref_model, data.test.images, batch_size=16, device=DEVICE)
        lines.append(f"| {model} | predict (inference_mode) | {len(data.test) / (time.perf_counter() - t):.1f} | | | | | |")
        lines.append(f"| {model} | FLOPs per training image | fp32 {flops['fp32'] / 1e9:.1f} G | | | | | |")
        if args.profile_steps:
            profiles.append(profile_lines(model, step_profile(build_config(tree, ["train.precision=fp32"]), data,
                                                              args.profile_steps)))
        if model in args.dice_models.split(",") and args.dice_epochs:
            checks.append((model, tree, data))
    if checks:
        _, tree, data = checks[0]
        per_sample, batched = augment_seconds(build_config(tree), data)
        lines += ["", f"Augmenting the training set (rotation, shift, flip): per-sample scipy "
                  f"{1e3 * per_sample:.2f} ms per image, segtune batched tensors {1e3 * batched:.2f} ms per image."]
        table, verdicts = dice_check(checks, args.dice_epochs, [int(s) for s in args.dice_seeds.split(",")],
                                     args.dice_weights)
        lines += table
        bars += verdicts
    lines += ["", *bars] if bars else []
    lines += [line for table in profiles for line in table]
    lines += thread_lines(threads) if threads else []
    lines += precision_lines(args.precision_epochs, args.precision_models.split(","),
                             [int(s) for s in args.precision_seeds.split(",")]) if args.precision_epochs else []
    lines += ["", "Measured peaks (GFLOP/s): " + (", ".join(
        f"{p} {k} {v:.0f}" for p, d in peaks.items() for k, v in d.items()) or "not measured (no model)"),
        f"Peak resident memory of this benchmark: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"]
    if demo is not None:
        seconds, peak, test = demo
        dice = test["dice_per_class"]
        foreground = {k: v for k, v in list(dice.items())[1:]}
        met = seconds <= 180 and test["dice_mean"] >= 0.92 and foreground["csf"] >= 0.85
        lines.append(f"`segtune demo` (the study, with its report): {seconds:.0f} s wall, peak resident memory "
                     f"{peak:.0f} MiB; best trial's test Dice {test['dice_mean']:.3f} ("
                     + ", ".join(f"{k} {v:.3f}" for k, v in foreground.items())
                     + "); the bars (at most 180 s, mean at least 0.92, CSF at least 0.85) are "
                     + ("met" if met else "NOT met"))
        if demo_busy is not None:
            lines.append(f"`segtune demo` beside one busy process: {demo_busy:.0f} s wall, {demo_busy / seconds:.2f}x "
                         f"its time alone ({demo_loads}, over both runs): the bar (at most 2x) is "
                         + ("met" if demo_busy <= 2 * seconds else "NOT met"))
    lines.append(f"\nLoad average at the end {_loadavg()}; the whole benchmark took "
                 f"{time.perf_counter() - started:.0f} s.")
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
