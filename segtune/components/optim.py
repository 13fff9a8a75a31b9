"""Optimizers and learning-rate schedules, registered by name.

Optimizers are built as ``OPTIMIZERS.build(name, options, params)``; each builder declares only
the options its optimizer has, so setting one it lacks (``momentum`` for Adam) is a config error.

Schedules are built with :func:`build_scheduler` and stepped on the run's clock: once per epoch,
after it, with a budget in ``train.epochs``; once per optimizer step with ``train.steps``. Their
counts (``step_size``, ``milestones``, ``restart_every``, the warm-up, the horizon of ``cosine``
and ``poly``) are in that clock's unit: epochs, or steps. ``plateau`` is stepped with the
monitored validation value (larger is better) after each validation, whatever the clock. Every
schedule except ``plateau`` is a multiplier of the base lr as a function of the clock ``e``
(epochs or steps done), written in closed form below and applied by
``torch.optim.lr_scheduler.LambdaLR``. A linear warm-up of ``warmup`` ticks
(``scheduler.warmup_epochs``, or ``scheduler.warmup_steps`` with ``train.steps``) can go in front
of any schedule (for ``plateau`` warm-up and ``patience`` count validations)::

    lr(e) = base * (e + 1) / (warmup + 1)           for e < warmup
    lr(e) = schedule(e - warmup), over length - warmup ticks, after it
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Annotated, Any, Callable, Iterable, Literal

import torch
from pydantic import Field

from segtune.errors import ConfigError
from segtune.registry import Registry

__all__ = [
    "OPTIMIZERS", "SCHEDULERS", "WarmupPlateau", "adadelta", "adagrad", "adam", "adamax", "adamw", "build_scheduler",
    "constant", "cosine", "exponential", "multistep", "plateau", "poly", "rmsprop", "sgd", "step",
]

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")

LR = Annotated[float, Field(gt=0.0, le=10.0)]
Decay = Annotated[float, Field(ge=0.0)]
Factor = Annotated[float, Field(gt=0.0, lt=1.0)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Betas = tuple[Beta, Beta]
Momentum = Annotated[float, Field(ge=0.0, lt=1.0)]
Epochs = Annotated[int, Field(ge=1)]
Params = Iterable


@OPTIMIZERS.register("sgd")
def sgd(params: Params, /, *, lr: LR = 1e-2, momentum: Momentum = 0.9, nesterov: bool = False,
        weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """Stochastic gradient descent with (Nesterov) momentum (torch.optim.SGD)."""
    if nesterov and momentum == 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0 (got 0); set momentum, e.g. 0.9")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Params, /, *, lr: LR = 1e-3, betas: Betas = (0.9, 0.999),
         weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015; torch.optim.Adam); weight decay is L2 added to the gradient."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Params, /, *, lr: LR = 1e-3, betas: Betas = (0.9, 0.999),
          weight_decay: Decay = 1e-2) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019; torch.optim.AdamW)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def adagrad(params: Params, /, *, lr: LR = 1e-2, lr_decay: Decay = 0.0,
            weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """AdaGrad, per-parameter lr from the sum of squared gradients (Duchi et al. 2011; torch.optim.Adagrad)."""
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay)


@OPTIMIZERS.register("adamax")
def adamax(params: Params, /, *, lr: LR = 2e-3, betas: Betas = (0.9, 0.999),
           weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """AdaMax, Adam with the infinity norm (Kingma & Ba 2015; torch.optim.Adamax)."""
    return torch.optim.Adamax(params, lr=lr, betas=betas, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Params, /, *, lr: LR = 1e-3, alpha: Beta = 0.99, momentum: Momentum = 0.0,
            weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """RMSprop, lr scaled by a running mean of squared gradients (Hinton 2012; torch.optim.RMSprop)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adadelta")
def adadelta(params: Params, /, *, lr: LR = 1.0, rho: Beta = 0.9,
             weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """AdaDelta, step sizes from running means of updates and gradients (Zeiler 2012; torch.optim.Adadelta)."""
    return torch.optim.Adadelta(params, lr=lr, rho=rho, weight_decay=weight_decay)


PLATEAU_PATIENCE = "validations without improvement before the lr drops (= epochs when train.val_every is 1)"

Multiplier = Callable[[int, float], float]  # (epochs or steps after warm-up, base lr) -> lr


def _per_epoch(optimizer: torch.optim.Optimizer, warmup_epochs: int, lr_at: Multiplier) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(base: float) -> Callable[[int], float]:
        def at(epoch: int) -> float:
            if epoch < warmup_epochs:
                return (epoch + 1) / (warmup_epochs + 1)
            return lr_at(epoch - warmup_epochs, base) / base

        return at

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g["lr"]) for g in optimizer.param_groups])


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant learning rate."""
    return _per_epoch(optimizer, warmup_epochs, lambda e, base: base)


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /, *, step_size: Epochs = 10,
         gamma: Factor = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """lr = base * gamma ** (epoch // step_size), as torch StepLR."""
    return _per_epoch(optimizer, warmup_epochs, lambda e, base: base * gamma ** (e // step_size))


@SCHEDULERS.register("multistep")
def multistep(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /, *,
              milestones: tuple[Epochs, ...] = (30, 60, 90), gamma: Factor = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """lr = base * gamma ** (number of milestones <= epoch), as torch MultiStepLR."""
    marks = sorted(milestones)
    return _per_epoch(optimizer, warmup_epochs, lambda e, base: base * gamma ** bisect_right(marks, e))


@SCHEDULERS.register("exponential")
def exponential(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /, *,
                gamma: Factor = 0.95) -> torch.optim.lr_scheduler.LRScheduler:
    """lr = base * gamma ** epoch, as torch ExponentialLR."""
    return _per_epoch(optimizer, warmup_epochs, lambda e, base: base * gamma**e)


def _cosine_phase(epoch: int, n_epochs: int, period: int | None, mult: int) -> float:
    if period is None:
        return min(epoch, n_epochs) / n_epochs
    while epoch >= period:
        epoch, period = epoch - period, period * mult
    return epoch / period


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /, *, min_lr: Decay = 0.0,
           restart_every: Epochs | None = None, restart_mult: Epochs = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """lr = min_lr + (base - min_lr) (1 + cos(pi t)) / 2, t = epoch / epochs, or the share of the current restart cycle
    (Loshchilov & Hutter 2017, SGDR; as torch CosineAnnealingLR / CosineAnnealingWarmRestarts).

    ``restart_every`` (cycle length in epochs; None = one cycle over the run) and ``restart_mult``
    (each cycle that many times longer than the previous) turn on warm restarts.
    """
    horizon = n_epochs - warmup_epochs

    def lr_at(e: int, base: float) -> float:
        t = _cosine_phase(e, horizon, restart_every, restart_mult)
        return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t)) / 2

    return _per_epoch(optimizer, warmup_epochs, lr_at)


@SCHEDULERS.register("poly")
def poly(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /, *,
         power: Annotated[float, Field(gt=0.0)] = 0.9) -> torch.optim.lr_scheduler.LRScheduler:
    """lr = base * (1 - epoch / epochs) ** power, nnU-Net's schedule (Isensee et al. 2021; torch PolynomialLR)."""
    horizon = n_epochs - warmup_epochs
    return _per_epoch(optimizer, warmup_epochs, lambda e, base: base * max(0.0, 1 - e / horizon) ** power)


class WarmupPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` (mode ``max``) with a linear warm-up over its first ``warmup_epochs`` steps.

    It is stepped after each validation, so its warm-up and its ``patience`` count validations
    (= epochs when ``train.val_every`` is 1). During warm-up the monitored value is ignored; after
    it, the plateau rule applies.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int, **kwargs: Any) -> None:
        super().__init__(optimizer, mode="max", **kwargs)
        self.warmup_epochs, self.warmup_epochs_done = warmup_epochs, 0
        self.warmup_base_lrs = [g["lr"] for g in optimizer.param_groups]
        self._set_warmup_lr()

    def _set_warmup_lr(self) -> None:
        share = min(1.0, (self.warmup_epochs_done + 1) / (self.warmup_epochs + 1))
        for group, base in zip(self.optimizer.param_groups, self.warmup_base_lrs):
            group["lr"] = base * share

    def step(self, metrics: float, epoch: int | None = None) -> None:  # noqa: D102 - see the class
        if self.warmup_epochs_done < self.warmup_epochs:
            self.warmup_epochs_done += 1
            self._set_warmup_lr()
            return
        super().step(metrics)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102 - as torch's
        # checkpoints written before the warm-up counters were renamed hold n_warmup and n_warmup_done
        renamed = {"n_warmup": "warmup_epochs", "n_warmup_done": "warmup_epochs_done"}
        super().load_state_dict({renamed.get(k, k): v for k, v in state_dict.items()})


@SCHEDULERS.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, n_epochs: int, warmup_epochs: int, /, *,
            patience: Annotated[int, Field(ge=0, description=PLATEAU_PATIENCE)] = 5, factor: Factor = 0.1,
            min_lr: Decay = 0.0,
            monitor: Literal["val.dice_mean", "val.loss"] | None = None,  # None: follow train.monitor
            ) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Multiply the lr by factor after patience validations without improvement of the monitored value (torch ReduceLROnPlateau).

    Stepped after each validation: ``patience`` and the warm-up count validations (= epochs when
    ``train.val_every`` is 1), while ``train.patience`` (early stopping) counts epochs.
    """
    scheduler = WarmupPlateau(optimizer, warmup_epochs, patience=patience, factor=factor, min_lr=min_lr)
    scheduler.monitor = monitor
    return scheduler


def build_scheduler(name: str, options: dict[str, Any], optimizer: torch.optim.Optimizer, *, length: int,
                    warmup: int = 0, unit: str = "epochs") -> torch.optim.lr_scheduler.LRScheduler | WarmupPlateau:
    """Build a registered schedule, with ``warmup`` ticks of linear warm-up in front.

    A tick is the run's clock: an epoch (``train.epochs``) or an optimizer step (``train.steps``);
    the caller steps the schedule once per tick.

    Args:
        name: a registered schedule (``segtune list`` shows them).
        options: its options, their counts in ticks.
        optimizer: the optimizer whose lr it sets; its current lr is the base lr.
        length: length of the run in ticks; ``cosine`` and ``poly`` end there.
        warmup: ticks of linear warm-up, ``lr = base * (e + 1) / (warmup + 1)``.
        unit: the tick's name in messages, ``"epochs"`` or ``"steps"``.

    Raises:
        ConfigError: the warm-up leaves no ticks for the schedule.
        RegistryError: unknown name or option.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> sched = build_scheduler("poly", {}, opt, length=10, warmup=2)
    """
    if warmup >= length:
        raise ConfigError(f"scheduler.warmup_{unit}={warmup} leaves no {unit} of train.{unit}={length}; "
                          f"use fewer warm-up {unit} or more {unit}")
    return SCHEDULERS.build(name, options, optimizer, length, warmup)
