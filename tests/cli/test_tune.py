"""``segtune tune DATA --budget B`` end to end: a budget of seconds ends the tune, the report and the
best model are written, and ``segtune predict`` takes the best model as printed."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import yaml
from PIL import Image
from tests.conftest import tiny_tree

from segtune.cli import main
from segtune.study import tune


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0})))
    return path


def stepping_clock(step: float):
    """A clock that moves ``step`` seconds each time it is read: the budget runs out after a fixed
    number of decisions. The steps are minutes, so that the real seconds a run's set-up and end take
    (the margin the budget keeps for them, measured on the probe) fit in the first trial's share
    however slow the machine: the first trial starts at 5 of 10 minutes, the second decision finds
    none left. (With steps of 2 s in a 5 s budget, a loaded machine's margin of a second refused
    the base trial.)"""
    readings = itertools.count()
    return lambda: step * next(readings)


@pytest.mark.slow
def test_a_tune_of_seconds_ends_on_its_budget_with_the_report_and_a_best_model_to_predict_with(tiny_file, tmp_path,
                                                                                              capsys, monkeypatch):
    monkeypatch.setattr(tune, "run_tune", functools.partial(tune.run_tune, clock=stepping_clock(300.0)))
    out = tmp_path / "tune"
    assert main(["tune", str(tiny_file), "--budget", "10m", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ended: the budget is spent" in printed and "no trial starts" in printed
    assert "base (trial 0, the data's own config): val Dice" in printed
    assert "not searched (the base's components do not take them): model.channels" in printed
    html = out / "report" / "report.html"
    assert f"report: {html}" in printed and html.is_file()
    command = next(line for line in printed.splitlines() if line.startswith("predict with: "))
    assert command == f"predict with: segtune predict {out / 'best'} IMAGES_OR_VOLUMES... --out masks/"
    assert (out / "best" / "best.pt").is_file() and (out / "best").is_symlink()

    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "im.png")
    assert main(["predict", str(out / "best"), str(tmp_path / "im.png"), "--out", str(tmp_path / "masks")]) == 0
    mask = np.asarray(Image.open(tmp_path / "masks" / "im.png"))
    assert mask.shape == (32, 32) and mask.max() <= 2
    assert main(["evaluate", str(out / "best"), "--split", "test"]) == 0

    # the same command again: the budget is spent, so no trial runs; the result is printed again
    trials = (out / "report" / "trials.csv").read_text().count("\n")
    capsys.readouterr()
    assert main(["tune", str(tiny_file), "--budget", "10m", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "no trial starts" in again and "best (trial" in again and "trial   " not in again  # no trial line
    assert (out / "report" / "trials.csv").read_text().count("\n") == trials


@pytest.mark.parametrize("budget", ["soon", "0", "1h30m"])
def test_a_bad_budget_is_an_error_before_any_data_is_read(budget, tmp_path, capsys):
    assert main(["tune", str(tmp_path / "no-such-folder"), "--budget", budget]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --budget {budget!r}: give a positive duration") and "Traceback" not in err


def test_data_that_is_neither_a_folder_nor_a_config_is_an_error(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "no-such-folder"), "--budget", "1m"]) == 2
    assert "no such dataset folder or config file" in capsys.readouterr().err
