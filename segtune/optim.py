"""Optimizers and learning-rate schedules, registered by name.

Optimizers are built as ``OPTIMIZERS.build(name, options, params)``; schedules as
``SCHEDULERS.build(name, options, optimizer, epochs)`` and stepped once per epoch
(``reduce-on-plateau`` with the monitored validation value).
"""

from __future__ import annotations

from typing import Annotated, Iterable

import torch
from pydantic import Field

from segtune.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")

LR = Annotated[float, Field(gt=0.0, le=10.0)]
Decay = Annotated[float, Field(ge=0.0)]
Factor = Annotated[float, Field(gt=0.0, lt=1.0)]


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, /, *, lr: LR = 1e-2, momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9,
        nesterov: bool = False, weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """Stochastic gradient descent with momentum (torch.optim.SGD)."""
    if nesterov and momentum == 0:
        raise ValueError("optimizer.nesterov needs optimizer.momentum > 0")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Iterable, /, *, lr: LR = 1e-3,
         betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999),
         weight_decay: Decay = 0.0) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015, torch.optim.Adam); weight decay is L2 added to the gradient."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer, epochs: int, /) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, epochs: int, /, *, step_size: Annotated[int, Field(ge=1)] = 10,
         gamma: Factor = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """Multiply the lr by ``gamma`` every ``step_size`` epochs (torch StepLR)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULERS.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, epochs: int, /, *, patience: Annotated[int, Field(ge=0)] = 5,
            factor: Factor = 0.1, min_lr: Decay = 0.0) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Multiply the lr by ``factor`` after ``patience`` epochs without improvement of the monitored value."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=patience,
                                                      factor=factor, min_lr=min_lr)
