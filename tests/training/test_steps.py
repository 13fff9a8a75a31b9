"""Budgets in optimizer steps: the same run as an epoch budget when the counts agree, validation
every n steps across epoch boundaries, patience in validations, schedules on the step clock, resume."""

import csv
import math

import pytest

from segtune.config import build_config
from segtune.errors import ConfigError
from segtune.training.loop import train

from tests.conftest import tiny_tree

# 16 training images in batches of 8: 2 optimizer steps an epoch
PER_EPOCH = 2
COMMON = {"batch_size": 8, "patience": 0, "num_threads": 1}


def steps_tree(steps, every=None, **train_fields):
    return tiny_tree(train={"steps": steps, "val_every_steps": every, **COMMON, **train_fields})


class Crash(Exception):
    pass


def test_steps_and_epochs_are_the_same_run_when_the_counts_agree(tmp_path):
    # 3 epochs of 2 batches = 6 steps validated every 2; a step schedule of 2 epochs = 4 steps
    shared = ["augment.name=combine", "scheduler.name=step", "scheduler.gamma=0.5"]
    by_epoch = build_config(tiny_tree(train={"epochs": 3, **COMMON}), shared + ["scheduler.step_size=2"])
    by_step = build_config(steps_tree(3 * PER_EPOCH, PER_EPOCH), shared + ["scheduler.step_size=4"])
    a = train(by_epoch, out_dir=tmp_path / "epochs", verbose=False)
    b = train(by_step, out_dir=tmp_path / "steps", verbose=False)
    for key in ("train_loss", "val_loss", "val_dice_mean", "lr"):
        assert [r[key] for r in b.history] == pytest.approx([r[key] for r in a.history], rel=1e-5), key
    assert [r["lr"] for r in a.history] == pytest.approx([0.01, 0.01, 0.005])
    assert [r["step"] for r in b.history] == [2, 4, 6] and [r["epoch"] for r in b.history] == [1, 2, 3]
    assert b.summary["test"]["dice_mean"] == pytest.approx(a.summary["test"]["dice_mean"], rel=1e-5)
    assert (b.summary["best_epoch"], b.summary["epochs_run"]) == (a.summary["best_epoch"], a.summary["epochs_run"])
    assert (b.summary["steps_run"], b.summary["unit"], a.summary["steps_run"], a.summary["unit"]) == (6, "step", 6, "epoch")


def test_validation_every_n_steps_runs_across_epochs(tmp_path):
    # 5 steps validated every 3: rows at steps 3 and 5 (the end), 2.5 epochs
    result = train(build_config(steps_tree(5, 3)), out_dir=tmp_path / "run", verbose=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [(r["step"], r["epoch"]) for r in rows] == [("3", "1.5"), ("5", "2.5")]
    assert all(r["val_dice_mean"] != "" for r in rows)
    assert (result.summary["steps_run"], result.summary["epochs_run"], result.summary["stopped"]) == (5, 2.5, None)


def test_patience_counts_validations(tmp_path):
    # nothing improves by min_delta: the best is the first validation (step 1), two more stop the run
    cfg = build_config(steps_tree(20, 1, patience=2, min_delta=0.5), ["optimizer.lr=1e-9"])
    result = train(cfg, out_dir=tmp_path / "run", verbose=False)
    assert (result.summary["best_step"], result.summary["steps_run"]) == (1, 3)
    assert result.summary["stopped"] == "early stopping (patience=2, monitor=val.dice_mean)"


def test_a_cosine_schedule_follows_the_steps(tmp_path):
    # validated after every step: each row's lr is the schedule's at that row's first step
    result = train(build_config(steps_tree(4, 1), ["scheduler.name=cosine"]), out_dir=tmp_path / "run", verbose=False)
    assert [r["lr"] for r in result.history] == pytest.approx([0.01 * (1 + math.cos(math.pi * s / 4)) / 2
                                                                for s in range(4)])


def test_resume_in_the_middle_of_an_epoch_matches_the_uninterrupted_run(tmp_path):
    # killed after the validation at step 3, halfway through epoch 2: its shuffle is in last.pt
    cfg = build_config(steps_tree(5, 3), ["augment.name=combine", "model.dropout=0.2"])
    full = train(cfg, out_dir=tmp_path / "full", verbose=False)

    def crash(at, row):
        if at == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, out_dir=tmp_path / "cut", callbacks=[crash], verbose=False)
    resumed = train(cfg, out_dir=tmp_path / "cut", verbose=False, resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.summary["test"] == full.summary["test"]


@pytest.mark.parametrize("fields, message", [
    ({"epochs": 3, "steps": 6}, r"train.epochs=3 and train.steps=6 are both set; .* --set train.epochs=null"),
    ({"epochs": 3, "val_every_steps": 2}, r"train.val_every_steps=2 needs train.steps; .* train.val_every"),
    ({"steps": 6, "val_every": 2}, r"train.val_every=2 counts epochs and train.steps=6 is set; use train.val_every_steps"),
])
def test_a_budget_is_epochs_or_steps(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_config(tiny_tree(train=fields))


def test_warmup_counts_the_budgets_unit():
    with pytest.raises(ConfigError, match="scheduler.warmup_epochs counts epochs and the budget is train.steps; "
                                          "use scheduler.warmup_steps"):
        build_config(steps_tree(6), ["scheduler.warmup_epochs=1"])
    with pytest.raises(ConfigError, match="scheduler.warmup_steps=6 must be less than train.steps=6"):
        build_config(steps_tree(6), ["scheduler.warmup_steps=6"])
    assert build_config(tiny_tree()).train.epochs == 2 and build_config({}).train.epochs == 40
