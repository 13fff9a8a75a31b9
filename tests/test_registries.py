"""Every registered component through one training step, read from the registries themselves.

One case per registered model, loss, optimizer, schedule, augmentation, data source, study
sampler, pruner and LR rule: the component under test takes its default options (a model its
tiny ones, a data source a miniature dataset on disk) and every other part stays at a cheap
default. Each case runs forward, loss, backward, an optimizer step and a schedule step, and checks
the output shape, a finite loss and that the weights moved. A new registration is a new case; a
model or data source without an entry in ``TINY_MODELS`` / ``SOURCE_DATA`` fails the coverage test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import torch

from segtune.components import AUGMENTATIONS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS, build_model, build_scheduler
from segtune.data import SOURCES, SegData, prepare
from segtune.study.space import Space
from segtune.study.spec import PRUNERS, SAMPLERS
from segtune.config import build_config
from segtune.training.lr_find import LR_RULES, lr_range_test
from tests.conftest import tiny_tree
from tests.components.tiny import TINY_MODELS
from tests.data.writers import write_folder, write_nnunet, write_pets

SOURCE_DATA: dict[str, Callable[[Path], dict[str, Any]]] = {  # the options of each source on a miniature dataset
    "synthetic": lambda tmp: {"n_train": 4, "n_val": 2, "n_test": 2, "size": 16},
    "demo": lambda tmp: {},
    "folder": lambda tmp: {"path": str(write_folder(tmp / "folder"))},
    "nifti": lambda tmp: {"path": str(write_nnunet(tmp / "nifti"))},
    "oxford_pet": lambda tmp: {"path": str(write_pets(tmp / "pets")), "size": [16, 16]},
}

KINDS = {"model": MODELS, "loss": LOSSES, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
         "augment": AUGMENTATIONS, "data": SOURCES, "sampler": SAMPLERS, "pruner": PRUNERS, "lr_rule": LR_RULES}
SLOW = {("model", "resnet34_unet"), ("data", "demo")}  # over a second each: a 21 M encoder, the MNI template
CASES = [pytest.param(kind, name, id=f"{kind}-{name}", marks=[pytest.mark.slow] if (kind, name) in SLOW else [])
         for kind, registry in KINDS.items() for name in registry.names()]


def tiny_data(*, source: str = "synthetic", options: dict[str, Any] | None = None, n_classes: int = 3) -> SegData:
    """A prepared dataset of at most 16x16 images; synthetic with ``n_classes`` unless ``source`` says otherwise."""
    if options is None:
        options = {"n_train": 4, "n_val": 2, "n_test": 2, "size": 16, "n_classes": n_classes}
    data = SOURCES.build(source, options, 0)
    return prepare(data, train_fraction=1.0, resize=(16, 16), normalize="zscore", seed=0)


def one_step(data: SegData, *, model: str = "unet", loss: str = "dice_ce", optimizer: str = "adam",
             optimizer_options: dict[str, Any] | None = None, scheduler: str = "none",
             augment: str = "none") -> float:
    """Forward, loss, backward, optimizer and schedule step on four training images; returns the loss.

    Checks the output shape, a finite loss and that the step changed the weights.
    """
    torch.manual_seed(0)
    loss_fn = LOSSES.build(loss, {}, data.n_classes)
    out_channels = 1 if getattr(loss_fn, "single_channel", False) else data.n_classes
    net = build_model(model, TINY_MODELS[model], data.in_channels, out_channels)
    opt = OPTIMIZERS.build(optimizer, optimizer_options or {}, net.parameters())
    sched = build_scheduler(scheduler, {}, opt, length=3)
    images, masks = data.train.images[:4], data.train.masks[:4]
    aug = AUGMENTATIONS.build(augment, {})
    if aug is not None:
        images, masks = aug(images, masks, torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in net.parameters()]
    out = net(images)
    assert out.shape == (len(images), out_channels, *masks.shape[1:])
    value = loss_fn(out, masks)
    assert torch.isfinite(value)
    opt.zero_grad()
    value.backward()
    learning = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters()]
    opt.step()
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(0.5)
    else:
        sched.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, net.parameters())]
    # Every weight with a non-zero gradient moves (a constant image gives the first layer none).
    assert any(learning) and all(m for m, g in zip(moved, learning) if g)
    return float(value.detach())


def test_every_model_and_data_source_has_tiny_settings():
    assert set(TINY_MODELS) == set(MODELS.names())
    assert set(SOURCE_DATA) == set(SOURCES.names())


def _run_sampler(name: str) -> None:
    space = Space({"optimizer.lr": [1e-3, 1e-2]})
    study = optuna.create_study(sampler=SAMPLERS.build(name, {}, space, 0), direction="minimize")
    trial = study.ask()
    values = space.sample_grid(trial) if name == "grid" else space.sample(trial)
    assert values["optimizer.lr"] in (1e-3, 1e-2)
    study.tell(trial, one_step(tiny_data(), optimizer_options={"lr": values["optimizer.lr"]}))


def _run_pruner(name: str) -> None:
    study = optuna.create_study(pruner=PRUNERS.build(name, {}, 3), direction="minimize")
    trial = study.ask()
    trial.report(one_step(tiny_data()), step=1)
    assert trial.should_prune() is False  # the first trial is never pruned: nothing to compare with
    study.tell(trial, 0.5)


# A curve with known answers: the loss falls fastest at 1e-3, is lowest at 1 and diverges after it.
KNOWN_CURVE = ([10.0 ** k for k in range(-5, 3)], [1.0, 0.99, 0.9, 0.5, 0.45, 0.44, 0.6, 2.0])
KNOWN_LR = {"steepest": 1e-3, "valley": 1e-3, "min_tenth": 0.1}  # min_tenth: a tenth of the minimum's lr


def _run_lr_rule(name: str) -> None:
    assert LR_RULES.entry(name).builder(*KNOWN_CURVE) == pytest.approx(KNOWN_LR[name])
    # and through a real range test of the library: its suggestion is the rule read off its own curve
    config = build_config(tiny_tree(optimizer={"name": "sgd", "lr": 0.01}))
    curve = lr_range_test(config, data=tiny_data(), start_lr=1e-4, end_lr=1.0, n_steps=10, rule=name)
    assert curve.rule == name and len(curve.lrs) == len(curve.losses) >= 2
    assert curve.suggestion == LR_RULES.entry(name).builder(curve.lrs, curve.losses)


@pytest.mark.parametrize("kind,name", CASES)
def test_one_training_step(kind, name, tmp_path):
    if kind == "model":
        one_step(tiny_data(), model=name)
    elif kind == "loss":  # binary data: the single-sigmoid losses take two classes only
        one_step(tiny_data(n_classes=2), loss=name)
    elif kind in ("optimizer", "scheduler", "augment"):
        one_step(tiny_data(), **{kind: name})
    elif kind == "data":
        data = tiny_data(source=name, options=SOURCE_DATA[name](tmp_path))
        assert data.train.images.shape[2:] == (16, 16) and len(data.val) and len(data.test)
        one_step(data)
    elif kind == "sampler":
        _run_sampler(name)
    elif kind == "pruner":
        _run_pruner(name)
    elif kind == "lr_rule":
        _run_lr_rule(name)
    else:
        raise AssertionError(f"no step for kind {kind!r}")
