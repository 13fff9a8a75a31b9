"""Optimizers: every one builds, steps and rejects options it lacks. Schedules: lr sequences match their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from segtune.config import build_config
from segtune.errors import ConfigError
from segtune.components.optim import OPTIMIZERS, SCHEDULERS, build_scheduler
from segtune.registry import RegistryError

BASE = 0.1


def _optimizer(lr: float = BASE) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(name: str, options: dict, n_epochs: int, warmup: int = 0, values=None) -> list[float]:
    """The lr of each epoch, the scheduler stepped after each epoch as the training loop does."""
    opt = _optimizer()
    sched = build_scheduler(name, options, opt, length=n_epochs, warmup=warmup)
    out = []
    for epoch in range(n_epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(values[epoch])
        else:
            sched.step()
    return out


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_with_its_defaults_and_lowers_a_quadratic(name):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = OPTIMIZERS.build(name, {"lr": 0.05 if name != "adadelta" else 1.0}, [w])
    start = float((w**2).sum().detach())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w**2).sum()) < start
    assert opt.param_groups[0]["weight_decay"] == OPTIMIZERS.defaults(name)["weight_decay"]


@pytest.mark.parametrize("name,option", [("adam", "momentum"), ("adagrad", "betas"), ("sgd", "betas"),
                                         ("adadelta", "momentum"), ("rmsprop", "nesterov")])
def test_an_option_the_optimizer_lacks_is_a_config_error(name, option):
    with pytest.raises(ConfigError, match=f"optimizer {name!r} has no option {option!r}"):
        build_config({"optimizer": {"name": name, option: 0.9}})


def test_optimizer_options_reach_torch():
    opt = OPTIMIZERS.build("sgd", {"lr": 0.3, "momentum": 0.5, "nesterov": True, "weight_decay": 1e-4},
                           [torch.nn.Parameter(torch.zeros(1))])
    assert (opt.defaults["lr"], opt.defaults["momentum"], opt.defaults["nesterov"]) == (0.3, 0.5, True)
    adamw = OPTIMIZERS.build("adamw", {"betas": [0.8, 0.9]}, [torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(ConfigError, match="nesterov=true needs optimizer.momentum > 0"):
        OPTIMIZERS.build("sgd", {"momentum": 0.0, "nesterov": True}, [torch.nn.Parameter(torch.zeros(1))])


def _cosine(e, total, lo=0.0):
    return lo + (BASE - lo) * (1 + math.cos(math.pi * e / total)) / 2


DEFINITIONS = {  # name: (options, epochs, lr of epoch e by the schedule's definition)
    "none": ({}, 6, lambda e: BASE),
    "step": ({"step_size": 2, "gamma": 0.5}, 7, lambda e: BASE * 0.5 ** (e // 2)),
    "multistep": ({"milestones": [2, 5], "gamma": 0.1}, 7, lambda e: BASE * 0.1 ** ((e >= 2) + (e >= 5))),
    "exponential": ({"gamma": 0.9}, 6, lambda e: BASE * 0.9**e),
    "cosine": ({"min_lr": 0.01}, 8, lambda e: _cosine(e, 8, 0.01)),
    "poly": ({}, 10, lambda e: BASE * (1 - e / 10) ** 0.9),
}


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_schedule_lr_sequence_matches_its_definition(name):
    options, epochs, lr = DEFINITIONS[name]
    assert _lrs(name, options, epochs) == pytest.approx([lr(e) for e in range(epochs)])


def test_every_registered_schedule_has_a_definition_test():
    assert set(SCHEDULERS.names()) == set(DEFINITIONS) | {"plateau"}


@pytest.mark.parametrize("name,torch_scheduler", [
    ("step", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    ("multistep", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.1)),
    ("exponential", lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=0.01)),
    ("poly", lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=10, power=0.9)),
])
def test_schedules_agree_with_torch(name, torch_scheduler):
    options, epochs, _ = DEFINITIONS[name]
    opt = _optimizer()
    sched = torch_scheduler(opt)
    ref = []
    for _ in range(epochs):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert _lrs(name, options, epochs) == pytest.approx(ref)


def test_cosine_warm_restarts_follow_sgdr():
    # Cycles of 2, 4, 8 epochs (restart_mult 2), each a half cosine from BASE towards 0.
    ours = _lrs("cosine", {"restart_every": 2, "restart_mult": 2}, 14)
    phases = [(0, 2), (1, 2), (0, 4), (1, 4), (2, 4), (3, 4)] + [(t, 8) for t in range(8)]
    assert ours == pytest.approx([_cosine(t, period) for t, period in phases])
    opt = _optimizer()
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2)
    ref = []
    for _ in range(14):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        ref_sched.step()
    assert ours == pytest.approx(ref)


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_linear_warmup_goes_in_front_of_every_schedule(name):
    options, epochs, _ = DEFINITIONS[name]
    warm = _lrs(name, options, epochs + 3, warmup=3)
    # Warm-up: base * (e + 1) / 4 for e = 0, 1, 2; then the schedule from its start over the remaining epochs.
    assert warm[:3] == pytest.approx([BASE * 0.25, BASE * 0.5, BASE * 0.75])
    assert warm[3:] == pytest.approx(_lrs(name, options, epochs))


def test_plateau_reduces_after_patience_and_warms_up():
    values = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]  # improves twice, then flat
    lrs = _lrs("plateau", {"patience": 2, "factor": 0.5}, 8, values=values)
    # Best 0.3 at epoch 2; epochs 3 and 4 are within patience; the third flat epoch (5) halves the lr.
    assert lrs == pytest.approx([BASE] * 6 + [BASE * 0.5] * 2)
    warm = _lrs("plateau", {"patience": 2, "factor": 0.5}, 10, warmup=2, values=[0.0, 0.0] + values)
    assert warm == pytest.approx([BASE / 3, 2 * BASE / 3] + lrs)


def test_warmup_must_leave_epochs_for_the_schedule():
    with pytest.raises(ConfigError, match="warmup_epochs=5 leaves no epochs of train.epochs=5"):
        build_scheduler("none", {}, _optimizer(), length=5, warmup=5)
    # The config says so when it is loaded, before any data is read.
    with pytest.raises(ConfigError, match="scheduler.warmup_epochs=5 must be less than train.epochs=5"):
        build_config({"scheduler": {"name": "poly", "warmup_epochs": 5}, "train": {"epochs": 5}})


def test_unknown_schedule_suggests_a_name():
    with pytest.raises(RegistryError, match="did you mean 'cosine'"):
        build_scheduler("cosin", {}, _optimizer(), length=5)


def test_training_logs_the_lr_of_every_epoch(tmp_path):
    from tests.conftest import tiny_tree
    from segtune.training.loop import train

    tree = tiny_tree(scheduler={"name": "step", "step_size": 1, "gamma": 0.5, "warmup_epochs": 1})
    tree["train"]["epochs"] = 3
    result = train(build_config(tree), out_dir=tmp_path / "run", verbose=False)
    assert [row["lr"] for row in result.history] == pytest.approx([0.005, 0.01, 0.005])
