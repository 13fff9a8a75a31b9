"""LR range test, suggestion rules, coarse-to-fine search and `segtune lr-find`."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml
from tests.conftest import tiny_tree

from segtune.cli import main
from segtune.config import build_config
from segtune.errors import ConfigError
from segtune.training.lr_find import LR_RULES, RangeTest, explain_rule, lr_range_test, plot_range_tests, refine_lr
from segtune.training.runtime import load_data

# A textbook curve: flat, a long descent from 1e-4 to 1e-1 (steepest at 1e-2.5), then a blow-up.
LRS = np.logspace(-7, 1, 81)
X = np.log10(LRS)
LOSSES = np.where(X < 0, 1.0 - 0.5 / (1 + np.exp(-3 * (X + 2.5))), 0.5 + 2 * X**2)


@pytest.mark.parametrize("rule, low, high", [
    ("valley", 1e-4, 1e-1),     # inside the descent
    ("steepest", 1e-3, 1e-2),   # around the inflection at 10**-2.5
    ("min_tenth", 1e-2, 1e-1),  # a tenth of the minimum at about 1
])
def test_rules_read_the_lr_off_the_curve(rule, low, high):
    lr = LR_RULES.entry(rule).builder(list(LRS), list(LOSSES))
    assert low <= lr <= high


@pytest.mark.parametrize("rule, says", [
    ("steepest", "The default: measured closest to the best of a 5-point grid"),
    ("valley", "Measured one to two decades too low"),
    ("min_tenth", "0.05 short for momentum SGD"),
])
def test_each_rule_explains_what_it_reads_and_how_it_measured(rule, says):
    text = explain_rule(rule)
    assert text.startswith(LR_RULES.entry(rule).summary) and says in text


def test_an_unknown_rule_has_no_explanation():
    with pytest.raises(ValueError, match="unknown lr rule 'steep' \\(did you mean 'steepest'\\?\\)"):
        explain_rule("steep")


def test_the_range_test_figure_leaves_the_callers_matplotlib_backend(tmp_path):
    import matplotlib

    curve = RangeTest(optimizer="adam", rule="steepest", suggestion=1e-3, lrs=list(LRS), losses=list(LOSSES),
                      raw_losses=list(LOSSES), seconds=0.0, stopped="end_lr reached")
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's choice, not the Agg a figure writer might force
    try:
        path = plot_range_tests([curve], tmp_path / "lr.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_data():
    return load_data(build_config(tiny_tree()))


def test_range_test_grows_the_lr_exponentially_and_suggests_one_inside(tiny_data):
    config = build_config(tiny_tree())
    curve = lr_range_test(config, data=tiny_data, optimizer="sgd", start_lr=1e-5, end_lr=1e-1, n_steps=12)
    ratios = np.diff(np.log(curve.lrs))
    assert np.allclose(ratios, math.log(1e4) / 11)  # a constant factor per step
    assert curve.optimizer == "sgd" and curve.stopped == "end_lr reached" and len(curve.lrs) == 12
    assert 1e-5 <= curve.suggestion <= 1e-1 and curve.suggestion == curve.suggestions["steepest"]


def test_range_test_stops_when_the_loss_diverges(tiny_data):
    # SGD at lr up to 1e6 blows the loss up long before the last step
    config = build_config(tiny_tree())
    curve = lr_range_test(config, data=tiny_data, optimizer="sgd", start_lr=1e-2, end_lr=1e6, n_steps=40)
    assert curve.stopped.startswith("diverged") and len(curve.lrs) < 40


@pytest.mark.parametrize("options, message", [
    ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr < end_lr"),
    ({"n_steps": 3}, "at least 10"),
    ({"divergence_factor": 1.0}, "divergence_factor must exceed 1, got 1"),
    ({"rule": "valey"}, "did you mean 'valley'"),
])
def test_invalid_range_test_settings_name_the_fix(options, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        lr_range_test(build_config(tiny_tree()), **options)


def test_refine_trains_each_decade_then_bisects_around_the_best(tiny_data, tmp_path):
    config = build_config(tiny_tree())
    result = refine_lr(config, data=tiny_data, out_dir=tmp_path, low=1e-3, high=1e-1, n_bisect=1, epochs=1)
    decades = [t for t in result.trials if t["stage"] == "decade"]
    bisections = [t for t in result.trials if t["stage"] == "bisect"]
    assert [t["lr"] for t in decades[:3]] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert len(decades) in (3, 4) and 1 <= len(bisections) <= 2  # a 4th decade only past a best end
    # each bisection point lies between the best decade and a tried neighbour, at their geometric mean
    best = max(decades, key=lambda t: t["val_dice"])["lr"]
    tried = sorted(t["lr"] for t in decades)
    mids = [math.sqrt(a * b) for a, b in zip(tried, tried[1:]) if best in (a, b)]
    assert all(any(math.isclose(t["lr"], m, rel_tol=1e-9) for m in mids) for t in bisections)
    assert result.best_dice == max(t["val_dice"] for t in result.trials)
    assert result.seconds == pytest.approx(sum(t["seconds"] for t in result.trials))


def test_cli_lr_find_prints_one_table_and_writes_one_figure(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tree()))
    code = main(["lr-find", str(config), "--optimizers", "adam,sgd", "--steps", "10", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0 and "suggested lr (steepest)" in printed
    # which rule, what it does and why it is the default
    assert "rule steepest: Where the loss falls fastest per decade of lr" in printed and "The default" in printed
    assert "adam" in printed and "sgd" in printed
    assert (tmp_path / "out" / "lr_find.png").stat().st_size > 0
    assert len((tmp_path / "out" / "lr_find.csv").read_text().splitlines()) == 3  # header + 2 optimizers


@pytest.mark.slow
def test_study_with_auto_lr_runs_the_range_test_once_per_optimizer_and_reuses_it(tmp_path):
    from segtune.study import AUTO_LR_CACHE, run_study

    base = tiny_tree(optimizer={"name": "sgd", "lr": "auto"},
                     train={"epochs": 1, "batch_size": 8, "patience": 0, "num_threads": 1})
    study_file = tmp_path / "study.yaml"
    # two cells that share the optimizer, loss, model and data: one range test serves both
    study_file.write_text(yaml.safe_dump({"name": "auto", "base": base, "method": "grid",
                                          "space": {"augment.name": ["none", "flip"]}}))
    study = run_study(study_file, study_dir=tmp_path / "runs")
    cache = [v for k, v in study.user_attrs.items() if k.startswith(AUTO_LR_CACHE)]
    assert len(cache) == 1 and '"name": "sgd"' in cache[0]["key"]
    lr = cache[0]["lr"]
    assert [t.user_attrs["config"]["optimizer"]["lr"] for t in study.trials] == [lr, lr]
    # two optimizers: one entry each, none overwriting the other
    study_file.write_text(yaml.safe_dump({"name": "auto2", "base": base, "method": "grid",
                                          "space": {"optimizer.name": ["sgd", "adam"]}}))
    study = run_study(study_file, study_dir=tmp_path / "runs2")
    cache = {json.loads(v["key"])["optimizer"]["name"]: v["lr"]
             for k, v in study.user_attrs.items() if k.startswith(AUTO_LR_CACHE)}
    assert sorted(cache) == ["adam", "sgd"]
    assert {t.params["optimizer.name"]: t.user_attrs["config"]["optimizer"]["lr"] for t in study.trials} == cache


def test_cli_refine_prints_every_training_and_the_total_cost(tmp_path, capsys):
    from segtune.cli import main

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree()))
    code = main(["lr-find", str(tmp_path / "tiny.yaml"), "--refine", "--low", "1e-3", "--high", "1e-2",
                 "--n-bisect", "1", "--epochs", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"adam: best lr [0-9.e-]+, val Dice [0-9.]+, \d+ trainings of 1 epoch, ", out)
    n = int(re.search(r"total cost: (\d+) trainings", out).group(1))
    assert 3 <= n <= 5  # 2 decades (+1 beyond a best end) and one bisection round of 1 or 2


def test_the_range_test_of_a_patch_run_sweeps_on_its_crops(monkeypatch):
    # the sweep trains on what the run trains on: 16 x 16 crops of the 32 x 32 images
    from segtune.training.patches import PatchSampler

    shapes, crop = [], PatchSampler.__call__

    def recording(self, index, generator):
        x, y = crop(self, index, generator)
        shapes.append(tuple(x.shape[2:]))
        return x, y

    monkeypatch.setattr(PatchSampler, "__call__", recording)
    curve = lr_range_test(build_config(tiny_tree(), ["train.patch_size=[16,16]"]), n_steps=12)
    assert len(shapes) >= len(curve.raw_losses) >= 5 and set(shapes) == {(16, 16)}


def test_refine_keeps_a_step_budget_and_epochs_switch_it_to_epochs(tiny_data, tmp_path):
    # a config budgeted in steps trains each lr for its own steps; --epochs trains whole epochs instead
    tree = tiny_tree(train={"steps": 3, "val_every_steps": 3, "batch_size": 8, "patience": 0, "num_threads": 1})
    config = build_config(tree)
    by_steps = refine_lr(config, data=tiny_data, out_dir=tmp_path / "steps", low=1e-3, high=1e-2, n_bisect=0)
    assert (by_steps.steps, by_steps.epochs, by_steps.budget) == (3, None, "3 steps")
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "steps").glob("*/summary.json"))]
    assert len(summaries) == len(by_steps.trials) >= 2
    assert {(s["unit"], s["steps_run"]) for s in summaries} == {("step", 3)}
    by_epochs = refine_lr(config, data=tiny_data, out_dir=tmp_path / "epochs", low=1e-3, high=1e-2, n_bisect=0,
                          epochs=1)
    assert (by_epochs.steps, by_epochs.epochs, by_epochs.budget) == (None, 1, "1 epoch")
    summary = json.loads(next((tmp_path / "epochs").glob("*/summary.json")).read_text())
    assert (summary["unit"], summary["steps_run"]) == ("epoch", 2)  # 16 images in batches of 8
