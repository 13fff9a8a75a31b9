"""Learning-rate search: the LR range test and the coarse-to-fine search on validation Dice.

**Range test** (Smith 2017, "Cyclical learning rates", section 3.3): train a fresh model for
``n_steps`` optimizer steps while the lr grows exponentially from ``start_lr`` to ``end_lr``,
record the loss smoothed by an exponential moving average (bias-corrected, as fastai does),
and stop once the smoothed loss exceeds ``divergence_factor`` times its minimum. A rule then reads
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
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from segtune.config import Config, apply_changes, build_config
from segtune.data import SegData
from segtune.errors import ConfigError, TrainingDiverged
from segtune.registry import Registry
from segtune.training.clock import budget_changes
from segtune.training.loop import train
from segtune.training.patches import TrainingSamples
from segtune.training.precision import resolve_precision
from segtune.training.runtime import (build_training, grad_scaler, load_data, memory_format, run_samples,
                                      setup_device, train_on_batches)

__all__ = ["LR_RULES", "RangeTest", "RefineResult", "auto_lr_key", "explain_rule", "find_lrs", "lr_range_test",
           "plot_range_tests", "range_test_figure", "refine_lr"]

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


_RULE_REASONS = {  # why each rule, from benchmarks/lr_search.py on the demo data (README: Learning rate search)
    "steepest": "The default: measured closest to the best of a 5-point grid (Adam within 0.01 Dice); "
                "momentum SGD trains best at 5 to 10x it (use --refine).",
    "valley": "Measured one to two decades too low on the demo data.",
    "min_tenth": "Measured within 0.01 Dice of the grid's best for Adam, 0.05 short for momentum SGD.",
}


def explain_rule(name: str) -> str:
    """What the LR rule ``name`` reads off the curve and how it fared in the measurements.

    Raises:
        RegistryError: no rule of that name (the message lists the rules).

    Example:
        >>> explain_rule("valley")
        'Middle of the longest run of decreasing loss (fastai ``valley``). Measured one to two decades too low on the demo data.'
    """
    return f"{LR_RULES.entry(name).summary} {_RULE_REASONS.get(name, '')}".rstrip()


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


def _check_range(start_lr: float, end_lr: float, n_steps: int, smoothing: float, divergence_factor: float) -> None:
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr range test: need 0 < start_lr < end_lr, got start_lr={start_lr:g}, "
                          f"end_lr={end_lr:g}; e.g. start_lr=1e-7 end_lr=10")
    if n_steps < 10:
        raise ConfigError(f"lr range test: n_steps must be at least 10 to draw a curve, got {n_steps}")
    if not 0 < smoothing <= 1:
        raise ConfigError(f"lr range test: smoothing must be in (0, 1], got {smoothing:g}; 0.05 is usual")
    if divergence_factor <= 1:
        raise ConfigError(f"lr range test: divergence_factor must exceed 1, got {divergence_factor:g}; 4 is usual")


def lr_range_test(config: Config, *, data: SegData | None = None, optimizer: str | None = None,
                  start_lr: float = 1e-7, end_lr: float = 10.0, n_steps: int = 100,
                  smoothing: float = 0.05, divergence_factor: float = 4.0,
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
        divergence_factor: stop when the smoothed loss exceeds this multiple of its minimum.
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
    # Not MONAI's LearningRateFinder.range_test: it has no autocast (its ``amp`` is NVIDIA apex's,
    # so train.precision bf16/fp16 would be ignored); a NaN loss never exceeds its divergence
    # threshold, so it runs to the end on NaN; its smoothing starts from the first loss without
    # bias correction; it draws batches from a DataLoader, where ours come from the resident
    # tensors with the run's seeded generator; and it copies and restores the model, which is
    # thrown away here. Its steepest rule equals ours (exponential steps are even in log lr).
    _check_range(start_lr, end_lr, n_steps, smoothing, divergence_factor)
    LR_RULES.entry(rule)
    name = optimizer or config.optimizer.name
    config = _with_optimizer(config, name, {"optimizer.lr": min(start_lr, 10.0)})
    data = data if data is not None else load_data(config)
    device = setup_device(config.train)
    config, _ = resolve_precision(config, data, device)  # train.precision auto: as the run would train
    torch.manual_seed(config.seed)
    model, loss_fn, opt = build_training(config, data, device)
    batches = _cycling_batches(run_samples(config, data, device), len(data.train),
                               min(config.train.batch_size, len(data.train)),
                               generator=torch.Generator().manual_seed(config.seed),
                               channels_last=config.train.channels_last)
    growth = (end_lr / start_lr) ** (1 / (n_steps - 1))
    # geomspace ends on end_lr exactly: start_lr * growth ** (n_steps - 1) overshoots it by rounding
    # (10.000000000000073), above the bound an optimizer's lr is validated against
    steps = zip(np.geomspace(start_lr, end_lr, n_steps).tolist(), batches)
    t0 = time.perf_counter()
    lrs, raw, smooth, stopped = _sweep(model, loss_fn, opt, steps, smoothing=smoothing,
                                       divergence_factor=divergence_factor, device=device,
                                       precision=config.train.precision)
    if len(lrs) < 5:
        raise ConfigError(f"lr range test for {name}: the loss diverged after {len(lrs)} steps, at lr "
                          f"{start_lr * growth ** len(lrs):.3g}; lower start_lr (now {start_lr:g})")
    suggestions = {r: LR_RULES.entry(r).builder(lrs, smooth) for r in LR_RULES.names()}
    return RangeTest(optimizer=name, rule=rule, suggestion=suggestions[rule], lrs=lrs, losses=smooth,
                     raw_losses=raw, seconds=time.perf_counter() - t0, stopped=stopped, suggestions=suggestions)


def _cycling_batches(samples: TrainingSamples, n: int, batch: int, *, generator: torch.Generator,
                     channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The run's training samples (whole images or crops) of ``n`` images without end, ``batch`` at a
    time: a fresh shuffle whenever fewer than ``batch`` images are left."""
    order = torch.empty(0, dtype=torch.long)
    fmt = memory_format(channels_last)
    while True:
        if len(order) < batch:
            order = torch.randperm(n, generator=generator)
        idx, order = order[:batch], order[batch:]
        x, y = samples(idx, generator)
        yield x.contiguous(memory_format=fmt), y


class _Diverged(Exception):
    """Raised from the step's loss check to end the sweep; its message says why."""


def _sweep(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
           steps: Iterable[tuple[float, tuple[torch.Tensor, torch.Tensor]]], *, smoothing: float,
           divergence_factor: float, device: torch.device, precision: str
           ) -> tuple[list[float], list[float], list[float], str]:
    """One optimizer step per ``(lr, batch)`` (the training loop's step, at that lr) until the loss
    diverges: the lrs, raw and smoothed losses (bias-corrected moving average) and why it stopped."""
    lrs, raw, smooth = [], [], []
    average, best, lr = 0.0, math.inf, 0.0

    def batches_at_their_lr() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal lr
        for lr, batch in steps:
            for group in optimizer.param_groups:
                group["lr"] = lr
            yield batch

    def record(value: float) -> None:  # before the step: a diverged loss takes no step
        nonlocal average, best
        if not math.isfinite(value):
            raise _Diverged(f"diverged at lr {lr:.3g} (loss {value})")
        average = (1 - smoothing) * average + smoothing * value
        smoothed = average / (1 - (1 - smoothing) ** (len(raw) + 1))
        lrs.append(lr), raw.append(value), smooth.append(smoothed)
        best = min(best, smoothed)
        if smoothed > divergence_factor * best:
            raise _Diverged(f"diverged at lr {lr:.3g}")

    model.train()
    try:
        train_on_batches(batches_at_their_lr(), model=model, loss_fn=loss_fn, optimizer=optimizer,
                         scaler=grad_scaler(precision), device=device, precision=precision, check=record)
    except _Diverged as stop:
        return lrs, raw, smooth, str(stop)
    return lrs, raw, smooth, "end_lr reached"


def range_test_figure(curves: list[RangeTest]) -> Any:
    """One panel per optimizer: its smoothed loss against the lr (log scale), the suggestion marked,
    the y axis clipped at the divergence (twice the loss at the start), so a blown-up curve leaves
    the others readable. Returns a ``matplotlib.figure.Figure`` (no pyplot: the caller's backend stays)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(min(3.4 * len(curves), 14) + 0.6, 3.4))
    for ax, curve in zip(fig.subplots(1, len(curves), squeeze=False)[0], curves):
        ax.plot(curve.lrs, curve.losses, color="#4c72b0")
        at = int(np.argmin(np.abs(np.log(curve.lrs) - math.log(curve.suggestion))))
        ax.plot([curve.suggestion], [curve.losses[at]], "o", color="#c44e52", label=f"{curve.rule}: {curve.suggestion:.2g}")
        low, start = min(curve.losses), curve.losses[0]
        ax.set_ylim(low * 0.95 if low > 0 else low, 2 * start if start > 0 else max(curve.losses))
        ax.set(xscale="log", xlabel="learning rate", title=f"{curve.optimizer} ({curve.stopped})")
        ax.legend(fontsize=7, frameon=False)
    fig.axes[0].set_ylabel("training loss (smoothed)")
    fig.tight_layout()
    return fig


def plot_range_tests(curves: list[RangeTest], path: str | Path) -> Path:
    """:func:`range_test_figure` written as a PNG to ``path``."""
    range_test_figure(curves).savefig(path, dpi=100)
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
    epochs: int | None  # epochs of each training; None under a step budget
    steps: int | None = None  # optimizer steps of each training, under a step budget

    @property
    def budget(self) -> str:
        """Each training's budget as read: ``10 epochs`` or ``500 steps``."""
        count, unit = (self.steps, "step") if self.steps is not None else (self.epochs, "epoch")
        return f"{count} {unit}{'s' * (count != 1)}"


def refine_lr(config: Config, *, out_dir: str | Path, data: SegData | None = None, optimizer: str | None = None,
              low: float = 1e-5, high: float = 1e-1, n_bisect: int = 2, epochs: int | None = None,
              verbose: bool = False) -> RefineResult:
    """Coarse-to-fine lr search on validation Dice: one training per decade, then bisection.

    Each decade ``low, 10 * low, ..., high`` gets one training of the config's budget (one decade
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
        epochs: epochs of each training; default the config's own budget (``train.epochs``, or
            ``train.steps`` under a step budget: shorten that with ``train.steps`` in the config).
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
    budget = budget_changes(config.train, epochs, "epoch") if epochs else {}
    train_cfg = _with_optimizer(config, name, budget).train  # a budget the config cannot take fails before training
    data = data if data is not None else load_data(config)
    run = functools.partial(_train_at, config, optimizer=name, budget=budget, data=data, out_dir=Path(out_dir),
                            verbose=verbose)
    n_decades = max(1, round(math.log10(high / low)))
    trials = [run(low * (high / low) ** (k / n_decades), "decade") for k in range(n_decades + 1)]
    scores = _scores(trials)
    best = max(scores, key=lambda lr: scores[lr])
    if best in (min(scores), max(scores)):  # the best is at an end: look one decade further out
        trials.append(run(best * 10 if best == max(scores) else best / 10, "decade"))
    for _ in range(n_bisect):
        trials += [run(lr, "bisect") for lr in _bisection_points(_scores(trials))]
    scores = _scores(trials)
    best = max(scores, key=lambda lr: scores[lr])
    return RefineResult(optimizer=name, best_lr=best, best_dice=scores[best], trials=trials,
                        seconds=sum(t["seconds"] for t in trials), epochs=train_cfg.epochs, steps=train_cfg.steps)


def _train_at(config: Config, lr: float, stage: str, *, optimizer: str, budget: dict[str, Any], data: SegData,
              out_dir: Path, verbose: bool) -> dict[str, Any]:
    """One training at ``lr`` with the ``budget`` changes: its trial row (a diverged training scores a Dice of 0)."""
    cfg = _with_optimizer(config, optimizer, {"optimizer.lr": lr, **budget,
                                              "name": f"{config.name}-{optimizer}-lr{lr:.3g}"})
    t0 = time.perf_counter()
    try:
        summary = train(cfg, out_dir=out_dir / f"{optimizer}-lr{lr:.3g}", data=data, verbose=verbose).summary
        dice, status = summary["val"]["dice_mean"], "ok"
    except TrainingDiverged:
        dice, status = 0.0, "diverged"
    return {"lr": lr, "stage": stage, "val_dice": dice, "seconds": time.perf_counter() - t0, "status": status}


def _scores(trials: list[dict[str, Any]]) -> dict[float, float]:
    return {t["lr"]: t["val_dice"] for t in trials}


def _bisection_points(scores: dict[float, float]) -> list[float]:
    """The log-midpoints between the best lr and its nearest tried neighbours."""
    tried = sorted(scores)
    i = tried.index(max(tried, key=lambda lr: scores[lr]))
    return [math.sqrt(tried[i] * tried[j]) for j in (i - 1, i + 1) if 0 <= j < len(tried)]
