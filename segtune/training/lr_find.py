"""Learning-rate search: the LR range test and the coarse-to-fine search on validation Dice.

**Range test** (Smith 2017, "Cyclical learning rates", section 3.3): train a fresh model for
``n_steps`` optimizer steps while the lr grows exponentially from ``start_lr`` to ``end_lr``,
record the loss smoothed by an exponential moving average (bias-corrected, as fastai does),
and stop once the smoothed loss exceeds ``diverge_factor`` times its minimum. A rule then reads
a learning rate off the curve (:data:`LR_RULES`):

- ``steepest`` (default; fastai's ``steep``): where the smoothed loss falls fastest per decade
  of lr. The default because it came closest to the best of a 5-point grid for both Adam and
  SGD on the demo data (``benchmarks/lr_search.py``; see the README).
- ``valley`` (fastai's ``valley``): the middle of the longest stretch over which the loss keeps
  falling. On the demo data it lands one to two decades too low: the long flat start of the
  curve counts as part of the descent.
- ``min_tenth``: a tenth of the lr at the loss minimum (fastai's ``minimum``).

**Refine**: the search users run by hand, automated: one short training (:func:`segtune.training.loop.train`)
per decade between ``low`` and ``high``, then ``n_bisect`` rounds of bisection in log space
around the best decade, on validation Dice.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segtune.config import Config, apply_changes, build_config
from segtune.data import SegData
from segtune.errors import ConfigError, TrainingDiverged
from segtune.training.evaluate import autocast
from segtune.registry import Registry
from segtune.training.loop import backward_step, build_training, load_data, resolve_device, train

LR_RULES = Registry("lr rule")


@LR_RULES.register("valley")
def valley(lrs: Sequence[float], losses: Sequence[float], /) -> float:
    """Middle of the longest run of decreasing loss (fastai ``valley``)."""
    n = len(losses)
    run = [1] * n  # length of the longest decreasing sequence ending at i
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return float(lrs[max(0, start + int(third) + int(third / 2))])


@LR_RULES.register("steepest")
def steepest(lrs: Sequence[float], losses: Sequence[float], /) -> float:
    """Where the loss falls fastest per decade of lr (fastai ``steep``)."""
    slope = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slope))])


@LR_RULES.register("min_tenth")
def min_tenth(lrs: Sequence[float], losses: Sequence[float], /) -> float:
    """A tenth of the lr at the lowest loss (fastai ``minimum``)."""
    return float(lrs[int(np.argmin(np.asarray(losses)))]) / 10


@dataclass
class RangeTest:
    """One optimizer's range-test curve and the learning rate read off it."""

    optimizer: str
    rule: str
    suggestion: float
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    seconds: float
    stopped: str  # why the test ended: "end_lr reached" or "diverged at lr ..."
    suggestions: dict[str, float] = field(default_factory=dict)  # every rule's lr, for comparison


def _with_optimizer(config: Config, name: str, changes: dict[str, Any]) -> Config:
    """``config`` with optimizer ``name`` (its own defaults unless it is the configured one) and ``changes``."""
    reset = {"optimizer": {"name": name}} if name != config.optimizer.name else {}
    return build_config(apply_changes(config.to_dict(), {**reset, **changes}), origin=f"lr-find {name}")


def _check_range(start_lr: float, end_lr: float, n_steps: int, smoothing: float, diverge_factor: float) -> None:
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr range test: need 0 < start_lr < end_lr, got start_lr={start_lr:g}, "
                          f"end_lr={end_lr:g}; e.g. start_lr=1e-7 end_lr=10")
    if n_steps < 10:
        raise ConfigError(f"lr range test: n_steps must be at least 10 to draw a curve, got {n_steps}")
    if not 0 < smoothing <= 1:
        raise ConfigError(f"lr range test: smoothing must be in (0, 1], got {smoothing:g}; 0.05 is usual")
    if diverge_factor <= 1:
        raise ConfigError(f"lr range test: diverge_factor must exceed 1, got {diverge_factor:g}; 4 is usual")


def lr_range_test(config: Config, *, data: SegData | None = None, optimizer: str | None = None,
                  start_lr: float = 1e-7, end_lr: float = 10.0, n_steps: int = 100,
                  smoothing: float = 0.05, diverge_factor: float = 4.0,
                  rule: str = "steepest") -> RangeTest:
    """Run the LR range test for one optimizer on the training images of ``config``.

    Args:
        config: the run config; its model, loss, batch size, device and precision are used.
        data: already loaded data; default: load it.
        optimizer: a registered optimizer name; default the configured one (other optimizers
            use their own default options).
        start_lr: first learning rate.
        end_lr: last learning rate; the lr grows by ``(end_lr / start_lr) ** (1 / (n_steps - 1))`` a step.
        n_steps: optimizer steps at most (batches of ``train.batch_size``, cycling through the data).
        smoothing: weight of the newest loss in the moving average.
        diverge_factor: stop when the smoothed loss exceeds this multiple of its minimum.
        rule: the rule that reads the suggestion off the curve (``valley``, ``steepest``, ``min_tenth``).

    Returns:
        A :class:`RangeTest` with the curve, the suggested lr and every rule's lr.

    Raises:
        ConfigError: an invalid range, or a curve too short to read (it diverged at once).

    Example:
        >>> curve = lr_range_test(config, optimizer="sgd", n_steps=50)  # doctest: +SKIP
        >>> curve.suggestion  # doctest: +SKIP
        0.0123
    """
    _check_range(start_lr, end_lr, n_steps, smoothing, diverge_factor)
    LR_RULES.entry(rule)
    name = optimizer or config.optimizer.name
    config = _with_optimizer(config, name, {"optimizer.lr": min(start_lr, 10.0)})
    data = data if data is not None else load_data(config)
    device = resolve_device(config.train.device)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    torch.manual_seed(config.seed)
    model, loss_fn, opt = build_training(config, data, device)
    scaler = torch.amp.GradScaler("cuda", enabled=config.train.precision == "fp16")
    fmt = torch.channels_last if config.train.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(config.seed)
    batch = min(config.train.batch_size, len(data.train))
    growth = (end_lr / start_lr) ** (1 / (n_steps - 1))
    lrs, raw, smooth = [], [], []
    average, best, stopped = 0.0, math.inf, "end_lr reached"
    order = torch.empty(0, dtype=torch.long)
    t0 = time.perf_counter()
    model.train()
    for step in range(n_steps):
        if len(order) < batch:
            order = torch.randperm(len(data.train), generator=generator)
        idx, order = order[:batch], order[batch:]
        lr = start_lr * growth**step
        for group in opt.param_groups:
            group["lr"] = lr
        x = data.train.images[idx].to(device).contiguous(memory_format=fmt)
        y = data.train.masks[idx].to(device)
        with autocast(device, config.train.precision):
            loss = loss_fn(model(x).float(), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            stopped = f"diverged at lr {lr:.3g} (loss {value})"
            break
        average = (1 - smoothing) * average + smoothing * value
        smoothed = average / (1 - (1 - smoothing) ** (step + 1))
        lrs.append(lr), raw.append(value), smooth.append(smoothed)
        best = min(best, smoothed)
        if smoothed > diverge_factor * best:
            stopped = f"diverged at lr {lr:.3g}"
            break
        backward_step(loss, opt, scaler)
    if len(lrs) < 5:
        raise ConfigError(f"lr range test for {name}: the loss diverged after {len(lrs)} steps, at lr "
                          f"{start_lr * growth ** len(lrs):.3g}; lower start_lr (now {start_lr:g})")
    suggestions = {r: LR_RULES.entry(r).builder(lrs, smooth) for r in LR_RULES.names()}
    return RangeTest(optimizer=name, rule=rule, suggestion=suggestions[rule], lrs=lrs, losses=smooth,
                     raw_losses=raw, seconds=time.perf_counter() - t0, stopped=stopped, suggestions=suggestions)


def plot_range_tests(curves: list[RangeTest], path: str | Path) -> Path:
    """One figure of every optimizer's smoothed loss against the lr (log scale), suggestions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        (line,) = ax.plot(curve.lrs, curve.losses, label=f"{curve.optimizer}: {curve.suggestion:.2g}")
        at = int(np.argmin(np.abs(np.log(curve.lrs) - math.log(curve.suggestion))))
        ax.plot([curve.suggestion], [curve.losses[at]], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"LR range test; dots: suggestion ({curves[0].rule} rule)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def find_lrs(config: Config, optimizers: Sequence[str] = (), *, out_dir: str | Path, data: SegData | None = None,
             **options: Any) -> list[RangeTest]:
    """Range-test each optimizer and write ``lr_find.csv`` (table), ``lr_find.json`` (curves) and ``lr_find.png``.

    Args:
        config: the run config.
        optimizers: registered optimizer names; default the configured one.
        out_dir: where the table, curves and figure go.
        data: already loaded data; default: load it once for all optimizers.
        **options: passed to :func:`lr_range_test` (``n_steps``, ``start_lr``, ``rule``, ...).

    Returns:
        One :class:`RangeTest` per optimizer, in order.
    """
    data = data if data is not None else load_data(config)
    curves = [lr_range_test(config, data=data, optimizer=name, **options)
              for name in (optimizers or [config.optimizer.name])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lr_find.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "suggested_lr", "rule", *LR_RULES.names(), "steps", "seconds", "stopped"])
        for c in curves:
            writer.writerow([c.optimizer, c.suggestion, c.rule, *(c.suggestions[r] for r in LR_RULES.names()),
                             len(c.lrs), round(c.seconds, 2), c.stopped])
    (out / "lr_find.json").write_text(json.dumps([asdict(c) for c in curves]))
    plot_range_tests(curves, out / "lr_find.png")
    return curves


def auto_lr_key(config: Config) -> str:
    """What a suggested lr depends on, as JSON: the optimizer (but its lr), loss, model, data and batch size."""
    tree = config.to_dict()
    optimizer = {k: v for k, v in tree["optimizer"].items() if k != "lr"}
    return json.dumps({"optimizer": optimizer, "loss": tree["loss"], "model": tree["model"], "data": tree["data"],
                       "batch_size": tree["train"]["batch_size"]}, sort_keys=True)


@dataclass
class RefineResult:
    """The coarse-to-fine search of one optimizer: every training, the best lr, the cost."""

    optimizer: str
    best_lr: float
    best_dice: float
    trials: list[dict[str, Any]]  # {"lr", "stage", "val_dice", "seconds", "status"}, in the order run
    seconds: float
    epochs: int  # epochs of each training


def refine_lr(config: Config, *, out_dir: str | Path, data: SegData | None = None, optimizer: str | None = None,
              low: float = 1e-5, high: float = 1e-1, n_bisect: int = 2, epochs: int | None = None,
              verbose: bool = False) -> RefineResult:
    """Coarse-to-fine lr search on validation Dice: one training per decade, then bisection.

    Each decade ``low, 10 * low, ..., high`` gets one training of ``epochs`` epochs (one decade
    more beyond ``low`` or ``high`` when the best is there); then each of
    ``n_bisect`` rounds trains at the log-midpoints between the best lr so far and its nearest
    tried neighbours, halving the interval (in decades) around the best. A diverged training
    scores a Dice of 0.

    Args:
        config: the run config.
        out_dir: the trainings' run directories go under it.
        data: already loaded data; default: load it.
        optimizer: a registered optimizer name; default the configured one.
        low: lowest lr tried (a power of ten is usual).
        high: highest lr tried.
        n_bisect: bisection rounds, two trainings each.
        epochs: epochs of each training; default ``train.epochs`` of the config.
        verbose: print each training's epochs.

    Returns:
        A :class:`RefineResult`; ``seconds`` is the total cost of its trainings.

    Raises:
        ConfigError: ``low`` not below ``high``, or a negative ``n_bisect``.
    """
    if not 0 < low < high:
        raise ConfigError(f"lr search: need 0 < low < high, got low={low:g}, high={high:g}; e.g. 1e-5 and 1e-1")
    if n_bisect < 0:
        raise ConfigError(f"lr search: n_bisect must be 0 or more, got {n_bisect}")
    name = optimizer or config.optimizer.name
    epochs = epochs or config.train.epochs
    data = data if data is not None else load_data(config)
    n_decades = max(1, round(math.log10(high / low)))
    trials: list[dict[str, Any]] = []
    scores: dict[float, float] = {}

    def run(lr: float, stage: str) -> None:
        cfg = _with_optimizer(config, name, {"optimizer.lr": lr, "train.epochs": epochs,
                                             "name": f"{config.name}-{name}-lr{lr:.3g}"})
        t0 = time.perf_counter()
        try:
            summary = train(cfg, out_dir=Path(out_dir) / f"{name}-lr{lr:.3g}", data=data, verbose=verbose).summary
            dice, status = summary["val"]["dice_mean"], "ok"
        except TrainingDiverged:
            dice, status = 0.0, "diverged"
        scores[lr] = dice
        trials.append({"lr": lr, "stage": stage, "val_dice": dice, "seconds": time.perf_counter() - t0,
                       "status": status})

    for k in range(n_decades + 1):
        run(low * (high / low) ** (k / n_decades), "decade")
    best = max(scores, key=lambda lr: scores[lr])
    if best in (min(scores), max(scores)):  # the best is at an end: look one decade further out
        run(best * 10 if best == max(scores) else best / 10, "decade")
    for _ in range(n_bisect):
        tried = sorted(scores)
        best = max(tried, key=lambda lr: scores[lr])
        i = tried.index(best)
        for neighbour in (tried[i - 1] if i > 0 else None, tried[i + 1] if i + 1 < len(tried) else None):
            if neighbour is not None:
                run(math.sqrt(best * neighbour), "bisect")
    best = max(scores, key=lambda lr: scores[lr])
    return RefineResult(optimizer=name, best_lr=best, best_dice=scores[best], trials=trials,
                        seconds=sum(t["seconds"] for t in trials), epochs=epochs)


__all__ = ["LR_RULES", "RangeTest", "RefineResult", "auto_lr_key", "find_lrs", "lr_range_test", "plot_range_tests",
           "refine_lr"]
