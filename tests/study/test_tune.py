"""``segtune tune``'s library: the budget's text, the share of it each trial gets, the built-in space
fitted to a base, the base as trial 0, and a tune ended by its budget (on an injected clock) and continued."""

from __future__ import annotations

import itertools
import json

import pytest
import yaml
from tests.conftest import tiny_tree

from segtune.config import TrainConfig, data_config
from segtune.errors import ConfigError
from segtune.study.records import CONFIG, PARAMS
from segtune.study.space import Space
from segtune.study.budget import (EPOCHS, PROBE_DIR, SPENT, Budget, BudgetGate, parse_budget, run_costs,
                                  trial_epochs, trial_minutes)
from segtune.study.tune import BEST, base_params, fit_space, run_tune, tune_spec


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90.0), ("30m", 1800.0), ("1.5h", 5400.0), ("45", 2700.0), (" 2 M ", 120.0), (".5h", 1800.0),
])
def test_a_budget_is_read_in_seconds_minutes_or_hours_and_a_bare_number_is_minutes(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30 minutes", "1h30m", "-5m", "0", "0s", "m"])
def test_a_budget_that_is_not_a_positive_duration_is_an_error_with_examples(text):
    with pytest.raises(ConfigError, match=r"--budget .*: give a positive duration with a unit, e\.g\. 90s, 30m"):
        parse_budget(text)


@pytest.mark.parametrize("left, margin, min_seconds, minutes", [
    (600.0, 30.0, 0.0, 9.5),    # what is left, less the margin for the trial's end
    (60.0, 60.0, 0.0, None),    # nothing left after the margin: no trial starts
    (100.0, 40.0, 60.0, None),  # 60 s left, not more than the shortest useful trial
    (101.0, 40.0, 60.0, 61.0 / 60),
    (-5.0, 1.0, 0.0, None),     # overspent
])
def test_a_trial_may_train_what_is_left_less_its_margin(left, margin, min_seconds, minutes):
    assert trial_minutes(left, margin, min_seconds) == (None if minutes is None else pytest.approx(minutes))


def test_the_budget_counts_this_commands_time_on_its_clock_after_the_earlier_commands():
    ticks = iter([10.0, 25.0, 70.0])
    budget = Budget(300.0, spent_before=100.0, clock=lambda: next(ticks))  # created at 10
    assert budget.spent() == 115.0 and budget.spent() == 160.0
    assert budget.spent(now=40.0) == 130.0


BASE = {"optimizer": {"name": "sgd", "lr": 0.5}, "model": {"name": "monai_unet", "channels": [8, 16]},
        "loss": {"name": "focal"}, "augment": {"name": "combine", "degrees": 45.0}}
RAW = {"optimizer.name": ["adam"],
       "optimizer.lr": {"when": "optimizer.name", "cases": {"adam": {"low": 1e-4, "high": 1e-2, "log": True},
                                                            "sgd": {"low": 1e-3, "high": 1e-1, "log": True},
                                                            "rmsprop": [1e-3]}},
       "loss.name": ["dice_ce", "dice"],
       "augment.name": ["none", "combine"],
       "augment.degrees": {"when": "augment.name", "cases": {"combine": {"low": 5.0, "high": 30.0}}},
       "model.channels": [[16, 32, 64]]}


def test_the_space_is_fitted_so_that_the_base_is_one_of_its_points():
    space, left_out = fit_space(RAW, BASE)
    assert left_out == []
    assert space["optimizer.name"] == ["sgd", "adam"]  # the base's optimizer joins the list
    # the lr cases of optimizers the list lacks are left out; the base's lr widens its own range
    assert space["optimizer.lr"]["cases"] == {"adam": {"low": 1e-4, "high": 1e-2, "log": True},
                                              "sgd": {"low": 1e-3, "high": 0.5, "log": True}}
    assert space["loss.name"] == ["focal", "dice_ce", "dice"]
    assert space["augment.degrees"]["cases"]["combine"] == {"low": 5.0, "high": 45.0}
    assert space["model.channels"] == [[8, 16], [16, 32, 64]]
    assert RAW["optimizer.name"] == ["adam"]  # the built-in space itself is not changed


def test_an_option_the_bases_component_does_not_take_is_left_out_with_what_depends_on_it():
    base = {**BASE, "model": {"name": "unet", "depth": 2}, "augment": {"name": "flip"}}
    raw = {**RAW, "model.dropout": [0.0, 0.1], "model.base": {"when": "model.channels", "cases": {}}}
    space, left_out = fit_space(raw, base)
    assert left_out == ["model.channels", "model.base"]  # unet has no channels; model.base hung on it
    assert space["model.dropout"] == [0.0, 0.1]  # an option unet has stays
    assert space["augment.name"] == ["flip", "none", "combine"]


def test_the_base_is_enqueued_as_optunas_own_parameters_and_read_back_as_its_values():
    space = Space(fit_space(RAW, BASE)[0])
    params, values = base_params(space, BASE)
    assert values == {"optimizer.name": "sgd", "optimizer.lr": 0.5, "loss.name": "focal", "augment.name": "combine",
                      "augment.degrees": 45.0, "model.channels": [8, 16]}
    # a list value is stored by Optuna as JSON text; a conditional one under its case's name
    assert params == {"optimizer.name": "sgd", "optimizer.lr[sgd]": 0.5, "loss.name": "focal",
                      "augment.name": "combine", "augment.degrees[combine]": 45.0, "model.channels": "[8, 16]"}


def test_the_base_is_what_train_data_builds_for_the_folder(tmp_path):
    from tests.data.writers import write_folder

    folder = write_folder(tmp_path / "cells", n=8, size=16)
    spec, space, left_out = tune_spec(folder, ["train.epochs=3"])
    assert spec.base == data_config(str(folder), ["train.epochs=3"]).to_dict()
    assert spec.name == "tune-cells" and left_out == []
    assert {p.path for p in space.params} == {"optimizer.name", "optimizer.lr", "loss.name", "augment.name",
                                              "augment.degrees", "augment.translate", "model.channels",
                                              "train.foreground_oversample"}
    # the share of foreground crops is searched, the base's (the plan's 0.33) among the values
    share = next(p for p in space.params if p.path == "train.foreground_oversample")
    assert share.choices == (0.33, 0.5, 0.8) and spec.base["train"]["foreground_oversample"] == 0.33


def test_a_run_continued_keeps_the_time_budget_it_started_with(tmp_path):
    import optuna

    study = optuna.create_study()
    study.set_user_attr(EPOCHS, 12)
    gate = BudgetGate(Budget(600.0, clock=lambda: 0.0), study, tmp_path, min_epochs=4, progress=False,
                      train=TrainConfig())
    assert gate() is True
    assert gate.run_changes(tmp_path / "new") == {"train.max_minutes": pytest.approx((600 - 30) / 60),
                                                  "train.epochs": 12}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(
        data_config(None, ["data.source=synthetic", "train.max_minutes=2.5", "train.epochs=7"]).to_dict()))
    assert gate.run_changes(tmp_path / "old") == {"train.max_minutes": 2.5, "train.epochs": 7}
    assert study.user_attrs[SPENT] == 0.0


def test_the_margin_and_the_shortest_trial_come_from_the_finished_runs(tmp_path):
    assert run_costs(tmp_path) == (None, 0.0)
    for name, seconds, train_seconds, epochs in [("0000-seed0", 30.0, 24.0, 4), ("0001-seed0", 12.0, 10.0, 1)]:
        (tmp_path / "trials" / name).mkdir(parents=True)
        (tmp_path / "trials" / name / "summary.json").write_text(json.dumps(
            {"seconds": seconds, "train_seconds": train_seconds, "epochs_run": epochs}))
    # the longest end (set-up and evaluation, plus an epoch): 6 + 6 s and 2 + 10 s; the longest epoch 10 s
    assert run_costs(tmp_path) == (12.0, 10.0)


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0})))
    return path


def test_trials_train_the_config_s_epochs_or_as_many_as_fit_a_quarter_of_the_budget():
    assert trial_epochs(3600.0, 5.0, 10.0, 40, 4) == 40  # 178 epochs would fit: the config's 40
    assert trial_epochs(600.0, 5.0, 10.0, 40, 4) == 28  # (150 s - 10 s) / 5 s
    assert trial_epochs(60.0, 5.0, 10.0, 40, 4) == 4  # 1 fits, but the pruner's first epoch is 4
    assert trial_epochs(60.0, 5.0, 10.0, 40, 0) == 1


def _clock(step: float = 100.0):
    """A clock that moves ``step`` seconds at every reading: the budget reads it once when it is
    made, once before each trial and once at the end."""
    ticks = itertools.count(0.0, step)
    return lambda: next(ticks)


@pytest.mark.slow
def test_a_tune_starts_from_the_base_gives_each_trial_what_is_left_and_stops_when_it_is_spent(tiny_file, tmp_path):
    out = tmp_path / "tune"
    # readings 0 (start), 100, 200, 300 (three trials), 400 (spent: no trial), 500 (the end)
    result = run_tune(tiny_file, budget=350, study_dir=out, progress=False, clock=_clock())
    trials = result.study.get_trials()
    assert len(trials) == 3 and result.ended == "budget" and result.left_out == ("model.channels",)
    assert trials[0].user_attrs[PARAMS] == result.base.params and result.base.number == 0
    assert result.base.params["optimizer.lr"] == 0.01 and result.base.params["loss.name"] == "dice_ce"
    minutes = [t.user_attrs[CONFIG]["train"]["max_minutes"] for t in trials]
    # the probe (one epoch of the base, timed) ended before trial 0: every trial's margin is measured
    assert (out / PROBE_DIR / "summary.json").is_file()
    for left, given in zip((250.0, 150.0, 50.0), minutes):  # less the measured end of a tiny run
        assert (left - 45) / 60 < given < left / 60
    assert result.study.user_attrs[EPOCHS] == 1  # the config's one epoch fits a quarter of the budget
    assert [t.user_attrs[CONFIG]["train"]["epochs"] for t in trials] == [1, 1, 1]
    assert result.spent == 500.0 and result.seconds == 500.0 and result.study.user_attrs[SPENT] == 500.0
    assert (out / BEST).resolve() == (out / "trials" / f"{result.best.number:04d}-seed0").resolve()
    assert (out / BEST / "best.pt").is_file()

    # the same command again: the budget is spent, nothing runs; a larger one continues the study
    again = run_tune(tiny_file, budget=350, study_dir=out, progress=False, clock=_clock())
    assert len(again.study.get_trials()) == 3 and again.ended == "budget" and again.spent == 700.0
    more = run_tune(tiny_file, budget=850, study_dir=out, progress=False, clock=_clock())
    # spent 700 before; readings 100 (one more trial, 50 s left) and 200 (spent); the end at 300
    assert len(more.study.get_trials()) == 4 and more.spent == 1000.0 and more.base.number == 0


def test_under_a_step_budget_a_run_continued_keeps_its_steps_and_a_new_one_gets_the_fitted_steps(tmp_path):
    import optuna

    study = optuna.create_study()
    study.set_user_attr(EPOCHS, 300)  # steps, on the base's step clock
    gate = BudgetGate(Budget(600.0, clock=lambda: 0.0), study, tmp_path, min_epochs=4, progress=False,
                      train=TrainConfig(steps=5000, val_every_steps=50))
    assert gate() is True
    assert gate.run_changes(tmp_path / "new") == {"train.max_minutes": pytest.approx((600 - 30) / 60),
                                                  "train.steps": 300}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(data_config(None, [
        "data.source=synthetic", "train.max_minutes=2.5", "train.epochs=null", "train.steps=70"]).to_dict()))
    assert gate.run_changes(tmp_path / "old") == {"train.max_minutes": 2.5, "train.steps": 70}


def test_costs_count_on_the_asked_clock_and_the_margin_adds_one_period(tmp_path):
    run = tmp_path / "trials" / "0000-seed0"
    run.mkdir(parents=True)
    # 40 steps (2.5 epochs) in 20 s of training, validated 4 times; 26 s in all
    (run / "summary.json").write_text(json.dumps(
        {"seconds": 26.0, "train_seconds": 20.0, "epochs_run": 2.5, "steps_run": 40, "unit": "step"}))
    (run / "metrics.csv").write_text("step,epoch\n10,0.625\n20,1.25\n30,1.875\n40,2.5\n")
    # the margin: 6 s of set-up and end plus a period of 5 s; a step 0.5 s, an epoch 8 s
    assert run_costs(tmp_path, "step") == (11.0, 0.5)
    assert run_costs(tmp_path, "epoch") == (11.0, 8.0)


def test_a_tune_of_a_step_budget_probes_one_epoch_and_trains_its_trials_in_steps(tmp_path):
    path = tmp_path / "steps.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(train={"steps": 6, "val_every_steps": 2, "batch_size": 8, "patience": 0,
                                                    "num_threads": 1})))
    out = tmp_path / "tune"
    # readings 0 (start), 1000 (trial 0 starts with 500 s left), 2000 (spent), 3000 (the end): the trial's
    # own max_minutes (what is left, less the probe's measured set-up and end, on the real clock) is
    # minutes, so a loaded machine cannot cut its 6 steps short
    result = run_tune(path, budget=1500, study_dir=out, progress=False, clock=_clock(1000.0))
    probe = json.loads((out / PROBE_DIR / "summary.json").read_text())
    assert (probe["unit"], probe["steps_run"]) == ("epoch", 2)  # one epoch: 16 images in batches of 8
    assert result.study.user_attrs[EPOCHS] == 6  # the base's 6 steps fit a quarter of the budget
    [trial] = result.study.get_trials()
    assert trial.user_attrs[CONFIG]["train"]["steps"] == 6 and trial.user_attrs[CONFIG]["train"]["epochs"] is None
    summary = json.loads((out / "trials" / "0000-seed0" / "summary.json").read_text())
    assert (summary["unit"], summary["steps_run"]) == ("step", 6)
    assert result.base is not None and result.ended == "budget"
