"""The objective of one trial: repeats, a reused or replayed earlier result, pruning, and failures
recorded with their reason while the study goes on."""

from __future__ import annotations

import statistics

import optuna
import pytest
from tests.conftest import tiny_tree, write_study

from segtune.study import leaderboard, run_study
from segtune.study.spec import load_study

TrialState = optuna.trial.TrialState


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [True, False])
def test_a_configuration_sampled_again_reuses_its_result(tmp_path, reuse):
    # random draws from 2 learning rates, n_trials 6: with reuse only the first draw of each
    # trains, and the study ends once both are trained (the space holds 2 configurations);
    # without, 6 trainings
    path = write_study(tmp_path, method="random", n_trials=6, seed=1, reuse_results=reuse)
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials) and (reuse or len(trials) == 6)
    trained = [t for t in trials if "same_as" not in t.user_attrs]
    assert len(list((tmp_path / "out" / "trials").iterdir())) == len(trained) == (2 if reuse else 6)
    assert len({t.params["optimizer.lr"] for t in trained}) == 2
    for t in trials:  # the same configuration and seed give the same value, trained or reused
        first = next(f for f in trials if f.params == t.params)
        assert t.value == first.value
        assert t.user_attrs.get("same_as", first.number) == first.number
    if reuse:
        header, rows = leaderboard(optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/out/study.db"))
        assert sum("same configuration" in r[header.index("reason")] for r in rows) == len(trials) - 2 > 0
        from segtune.report.data import trial_records

        stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/out/study.db")
        assert len(trial_records(stored)) == 2  # a report counts each run once


@pytest.mark.slow
def test_a_pruned_configuration_drawn_again_is_pruned_on_the_same_curve(tmp_path):
    base = tiny_tree(train={"epochs": 2, "batch_size": 8, "patience": 0})
    path = write_study(tmp_path, base=base, method="random", n_trials=7, seed=1,
                       space={"optimizer.lr": [0.05, 0.02, 1e-8]},
                       pruner={"name": "median", "min_epochs": 1, "n_startup_trials": 2})
    # the draws, in this order: two that train, then the hopeless lr three times
    from segtune.study import open_storage, open_study

    spec, space = load_study(path)
    queued = open_study(spec, space, open_storage(spec, tmp_path / "out"))
    for lr in (0.05, 0.02, 1e-8, 1e-8, 1e-8):
        queued.enqueue_trial({"optimizer.lr": lr})
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    hopeless = [t for t in trials if t.params["optimizer.lr"] == 1e-8]
    assert [t.state for t in hopeless] == [TrialState.PRUNED] * 3
    first, *again = hopeless
    assert "same_as" not in first.user_attrs and all(t.user_attrs["same_as"] == first.number for t in again)
    assert all(t.intermediate_values == first.intermediate_values for t in again)
    assert len(list((tmp_path / "out" / "trials").iterdir())) == 3  # one training per configuration


class _ReplayTrial:
    """Stands in for an Optuna trial: records reports; its pruner prunes from a given epoch."""

    def __init__(self, prune_from):
        self.prune_from, self.reported, self.attrs = prune_from, {}, {}

    def report(self, value, epoch):
        self.reported[epoch] = value

    def should_prune(self):
        return max(self.reported) >= self.prune_from

    def set_user_attr(self, key, value):
        self.attrs[key] = value


@pytest.mark.parametrize("prune_from, trains", [(2, False), (9, True)])
def test_a_pruned_twin_is_replayed_to_this_trials_pruner(prune_from, trains):
    from segtune.study import replay_twin

    twin = optuna.trial.create_trial(state=TrialState.PRUNED, params={"optimizer.lr": 0.1},
                                     distributions={"optimizer.lr": optuna.distributions.CategoricalDistribution([0.1])},
                                     intermediate_values={1: 0.2, 2: 0.3, 3: 0.35}, user_attrs={"epochs": 3})
    trial = _ReplayTrial(prune_from)
    if trains:  # this pruner would have let it go on: it must be trained, its replayed epochs reported
        assert replay_twin(trial, twin) is None and trial.reported == {1: 0.2, 2: 0.3, 3: 0.35} and not trial.attrs
    else:  # pruned at epoch 2 of the same curve, without training
        with pytest.raises(optuna.TrialPruned):
            replay_twin(trial, twin)
        assert trial.reported == {1: 0.2, 2: 0.3} and trial.attrs["same_as"] == twin.number


def test_repeats_give_the_mean_and_spread_of_the_objective(tmp_path):
    path = write_study(tmp_path, space={"optimizer.lr": [0.01]}, repeats=2)
    (trial,) = run_study(path, study_dir=tmp_path / "out").get_trials()
    runs = trial.user_attrs["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    scores = [r["value"] for r in runs]
    assert trial.value == pytest.approx(statistics.fmean(scores))
    assert trial.user_attrs["spread"] == pytest.approx(statistics.stdev(scores))


@pytest.mark.slow
def test_median_pruner_prunes_a_hopeless_trial(tmp_path):
    # grid order with seed 3 is lr 0.02, 0.05, then 1e-8, which learns nothing: below the median
    base = tiny_tree(train={"epochs": 2, "batch_size": 8, "patience": 0})
    path = write_study(tmp_path, base=base, seed=3, space={"optimizer.lr": [0.05, 0.02, 1e-8]},
                       pruner={"name": "median", "min_epochs": 1, "n_startup_trials": 2})
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    states = {t.params["optimizer.lr"]: t.state for t in trials}
    assert states == {0.05: TrialState.COMPLETE, 0.02: TrialState.COMPLETE, 1e-8: TrialState.PRUNED}


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    path = write_study(tmp_path, space={"optimizer.lr": [10.0, 0.01]})
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    by_lr = {t.params["optimizer.lr"]: t for t in trials}
    assert by_lr[0.01].state == TrialState.COMPLETE
    assert by_lr[10.0].state == TrialState.FAIL
    assert "TrainingDiverged" in by_lr[10.0].user_attrs["fail_reason"]


def test_an_unexpected_error_in_a_trial_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    # e.g. out of GPU memory for one batch size: not segtune's own error, still one trial's failure
    import segtune.study.objective

    real_train = segtune.study.objective.train

    def train(config, **kwargs):
        if config.optimizer.options["lr"] == 0.01:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(config, **kwargs)

    monkeypatch.setattr(segtune.study.objective, "train", train)
    trials = run_study(write_study(tmp_path), study_dir=tmp_path / "out").get_trials()
    by_lr = {t.params["optimizer.lr"]: t for t in trials}
    assert by_lr[0.001].state == TrialState.COMPLETE
    assert by_lr[0.01].state == TrialState.FAIL
    assert by_lr[0.01].user_attrs["fail_reason"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
