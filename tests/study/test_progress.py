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
    progress.seconds, progress.epochs = 30.0, 3  # 10 s an epoch so far
    line = progress.line(1, 10, 4, {"val_dice_mean": 0.5, "seconds": 9.0})
    # this trial: 6 epochs left, 60 s; the study: those and one more trial of 10 epochs, 160 s
    assert line.endswith("~1 min left in this trial, at most ~3 min in the study")
    assert "in the study" not in EpochProgress(float("inf")).line(0, 10, 4, {"seconds": 1.0})  # no end known
