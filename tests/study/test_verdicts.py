"""Cross-validation and racing repeats in a study, and the paired verdicts between two trials."""

from __future__ import annotations

import random
import statistics

import numpy as np
import optuna
import pytest
from scipy.stats import studentized_range
from scipy.optimize import brentq
from scipy.stats import norm as normal
from scipy.stats import t as t_dist
from tests.conftest import tiny_tree, write_study

from segtune.study import run_study
from segtune.study.racing import look, look_confidence, mcb_critical, race
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
    # the seeds pair the runs: seed 1 is better for every configuration, a shared effect the model removes
    block = {0: [0.90, 0.92], 1: [0.60, 0.62], 2: [0.895, 0.91]}
    looked = look(block, RACE)
    assert looked.leader == 0 and looked.stopped == {1: "separated: behind trial 0 on 2 seeds"}
    # Hsu's MCB at 1 - 0.05 / 3 with (3 - 1) x (2 - 1) = 2 degrees of freedom: the residuals of
    # two seeds are +-(d - mean d) / 2 of each configuration's seed difference d (0.02, 0.02, 0.015)
    residual_ss = 2 * ((0.02 - 0.055 / 3) ** 2 * 2 + (0.015 - 0.055 / 3) ** 2) / 4
    h = mcb_critical(1 - 0.05 / 3, 3, 2)
    assert looked.half_width == pytest.approx(h * (residual_ss / 2 / 2) ** 0.5) == pytest.approx(0.0139, abs=1e-4)
    # narrower than Tukey's all-pairwise interval at the same level, which the race does not need
    assert h < 0.8 * studentized_range.ppf(1 - 0.05 / 3, 3, 2)


@pytest.mark.parametrize("k, df", [(2, 1), (2, 4), (3, 2), (6, 5), (6, 12)])
def test_mcb_critical_value_covers_the_best_at_its_level(k, df):
    confidence = 1 - 0.05 / 3
    h = mcb_critical(confidence, k, df)
    if k == 2:  # one comparison: the one-sided t quantile of the difference of two means
        assert h == pytest.approx(2 ** 0.5 * t_dist.ppf(confidence, df), rel=1e-4)
    # by simulation: of k equal configurations, none's mean is more than h estimated standard errors
    # above the first's with probability `confidence` (means in units of their standard error)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((400_000, k))
    s = np.sqrt(rng.chisquare(df, 400_000) / df)
    covered = float(np.mean((z[:, 1:] - z[:, :1]).max(axis=1) <= h * s))
    assert covered == pytest.approx(confidence, abs=0.0015)


def test_mcb_critical_value_at_the_edges_of_its_inputs():
    # many degrees of freedom: the limit of a known variance (the one-sided max of k - 1 correlated normals)
    z, w = np.polynomial.hermite_e.hermegauss(200)
    known = brentq(lambda h: float(w @ normal.cdf(z + h) ** 5) / (2 * np.pi) ** 0.5 - 0.983, 0, 20)
    assert mcb_critical(0.983, 6, 10 ** 6) == pytest.approx(known, rel=1e-4)
    assert mcb_critical(0.983, 6, 400) == pytest.approx(3.76985, rel=1e-4)  # adaptive quadrature's
    # one degree of freedom and a high level (a long race at a small alpha): found, not a bracket error
    assert mcb_critical(1 - 0.001 / 28, 3, 1) > mcb_critical(0.983, 3, 1) == pytest.approx(39.701, rel=1e-4)
    # a level the first of k equal ones reaches by leading alone: no margin at all
    assert mcb_critical(0.4, 2, 3) == mcb_critical(1 / 6, 6, 3) == 0.0
    assert look({0: [0.9, 0.91], 1: [0.89, 0.9]}, Racing(min=2, max=3, alpha=0.6)).half_width == 0.0


def test_racing_keeps_its_error_rate_in_simulated_races():
    # 2,000 races of 6 configurations under the model (a seed effect shared by all, normal noise):
    # configuration 0 is the best by a third of the noise sd, two more tie it within 0.01 of the
    # noise sd, three are far behind. Stopping configuration 0 as separated, or calling a
    # practical tie one more than `margin` behind the best, is an error; the race allows alpha.
    racing = Racing(min=2, max=5, alpha=0.2, margin=0.5)
    truth = np.array([1 / 3, 1 / 3 - 0.01, 1 / 3 - 0.01, -3.0, -3.0, -3.0])
    rng = np.random.default_rng(7)
    errors = 0
    for _ in range(2000):
        draws = truth[:, None] + rng.standard_normal(5)[None, :] + rng.standard_normal((6, 5))
        calls = race({c: dict(enumerate(draws[c])) for c in range(6)}, racing, maximize=True).calls
        best_stopped = calls[0].startswith("separated")
        false_tie = any(calls[c].startswith("practical tie") and truth[c] < truth[0] - racing.margin for c in range(6))
        errors += best_stopped or false_tie
    assert errors / 2000 <= racing.alpha
    # and the race does stop the far-behind ones: its savings are real
    assert calls[3].startswith(("separated", "practical tie"))


def test_racing_gives_the_level_configurations_a_seed_a_round_up_to_max():
    table = {0: {0: 0.90, 1: 0.92}, 1: {0: 0.60, 1: 0.62}, 2: {0: 0.91, 1: 0.90}}
    first = race(table, RACE, maximize=True)
    assert first.more == (0, 2) and first.calls[1].startswith("separated")
    # while the round trains, nothing more is asked for; then the next round goes to the same two
    table[0][2] = 0.91
    assert race(table, RACE, maximize=True).more == (2,)
    level = {0: {s: 0.9 + 0.01 * (s % 2) for s in range(5)}, 2: {s: 0.9 + 0.01 * ((s + 1) % 2) for s in range(5)}}
    done = race({**level, 1: table[1]}, RACE, maximize=True)
    assert done.over and done.calls[0] == done.calls[2] == "5 seeds: the most repeats allows"
    assert [look.n for look in done.looks] == [2, 3, 4]  # max - min looks, no more


def test_racing_stops_a_practical_tie_inside_the_margin():
    tied = {0: {s: 0.900 + 0.01 * s for s in range(3)}, 1: {s: 0.899 + 0.01 * s + 0.0015 * (s % 2) for s in range(3)}}
    assert not race(tied, RACE, maximize=True).over  # without a margin, level configurations race on
    calls = race(tied, Racing(min=2, max=5, margin=0.01), maximize=True).calls
    # two configurations on two seeds leave one degree of freedom: too wide an interval; three seeds tie them
    assert calls[1] == "practical tie: within 0.01 of the best (leader: trial 0) on 3 seeds"


def test_racing_a_minimised_objective_keeps_the_lowest():
    table = {0: {0: 5.0, 1: 5.2}, 1: {0: 2.0, 1: 2.1}, 2: {0: 2.05, 1: 2.1}}
    r = race(table, RACE, maximize=False)
    assert r.more == (1, 2) and r.calls[0] == "separated: behind trial 1 on 2 seeds"


def test_racing_looks_share_the_error_rate():
    # 3 looks (after 2, 3 and 4 seeds) at 1 - 0.05 / 3 each: at most 5 % over all of them
    assert look_confidence(RACE) == pytest.approx(1 - 0.05 / 3)


def test_a_non_finite_seed_takes_its_configuration_out_and_keeps_the_others_paired():
    """HD95 is inf where a class is never found: that seed ranks its configuration last, and the other
    configurations are still compared seed by seed (seed 1 of each with seed 1 of the others)."""
    import math

    from segtune.study.racing import race_table

    table = {0: {0: 2.0, 1: math.inf, 2: 2.0}, 1: {0: 2.0, 1: 2.1, 2: 2.05}, 2: {0: 5.0, 1: 5.2, 2: 5.1}}
    r = race(table, Racing(min=3, max=5), maximize=False)
    assert r.calls[0] == "left the race: its objective on seed 1 is not finite"
    assert r.calls[2] == "separated: behind trial 1 on 3 seeds"
    # the one left trains no more seeds: there is nothing left to compare it with
    assert r.over and r.calls[1] == "the last in the race, after 3 seeds"
    # a stored trial's runs keep the seed with a non-finite value in the race's table (the
    # leaderboard's per-seed values leave it out)
    trial = _stored(0, optuna.trial.TrialState.COMPLETE, {0: 2.0, 1: math.inf, 2: 2.0})
    table, _, _ = race_table([trial])
    assert sorted(table[0]) == [0, 1, 2] and not math.isfinite(table[0][1])


@pytest.mark.parametrize("stored_repeats", [{"min": 2, "max": 4, "alpha": 0.05},  # stored before margins
                                            {"min": 2, "max": 4, "alpha": 0.05, "margin": 0.0}])
def test_a_racing_study_stored_with_or_without_a_margin_opens_again(tmp_path, stored_repeats):
    import json

    from tests.conftest import study_tree

    from segtune.errors import ConfigError
    from segtune.study import open_storage
    from segtune.study.records import SPEC
    from segtune.study.spec import parse_study
    from segtune.study.workers import open_study

    spec, space = parse_study(study_tree(repeats={"min": 2, "max": 4}))
    storage = open_storage(spec, tmp_path)
    study = open_study(spec, space, storage)
    study.set_user_attr(SPEC, {**json.loads(json.dumps(spec.fingerprint())), "repeats": stored_repeats})
    assert open_study(spec, space, storage).study_name == spec.name  # no "made from a different study file"
    tied, tied_space = parse_study(study_tree(repeats={"min": 2, "max": 4, "margin": 0.01}))
    with pytest.raises(ConfigError, match=r"made from a different study file \(repeats differ\)"):
        open_study(tied, tied_space, storage)


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
    # listed first by a mean over other runs, but clearly worse on the cases both share: '<', never '='
    text, steps = ranking([(2, {}, c), (4, {}, a)])
    assert text == "#2 < #4" and steps[0].word == "worse"


@pytest.mark.slow  # a whole study through the worker loop: 17 s at a load average of 12
@pytest.mark.parametrize("queued_twice", [False, True])
def test_a_racing_study_races_in_rounds_and_stops_the_clearly_worse_after_min_seeds(tmp_path, monkeypatch,
                                                                                     queued_twice):
    # training stands in: a run's objective is its lr's level plus a seed effect shared by every lr,
    # so two lrs are level (they race to max) and one is far behind whatever order the grid draws
    import types

    import segtune.study.objective
    import segtune.study.workers
    from segtune.study.racing import queue_round
    from segtune.study.records import SAME_AS, leaderboard, study_records

    level = {0.01: 0.9, 0.02: 0.9, 0.001: 0.3}

    def train(config, **kwargs):
        lr = config.optimizer.options["lr"]
        value = level[lr] + 0.01 * ((config.seed * 7) % 3) + (0.002 * config.seed if lr == 0.02 else 0.0)
        split = {"dice_mean": value, "per_case": {}}
        return types.SimpleNamespace(summary={"val": split, "test": split, "epochs_run": 1, "best_epoch": 1,
                                              "class_names": ["background", "a"]})

    def queue_twice(study, spec):  # two workers that queued the same round at once
        queued = queue_round(study, spec)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            study.enqueue_trial(t.system_attrs["fixed_params"], user_attrs=t.user_attrs, skip_if_exists=False)
        return queued

    monkeypatch.setattr(segtune.study.objective, "train", train)
    if queued_twice:
        monkeypatch.setattr(segtune.study.workers, "queue_round", queue_twice)
    path = write_study(tmp_path, repeats={"min": 2, "max": 4}, space={"optimizer.lr": [0.01, 0.02, 0.001]})
    study = run_study(path, study_dir=tmp_path / "out")
    # a round's trial queued twice trains once: the later copy takes the earlier one's result
    copies = [t for t in study.trials if SAME_AS in t.user_attrs]
    assert len(copies) == (4 if queued_twice else 0)
    # and it is no row of the records or the leaderboard: each configuration is one
    listed = study_records(study)
    assert len(listed) == 3 and all(r.same_as is None for r in listed)
    records = {r.params["optimizer.lr"]: r for r in listed}
    # every configuration got min seeds first; then rounds of one seed for the two level ones, up to max
    assert {lr: sorted(r.values) for lr, r in records.items()} == {0.01: [0, 1, 2, 3], 0.02: [0, 1, 2, 3],
                                                                    0.001: [0, 1]}
    assert len(study.trials) == 3 + 2 * 2 * (2 if queued_twice else 1)  # sampled, then 2 rounds of 2 queued
    assert records[0.001].reason.startswith("race: separated: behind trial")
    assert records[0.01].reason == "race: 4 seeds: the most repeats allows"
    # a round's trial carries its configuration's runs on, in the configuration's run directories
    run_dirs = [r.run_dir.name for r in records[0.02].runs]
    assert len(set(run_dirs)) == 4 and len({d.split("-")[0] for d in run_dirs}) == 1
    assert records[0.02].value == pytest.approx(statistics.fmean(records[0.02].values.values()))
    # the leaderboard shows each configuration once, with its runs
    header, rows = leaderboard(study)
    runs = {row[header.index("optimizer.lr")]: row[header.index("runs")] for row in rows}
    assert len(rows) == 3 and runs == {"0.01": "4", "0.02": "4", "0.001": "2"}


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


def _stored(number: int, state, seeds: dict[int, float], **attrs):
    from optuna.trial import create_trial

    from segtune.study.records import RUNS

    runs = [{"seed": s, "value": v, "epochs_run": 1, "best_epoch": 1, "run_dir": f"/r/{number}-{s}"} for s, v in seeds.items()]
    trial = create_trial(state=state, value=(sum(seeds.values()) / len(seeds)) if state.name == "COMPLETE" else None,
                         user_attrs={RUNS: runs, **attrs})
    trial.number = number
    return trial


def test_a_round_to_be_run_again_keeps_its_configuration_in_the_race_and_a_lost_one_leaves_it():
    """Only a round that failed for good takes a configuration out: a full-disk or Ctrl-C failure (run
    again on resume) or a dead worker's retry keeps it in; a dead round with no retry left does not."""
    from optuna.trial import TrialState

    from segtune.study.racing import race_table
    from segtune.study.records import EXTENDS, HOME, INTERRUPTED

    two = {0: 0.8, 1: 0.81}
    trials = [_stored(0, TrialState.COMPLETE, two), _stored(1, TrialState.COMPLETE, two),
              _stored(2, TrialState.COMPLETE, two), _stored(3, TrialState.COMPLETE, two),
              _stored(4, TrialState.FAIL, two, **{EXTENDS: 0, HOME: 0, INTERRUPTED: True}),  # full disk: resumed
              _stored(5, TrialState.FAIL, two, **{EXTENDS: 1, HOME: 1}),  # died, and its retry
              _stored(6, TrialState.WAITING, two, **{EXTENDS: 1, HOME: 1}),
              _stored(7, TrialState.FAIL, two, **{EXTENDS: 2, HOME: 2})]  # died, no retry left
    _, latest, failed = race_table(trials)
    assert failed == frozenset({2}) and set(latest) == {0, 1, 2, 3}


def test_a_configuration_the_race_stopped_behind_the_leader_never_ranks_first():
    """B was separated behind A on seeds 0-1; A's later, harder seeds pull its mean below B's:
    A stays the best, as the race decided."""
    import optuna
    from optuna.trial import TrialState

    from segtune.study.records import EXTENDS, HOME, RACE, best_trial, study_records

    study = optuna.create_study(direction="maximize")
    study.add_trial(_stored(0, TrialState.COMPLETE, {0: 0.90, 1: 0.92}))
    study.add_trial(_stored(1, TrialState.COMPLETE, {0: 0.86, 1: 0.88}))
    study.add_trial(_stored(2, TrialState.COMPLETE, {0: 0.90, 1: 0.92, 2: 0.84, 3: 0.84, 4: 0.84},
                            **{EXTENDS: 0, HOME: 0}))
    study.set_user_attr(RACE, {"0": "5 seeds: the most repeats allows", "1": "separated: behind trial 0 on 2 seeds"})
    records = study_records(study)
    assert [r.home for r in records] == [0, 1] and records[1].value > records[0].value
    assert best_trial(study).home == 0
