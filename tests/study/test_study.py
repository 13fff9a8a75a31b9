"""Study files, spaces and single-process studies on tiny synthetic data (SQLite storage)."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from tests.conftest import study_tree, tiny_tree, write_study

from segtune.cli import main
from segtune.errors import ConfigError
from segtune.study import leaderboard, load_existing_study, run_study
from segtune.study.spec import load_study, parse_study
from segtune.study.space import Space

TrialState = optuna.trial.TrialState


@pytest.mark.parametrize("space, message", [
    ({"optimzer.lr": [0.1]}, "no section or field 'optimzer' \\(did you mean 'optimizer'\\?\\)"),
    ({"optimizer.lrr": [0.1]}, "optimizer has no option 'lrr' \\(did you mean 'lr'\\?\\)"),
    ({"optimizer.name": ["adam", "sgdd"]}, "optimizer.name='sgdd' is invalid(.|\n)*did you mean 'sgd'"),
    ({"optimizer.lr": {"low": 0.1, "high": 0.01}}, "low must be below high"),
    ({"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log ranges need low > 0"),
    ({"optimizer.lr": []}, "list of values is empty"),
    ({"optimizer.lr": 0.1}, "give a list of values, a range"),
    ({"optimizer.name": ["adam"], "optimizer.lr": {"when": "optimizer.nam", "cases": {"adam": [0.1]}}},
     "did you mean 'optimizer.name'"),
    ({"optimizer.name": ["adam"], "optimizer.lr": {"when": "optimizer.name", "cases": {"sdg": [0.1]}}},
     "case 'sdg' is not a value of optimizer.name"),
])
def test_invalid_space_fails_before_any_trial(space, message):
    # every problem of the space is found when the study file is read, naming path and rule
    with pytest.raises(ConfigError, match=message):
        parse_study(study_tree(method="random", n_trials=2, space=space))


@pytest.mark.parametrize("fields, message", [
    ({"method": "random"}, "method random needs n_trials"),
    ({"method": "annealing"}, "unknown study method 'annealing'"),
    ({"objective": "val.dise_mean"}, "objective must be SPLIT.METRIC"),
    ({"objective": "test.dice_mean", "pruner": "median"}, "pruner median needs a validation objective"),
    ({"pruner": {"name": "median", "min_epoch": 2}}, "has no option 'min_epoch' \\(did you mean 'min_epochs'"),
    ({"space": {"optimizer.lr": {"low": 0.001, "high": 0.1}}}, "a grid needs a list of values or a step"),
])
def test_invalid_study_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        parse_study(study_tree(**fields))


def test_conditional_values_make_one_grid_cell_per_valid_combination():
    # lr per optimizer: 2 adam cells + 1 sgd cell, never an sgd cell with an adam lr
    space = Space({"optimizer.name": ["adam", "sgd"], "train.batch_size": {"low": 4, "high": 8, "step": 4},
                   "optimizer.lr": {"when": "optimizer.name", "cases": {"adam": [0.01, 0.001], "sgd": [0.1]}}})
    assert space.n_grid_cells() == 3 * 2
    assert sorted(space.grid()["train.batch_size"]) == [4, 8]


def test_base_file_is_found_next_to_the_study_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_tree()))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "method": "grid", "space": {"optimizer.lr": [0.1]}}))
    spec, _ = load_study(path)
    assert spec.name == "s" and spec.base["data"]["source"] == "synthetic"


@pytest.mark.slow
def test_grid_runs_every_cell_once_and_a_rerun_repeats_nothing(tmp_path):
    path = write_study(tmp_path, space={"optimizer.lr": [0.01, 0.001], "train.batch_size": [4, 8]})
    study = run_study(path, study_dir=tmp_path / "out")
    trials = study.get_trials()
    cells = {(t.params["optimizer.lr"], t.params["train.batch_size"]) for t in trials}
    assert len(trials) == 4 and cells == {(0.01, 4), (0.01, 8), (0.001, 4), (0.001, 8)}
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # the resolved config is stored on the trial, with the sampled values in it
    config = trials[0].user_attrs["config"]
    assert config["optimizer"]["lr"] == trials[0].params["optimizer.lr"]
    assert (tmp_path / "out" / "trials" / "0000-seed0" / "summary.json").exists()
    run_study(path, study_dir=tmp_path / "out")
    assert len(load_existing_study(path, study_dir=tmp_path / "out").get_trials()) == 4
    # leaderboard: best first
    header, rows = leaderboard(study)
    values = [r[header.index("val.dice_mean")] for r in rows]
    assert values == sorted(values, reverse=True)


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


def test_an_objective_naming_a_class_the_data_lacks_fails_before_the_first_trial(tmp_path, monkeypatch, capsys):
    import segtune.study.objective
    from segtune.cli import main

    def no_training(*args, **kwargs):
        raise AssertionError("a trial trained")

    monkeypatch.setattr(segtune.study.objective, "train", no_training)
    path = write_study(tmp_path, objective="val.dice_per_class.tumour")
    with pytest.raises(ConfigError, match=r"study.yaml: objective val.dice_per_class.tumour: the data has no class "
                                          r"'tumour'; its classes are background, class_1, class_2: "
                                          r"e.g. objective: val.dice_per_class.class_2"):
        run_study(path, study_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no storage, no trial
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: objective val.dice_per_class.tumour: the data has no")
    # a class the data has: the study runs, its objective read per trial
    monkeypatch.undo()
    study = run_study(write_study(tmp_path, objective="val.dice_per_class.class_2"), study_dir=tmp_path / "ok")
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    run = study.trials[0].user_attrs["runs"][0]
    assert study.trials[0].value == run["value"] and 0 <= run["value"] <= 1


@pytest.mark.slow
def test_a_changed_study_file_is_not_resumed_into_the_old_study(tmp_path):
    run_study(write_study(tmp_path, space={"optimizer.lr": [0.01]}), study_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="made from a different study file \\(space differ"):
        run_study(write_study(tmp_path, space={"optimizer.lr": [0.02]}), study_dir=tmp_path / "out")


def test_set_changes_the_base_and_a_misspelt_path_is_named(tmp_path):
    path = write_study(tmp_path, set={"train.batch_size": 4})
    spec, _ = load_study(path, ["optimizer.lr=0.5"])
    assert spec.base["train"]["batch_size"] == 4 and spec.base["optimizer"]["lr"] == 0.5
    with pytest.raises(ConfigError, match="train has no option 'bach_size' \\(did you mean 'batch_size'"):
        load_study(write_study(tmp_path, set={"train.bach_size": 4}))


def test_set_and_overrides_switching_a_component_leave_out_the_old_ones_options(tmp_path):
    # as `--set` of a run does: adam's betas are not sgd's; a later --set of a path wins over the file's set
    base = tiny_tree(optimizer={"name": "adam", "lr": 0.01, "betas": [0.8, 0.9]})
    spec, _ = load_study(write_study(tmp_path, base=base, set={"optimizer.name": "sgd", "optimizer.lr": 0.1}),
                         ["optimizer.lr=0.2"])
    assert spec.base["optimizer"] == {"name": "sgd", "lr": 0.2}


@pytest.mark.slow
def test_cli_runs_a_study_and_shows_its_leaderboard(tmp_path, capsys):
    from segtune.cli import main

    path, out = write_study(tmp_path, space={"optimizer.lr": [0.01]}), str(tmp_path / "out")
    assert main(["study", "status", str(path), "--out", out]) == 2
    assert "no study 'tiny' yet" in capsys.readouterr().err
    assert main(["study", str(path), "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "trial   0 complete" in printed and "best: trial 0, val.dice_mean" in printed
    assert main(["study", "status", str(path), "--out", out]) == 0
    assert "optimizer.lr  val.dice_mean  spread" in capsys.readouterr().out


@pytest.mark.slow
def test_a_trial_stopped_by_ctrl_c_is_run_again_on_resume(tmp_path, monkeypatch):
    import segtune.study.objective

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    path = write_study(tmp_path, space={"optimizer.lr": [0.01, 0.001]})
    real_train = segtune.study.objective.train
    monkeypatch.setattr(segtune.study.objective, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, study_dir=tmp_path / "out")
    monkeypatch.setattr(segtune.study.objective, "train", real_train)
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    (stopped,) = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped.user_attrs["interrupted"] is True
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optimizer.lr"] for t in complete) == [0.001, 0.01]
    assert [t.user_attrs.get("requeued_from") for t in complete].count(stopped.number) == 1


def test_a_resumed_study_trains_with_the_thread_count_it_was_created_with(tmp_path, monkeypatch, capsys):
    # the numbers depend on the thread count: a study keeps the count it was created with
    import segtune.study.objective
    from segtune.cli import main

    real_train = segtune.study.objective.train
    calls = []

    def stopped_after_one_trial(config, **kwargs):
        calls.append(config)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_train(config, **kwargs)

    path, out = write_study(tmp_path, space={"optimizer.lr": [0.01, 0.001]}), tmp_path / "out"
    monkeypatch.setattr(segtune.study.objective, "train", stopped_after_one_trial)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, study_dir=out, num_threads=1)
    monkeypatch.setattr(segtune.study.objective, "train", real_train)
    monkeypatch.setattr(segtune.study.workers.os, "cpu_count", lambda: 8)  # another machine, or more cores free
    assert main(["study", str(path), "--out", str(out), "--quiet"]) == 0
    trials = load_existing_study(path, study_dir=out).get_trials()
    assert [t.user_attrs["config"]["train"]["num_threads"] for t in trials] == [1, 1, 1]  # done, stopped, re-run
    assert load_existing_study(path, study_dir=out).user_attrs["threads"] == 1
    assert main(["study", str(path), "--out", str(out), "--threads", "2"]) == 2
    assert ("trains every trial with 1 CPU thread(s), fixed when it was created: the numbers depend on the thread "
            "count") in capsys.readouterr().err


def test_the_demo_study_file_is_valid():
    from segtune.cli import demo_config_path

    spec, space = load_study(demo_config_path().with_name("demo_study.yaml"))
    assert spec.base["data"]["source"] == "demo"
    assert spec.method.name == "grid" and space.n_grid_cells() == 4


@pytest.mark.slow
def test_optuna_dashboard_opens_the_study_storage_as_it_is(tmp_path):
    # optuna-dashboard's own app reads the SQLite file: the study, its trials and their attributes
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard", reason="pip install optuna-dashboard (in .[test])")
    run_study(write_study(tmp_path), study_dir=tmp_path / "out")
    app = dashboard.wsgi(f"sqlite:///{tmp_path / 'out' / 'study.db'}")

    def get(path: str) -> dict:
        environ, status = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}, []
        setup_testing_defaults(environ)
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tiny"]
    trials = get(f"/api/studies/{studies[0]['study_id']}")["trials"]
    assert sorted(t["state"] for t in trials) == ["Complete", "Complete"]
    attrs = {a["key"] for a in trials[0]["user_attrs"]}
    assert {"params", "config", "runs", "seconds"} <= attrs


@pytest.mark.parametrize("method", ["random", {"name": "tpe", "n_startup_trials": 2}], ids=["random", "tpe"])
def test_a_resumed_study_draws_new_configurations_and_the_same_as_a_fresh_one(tmp_path, method):
    # trial n's draw depends on the study's seed and n only: a study stopped after 2 trials and
    # run again to 4 continues the sequence (no configuration twice) and ends where a study run
    # in one go ends
    space = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    path = write_study(tmp_path, method=method, n_trials=2, seed=3, space=space)
    run_study(path, study_dir=tmp_path / "resumed")
    path.write_text(path.read_text().replace("n_trials: 2", "n_trials: 4"))
    resumed = run_study(path, study_dir=tmp_path / "resumed").get_trials()
    fresh = run_study(path, study_dir=tmp_path / "fresh").get_trials()
    lrs = [t.params["optimizer.lr"] for t in resumed]
    assert len(lrs) == 4 and len(set(lrs)) == 4 and not any("same_as" in t.user_attrs for t in resumed)
    assert lrs == [t.params["optimizer.lr"] for t in fresh]
    assert [t.value for t in resumed] == [t.value for t in fresh]


def test_a_stepless_integer_range_is_finite_and_a_study_of_it_ends(tmp_path):
    # batch size 4 or 5 (a range of integers without a step): random draws repeat them, and the
    # study ends once both are trained instead of drawing forever for n_trials 10
    path = write_study(tmp_path, method="random", n_trials=10, seed=2,
                       space={"train.batch_size": {"low": 4, "high": 5}})
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    trained = [t for t in trials if "same_as" not in t.user_attrs]
    assert sorted(t.params["train.batch_size"] for t in trained) == [4, 5] and len(trials) < 10 * 10


def test_two_ranges_whose_low_ends_together_are_invalid_validate(tmp_path):
    # tversky with alpha = beta = 0 is refused, but ranges from 0 hold valid draws: each end of
    # a range is probed with the other entries at their centre
    space = {"loss.alpha": {"low": 0.0, "high": 1.0}, "loss.beta": {"low": 0.0, "high": 1.0}}
    spec, parsed = load_study(write_study(tmp_path, method="random", n_trials=2, space=space,
                                          set={"loss.name": "tversky"}))
    assert parsed.validate_against(spec.base) == 5


@pytest.mark.slow
def test_two_commands_on_one_study_split_its_trials(tmp_path):
    # two `segtune study` commands started together on one SQLite file draw different
    # configurations (each trial number its own draw): no configuration is trained twice
    space = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    path = write_study(tmp_path, method="tpe", n_trials=4, seed=5, space=space)
    command = [sys.executable, "-m", "segtune", "study", str(path), "--out", str(tmp_path / "out"),
               "--quiet", "--threads", "1"]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trials = load_existing_study(path, study_dir=tmp_path / "out").get_trials()
    trained = [t for t in trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    lrs = [t.params["optimizer.lr"] for t in trained]
    # both may start their last trial at the same instant: at most one more than n_trials
    assert len(set(lrs)) == len(lrs) and 4 <= len(lrs) <= 5


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].joinpath("studies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_study_file_is_valid(path):
    spec, space = load_study(path)
    assert spec.name and space.params


@pytest.mark.parametrize("pruner", [{"name": "hyperband", "min_epochs": 1, "reduction_factor": 2},
                                    {"name": "successive_halving", "min_epochs": 1, "reduction_factor": 2}])
@pytest.mark.slow
def test_tpe_with_each_bandit_pruner_runs_its_trials(tmp_path, pruner):
    # TPE over a log range and a list, 4 trials of 3 epochs: every trial ends complete or pruned
    path = write_study(tmp_path, method={"name": "tpe", "n_startup_trials": 2}, n_trials=4, pruner=pruner,
                       space={"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}, "loss.name": ["dice_ce", "dice"]},
                       base=tiny_tree(train={"epochs": 3, "batch_size": 8, "patience": 0}))
    trials = run_study(path, study_dir=tmp_path / "out").get_trials()
    assert len(trials) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(1e-3 <= t.params["optimizer.lr"] <= 1e-1 for t in trials)
    assert all(len(t.intermediate_values) in (1, 2, 3) for t in trials)


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


@pytest.fixture(scope="module")
def real_study_db(tmp_path_factory):
    """The study.db of a finished one-cell study, and its study file."""
    folder = tmp_path_factory.mktemp("real")
    path = write_study(folder, space={"optimizer.lr": [0.01]})
    run_study(path, study_dir=folder / "s")
    return path, (folder / "s" / "study.db").read_bytes()


def _garbage(n: int) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(n))  # the same bytes every run, not valid UTF-8


def _overwrite(data: bytes, at: int, text: bytes) -> bytes:
    return data[:at] + text + data[at + len(text):]


def _json_at(data: bytes) -> int:
    return data.index(b'"optimizer.lr"')  # inside a stored JSON value: SQLite's own check passes there


@pytest.mark.parametrize("damage", [
    lambda d: _overwrite(d, 0, _garbage(100)),                                # the SQLite header
    lambda d: _overwrite(d, 4096, _garbage(4096)),                            # the whole second page
    lambda d: _overwrite(d, _json_at(d) // 4096 * 4096, _garbage(2000)),      # a page holding trial data
    lambda d: _overwrite(d, _json_at(d), _garbage(14)),                       # text that is not UTF-8
    lambda d: _overwrite(d, _json_at(d), b"{{{{"),                            # JSON that does not parse
], ids=["header", "page 2", "data page", "utf8", "json"])
def test_a_damaged_study_db_is_one_clear_error_in_every_command(real_study_db, tmp_path, capsys, damage):
    path, data = real_study_db
    (tmp_path / "s").mkdir()
    db = tmp_path / "s" / "study.db"
    db.write_bytes(damage(data))
    for argv in (["study", "status", str(path)], ["report", str(tmp_path / "s")], ["study", str(path), "--quiet"]):
        assert main([*argv, *(["--out", str(tmp_path / "s")] if argv[0] == "study" else [])]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {db} is not a readable SQLite database (damaged?"), err
        assert err.endswith("restore it from a copy, or move it aside to start the study again\n")
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s" / "trials").exists()  # nothing trained on a study that cannot be read


def test_an_emptied_study_db_is_no_traceback(real_study_db, tmp_path, capsys):
    path, _ = real_study_db
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_bytes(b"")
    assert main(["study", "status", str(path), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == f"error: no study 'tiny' in the storage; run `segtune study {path}` first\n"
    assert main(["report", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("error: the storage holds 0 studies")


@pytest.mark.parametrize("name", ["..", "../x", "/tmp/x", ".x"])
def test_a_study_name_that_is_not_a_safe_file_name_is_refused(tmp_path, monkeypatch, capsys, name):
    # the name becomes the study folder runs/<name> (its study.db, trials and report)
    from segtune.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path, name=name)
    assert main(["study", str(path)]) == 2
    assert (f"study.yaml: invalid study file\n  name: must be a safe file name: letters, digits, '-', '_' and '.', "
            f"not starting with '.'") in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_a_study_named_after_its_file_gets_a_safe_name(tmp_path):
    tree = study_tree()
    del tree["name"]
    path = tmp_path / ".my study.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert load_study(path)[0].name == "my-study"
