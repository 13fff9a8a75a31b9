"""Cross-validation and racing repeats in a study, and the paired verdicts between two trials."""

from __future__ import annotations

import random
import statistics

import pytest
from tests.conftest import tiny_tree, write_study

from segtune.study import run_study
from segtune.study.racing import look_confidence, race_call
from segtune.study.spec import Racing
from segtune.study.stats import ranking, verdict

SMALL = {"source": "synthetic", "n_train": 8, "n_val": 4, "n_test": 4, "size": 16, "n_classes": 3}


@pytest.mark.slow
def test_cv_times_repeats_trains_every_fold_of_every_seed(tmp_path):
    base = tiny_tree(data=SMALL, train={"epochs": 1, "batch_size": 8, "patience": 0, "num_threads": 1},
                     metrics={"surface": False})
    path = write_study(tmp_path, base=base, space={"optimizer.lr": [0.01]}, repeats=2, cv=2)
    (trial,) = run_study(path, study_dir=tmp_path / "out").get_trials()
    runs = trial.user_attrs["runs"]
    # K x R runs: folds 0 and 1 of seeds 0 and 1, each in its own directory
    assert [(r["seed"], r["fold"]) for r in runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({r["run_dir"] for r in runs}) == 4
    assert trial.value == pytest.approx(statistics.fmean(r["value"] for r in runs))
    # the two folds' val cases are disjoint and together the 12 train and val images; test is apart
    val = [set(r["cases"]["val"]) for r in runs[:2]]
    assert not val[0] & val[1] and len(val[0] | val[1]) == 12
    assert set(runs[0]["cases"]["test"]) == set(runs[1]["cases"]["test"]) and not set(runs[0]["cases"]["test"]) & val[0]
    # the pruners follow the first run only: one curve, of its one epoch
    assert list(trial.intermediate_values) == [1]


RACE = Racing(min=2, max=5)


def test_racing_stops_a_clearly_worse_configuration_after_min_seeds():
    leader = {0: 0.90, 1: 0.91, 2: 0.905, 3: 0.90, 4: 0.91}
    worse = {0: 0.60, 1: 0.62}
    call = race_call(worse, leader, leader_number=0, racing=RACE, maximize=True)
    assert not call.more and "behind trial 0" in call.reason


def test_racing_gives_a_level_configuration_more_seeds_up_to_max():
    leader = {0: 0.90, 1: 0.91, 2: 0.905, 3: 0.90, 4: 0.91}
    level = {0: 0.905, 1: 0.90}
    assert race_call(level, leader, leader_number=0, racing=RACE, maximize=True).more
    assert not race_call({s: 0.9 for s in range(5)}, leader, leader_number=0, racing=RACE, maximize=True).more
    # the first configuration has no leader to race: it trains every seed
    assert race_call(level, None, leader_number=None, racing=RACE, maximize=True).more


def test_racing_looks_share_the_error_rate():
    # 3 looks (after 2, 3 and 4 seeds) at 1 - 0.05 / 3 each: at most 5 % over all of them
    assert look_confidence(RACE) == pytest.approx(1 - 0.05 / 3)


def test_racing_needs_min_below_max():
    with pytest.raises(ValueError, match="min \\(5\\) must be less than max \\(5\\)"):
        Racing(min=5, max=5)


def cases(values: dict[str, float], seeds=range(3), shift=0.0, noise=0.0, rng=None):
    rng = rng or random.Random(0)
    return {(s, None, c): v + shift + rng.gauss(0, noise) for s in seeds for c, v in values.items()}


CASES = {f"case{i}": 0.7 + 0.02 * i for i in range(12)}


def test_configurations_differing_only_by_seed_show_no_difference():
    rng = random.Random(1)
    a, b = cases(CASES, noise=0.01, rng=rng), cases(CASES, noise=0.01, rng=rng)
    v = verdict(1, 2, seeds=({0: 0.8, 1: 0.81}, {0: 0.81, 1: 0.8}), cases=(a, b))
    assert v.word == "no difference" and v.test == "Wilcoxon signed-rank over 12 cases"
    assert v.difference.low < 0 < v.difference.high and v.p_value > 0.05


def test_a_clearly_worse_configuration_is_worse():
    rng = random.Random(2)
    a, b = cases(CASES, noise=0.01, rng=rng), cases(CASES, shift=-0.1, noise=0.01, rng=rng)
    v = verdict(2, 1, seeds=({}, {}), cases=(b, a))
    assert v.word == "worse" and v.difference.high < 0 and v.p_value < 0.01


def test_few_cases_fall_back_to_the_paired_t_over_seeds():
    few = {"a": 0.8, "b": 0.7}
    v = verdict(1, 2, seeds=({0: 0.9, 1: 0.91, 2: 0.9}, {0: 0.7, 1: 0.71, 2: 0.71}),
                cases=(cases(few), cases(few, shift=-0.2)))
    assert v.test == "paired t over 3 seeds" and v.word == "better"


def test_a_minimised_objective_counts_lower_as_better():
    v = verdict(1, 2, seeds=({0: 2.0, 1: 2.1, 2: 2.05}, {0: 5.0, 1: 5.2, 2: 5.1}), maximize=False)
    assert v.word == "better" and v.difference.mean > 0


def test_ranking_ties_the_level_and_orders_the_separated():
    rng = random.Random(3)
    a = cases(CASES, noise=0.005, rng=rng)
    b = cases(CASES, noise=0.005, rng=rng)
    c = cases(CASES, shift=-0.1, noise=0.005, rng=rng)
    text, steps = ranking([(4, {}, a), (7, {}, b), (2, {}, c)])
    assert text == "#4 = #7 > #2"
    assert [v.word for v in steps] == ["no difference", "better"]


def test_a_racing_study_stops_the_clearly_worse_configuration_after_min_seeds(tmp_path, monkeypatch):
    # training stands in: a run's objective is its lr's level plus a little noise by seed, so the
    # two configurations are far apart whatever the order the grid draws them in
    import types

    import segtune.study.objective

    level = {0.01: 0.9, 0.001: 0.3}

    def train(config, **kwargs):
        value = level[config.optimizer.options["lr"]] + 0.01 * ((config.seed * 7) % 3)
        split = {"dice_mean": value, "per_case": {}}
        return types.SimpleNamespace(summary={"val": split, "test": split, "epochs_run": 1, "best_epoch": 1,
                                              "class_names": ["background", "a"]})

    monkeypatch.setattr(segtune.study.objective, "train", train)
    path = write_study(tmp_path, repeats={"min": 2, "max": 4})
    first, second = sorted(run_study(path, study_dir=tmp_path / "out").get_trials(), key=lambda t: t.number)
    # the first has no leader and trains every seed; the second is separated from it after min seeds
    assert len(first.user_attrs["runs"]) == 4 and len(second.user_attrs["runs"]) == 2
    assert second.user_attrs["race"].startswith("separated")


@pytest.mark.parametrize("objective, direction", [("test.hd95_mean", "minimize"), ("val.avd_mean", "minimize"),
                                                  ("test.nsd_mean", "maximize"), ("val.case_dice_mean", "maximize")])
def test_surface_objectives_have_their_direction(objective, direction):
    from tests.conftest import study_tree

    from segtune.study.spec import parse_study

    spec, _ = parse_study(study_tree(objective=objective))
    assert spec.resolved_direction == direction and spec.epoch_key is None


def test_a_surface_objective_needs_the_surface_metrics():
    from tests.conftest import study_tree

    from segtune.errors import ConfigError
    from segtune.study.spec import parse_study

    tree = study_tree(objective="test.hd95_mean")
    tree["base"]["metrics"] = {"surface": False}
    with pytest.raises(ConfigError, match="is a surface metric, but the base config sets metrics.surface: false"):
        parse_study(tree)
