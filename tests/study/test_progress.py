"""A study's progress: a line per epoch of the running trial, with the time left."""

from __future__ import annotations

import re

from segtune.study import run_study
from segtune.study.progress import EpochProgress

from tests.conftest import write_study


def test_a_study_prints_a_line_per_epoch_of_each_trial_with_the_time_left(tmp_path, capsys):
    path = write_study(tmp_path, epochs=2)  # a grid of 2 trials, 2 epochs each
    run_study(path, study_dir=tmp_path / "study", progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if " epoch " in line]
    shown = [tuple(map(int, re.search(r"trial +(\d+)  epoch +(\d+)/2", line).groups())) for line in lines]
    assert shown == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "left in this trial, at most ~" in lines[0] and "in the study" in lines[0]


def test_the_estimates_count_the_epochs_left_at_the_mean_epoch_time():
    progress = EpochProgress(3)
    progress.seconds, progress.units = 30.0, 3  # 10 s an epoch so far
    line = progress.line(1, ("epoch", 10), 4, {"val_dice_mean": 0.5, "seconds": 9.0})
    # this trial: 6 epochs left, 60 s; the study: those and one more trial of 10 epochs, 160 s
    assert line.endswith("~1 min left in this trial, at most ~3 min in the study")
    assert "in the study" not in EpochProgress(float("inf")).line(0, ("epoch", 10), 4, {"seconds": 1.0})
    # two runs a trial (repeats x folds): this trial's second run and the next trial's two count too
    two = EpochProgress(3, runs_per_trial=2)
    two.seconds, two.units = 30.0, 3
    assert two.line(1, ("epoch", 10), 4, {"seconds": 9.0}).endswith(
        "~3 min left in this trial, at most ~6 min in the study")  # 160 s, then 160 + 200 s


def test_with_a_pruner_the_study_estimate_runs_from_every_later_trial_pruned_at_its_first_rung():
    progress = EpochProgress(4, first_rung=3)
    progress.seconds, progress.units = 30.0, 3  # 10 s an epoch so far
    line = progress.line(0, ("epoch", 10), 4, {"seconds": 9.0})
    # this trial: 6 epochs, 60 s; the 3 later trials pruned at epoch 3: 60 + 90 s; trained to the end: 60 + 300 s
    assert line.endswith("~1 min left in this trial, ~2 min to 6 min in the study")
    # the least counts a pruned trial's first run only: its other repeats do not run
    two = EpochProgress(4, runs_per_trial=2, first_rung=3)
    two.seconds, two.units = 30.0, 3
    assert two.line(2, ("epoch", 10), 4, {"seconds": 9.0}).endswith(
        "~3 min left in this trial, ~3 min to 6 min in the study")  # 160 + 30 s; 160 + 200 s
    # a first rung at the end of the budget prunes nothing earlier, and the last trial has no later one: one bound
    assert EpochProgress(4, first_rung=10).line(0, ("epoch", 10), 4, {"seconds": 1.0}).count(" to ") == 0
    assert progress.line(3, ("epoch", 10), 4, {"seconds": 9.0}).endswith(
        "~1 min left in this trial, at most ~1 min in the study")


def test_a_pruned_study_estimates_from_its_pruners_first_rung(tmp_path, monkeypatch, capsys):
    import segtune.study.workers as workers

    made = []  # the progress each worker builds: the rendering itself is tested above, without a clock

    class Recorded(EpochProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(workers, "EpochProgress", Recorded)
    path = write_study(tmp_path, epochs=3, pruner={"name": "median", "min_epochs": 2, "n_startup_trials": 1})
    run_study(path, study_dir=tmp_path / "study", progress=True)
    assert [(p.n_trials, p.first_rung) for p in made] == [(2, 2)]
    assert sum(" epoch " in line for line in capsys.readouterr().out.splitlines()) >= 4  # trial 0's 3, trial 1's 1+
    (tmp_path / "none").mkdir()
    run_study(write_study(tmp_path / "none", epochs=1), study_dir=tmp_path / "none" / "study", progress=True)
    assert made[-1].first_rung is None  # no pruner: the upper bound alone


def test_a_study_on_a_step_budget_prints_its_steps(tmp_path, capsys):
    # a step budget: the lines count steps, one per validation, and the trials complete
    path = write_study(tmp_path, epochs=None, set={"train.steps": 4, "train.val_every_steps": 2})
    study = run_study(path, study_dir=tmp_path / "study", progress=True)
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    lines = [line for line in capsys.readouterr().out.splitlines() if " step " in line]
    shown = [tuple(map(int, re.search(r"trial +(\d+)  step +(\d+)/4", line).groups())) for line in lines]
    assert shown == [(0, 2), (0, 4), (1, 2), (1, 4)]
