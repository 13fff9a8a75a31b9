"""The search space: grid cells of conditional values, ranges checked at their ends, component
switches in a sampled configuration, and a finite integer range."""

from __future__ import annotations

import pytest
from tests.conftest import tiny_tree, write_study

from segtune.errors import ConfigError
from segtune.study import run_study
from segtune.study.space import Space
from segtune.study.spec import load_study


def test_conditional_values_make_one_grid_cell_per_valid_combination():
    # lr per optimizer: 2 adam cells + 1 sgd cell, never an sgd cell with an adam lr
    space = Space({"optimizer.name": ["adam", "sgd"], "train.batch_size": {"low": 4, "high": 8, "step": 4},
                   "optimizer.lr": {"when": "optimizer.name", "cases": {"adam": [0.01, 0.001], "sgd": [0.1]}}})
    assert space.n_grid_cells() == 3 * 2
    assert sorted(space.grid()["train.batch_size"]) == [4, 8]


def test_two_ranges_whose_low_ends_together_are_invalid_validate(tmp_path):
    # tversky with alpha = beta = 0 is refused, but ranges from 0 hold valid draws: each end of
    # a range is probed with the other entries at their centre
    space = {"loss.alpha": {"low": 0.0, "high": 1.0}, "loss.beta": {"low": 0.0, "high": 1.0}}
    spec, parsed = load_study(write_study(tmp_path, method="random", n_trials=2, space=space,
                                          set={"loss.name": "tversky"}))
    assert parsed.validate_against(spec.base) == 5


def test_a_space_that_switches_a_component_leaves_out_the_old_ones_options():
    # the base's step schedule has step_size and gamma; cosine takes neither. Adam's betas are
    # left out for sgd, while the lr given by the space for sgd is kept.
    from segtune.study.space import config_for

    base = tiny_tree(scheduler={"name": "step", "step_size": 3, "gamma": 0.5, "warmup_epochs": 1},
                     optimizer={"name": "adam", "lr": 0.01, "betas": [0.8, 0.9]},
                     train={"epochs": 4, "batch_size": 8, "patience": 0})
    cosine = config_for(base, {"scheduler.name": "cosine", "optimizer.name": "sgd", "optimizer.lr": 0.1})
    assert cosine.scheduler.name == "cosine" and "step_size" not in cosine.scheduler.options
    assert cosine.scheduler.warmup_epochs == 1  # a field of every schedule stays
    assert cosine.optimizer.options["lr"] == 0.1 and "betas" not in cosine.optimizer.options
    step = config_for(base, {"scheduler.name": "step", "optimizer.name": "adam"})
    assert step.scheduler.options["step_size"] == 3 and step.optimizer.options["betas"] == (0.8, 0.9)
    # an option the new component lacks, set by the space itself, is still an error
    with pytest.raises(ConfigError, match="has no option 'betas'"):
        config_for(base, {"optimizer.name": "sgd", "optimizer.betas": [0.9, 0.99]})


def test_a_stepless_integer_range_is_finite_and_a_study_of_it_ends(tmp_path):
    # batch size 4 or 5 (a range of integers without a step): random draws repeat them, and the
    # study ends once both are trained instead of drawing forever for n_trials 10
    path = write_study(tmp_path, method="random", n_trials=10, seed=2,
                       space={"train.batch_size": {"low": 4, "high": 5}})
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    trained = [t for t in trials if "same_as" not in t.user_attrs]
    assert sorted(t.params["train.batch_size"] for t in trained) == [4, 5] and len(trials) < 10 * 10
