"""The report of `segtune lr-find`: curves clipped at divergence, every rule's suggestion, the refine table."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from segtune.report import write_report
from segtune.report.lr_find import lr_find_report
from segtune.training.lr_find import LR_RULES, RangeTest, RefineResult, range_test_figure

LRS = list(np.logspace(-6, 1, 30))


def _curve(name: str, blow_up: float) -> RangeTest:
    losses = [1.5 - 0.5 * k / 25 for k in range(26)] + [3.0, 10.0, 40.0, blow_up]  # falls, then diverges
    return RangeTest(optimizer=name, rule="steepest", suggestion=1e-3, lrs=LRS, losses=losses, raw_losses=losses,
                     seconds=1.0, stopped="diverged at lr 10", suggestions={r: 1e-3 for r in LR_RULES.names()})


def test_each_optimizer_gets_its_own_panel_clipped_at_divergence():
    # SGD blowing up to 120 must not flatten Adam's curve: one panel each, y up to twice the starting loss
    fig = range_test_figure([_curve("adam", 20.0), _curve("sgd", 120.0)])
    assert [ax.get_title() for ax in fig.axes] == ["adam (diverged at lr 10)", "sgd (diverged at lr 10)"]
    assert all(ax.get_ylim()[1] == 3.0 and ax.get_ylim()[0] < 1.0 for ax in fig.axes)


def test_lr_find_report_shows_the_rules_and_the_refine_trainings(tmp_path):
    (tmp_path / "lr_find.json").write_text(json.dumps([asdict(_curve("adam", 20.0))]))
    refined = [RefineResult(optimizer="adam", best_lr=1e-3, best_dice=0.8, epochs=2, seconds=6.0, trials=[
        {"lr": 1e-4, "stage": "decade", "val_dice": 0.5, "seconds": 3.0, "status": "ok"},
        {"lr": 1e-3, "stage": "decade", "val_dice": 0.8, "seconds": 3.0, "status": "ok"}])]
    html = lr_find_report(tmp_path, refined=refined)
    md = (tmp_path / "report.md").read_text()
    assert html == tmp_path / "report.html" and "| optimizer | suggested lr (steepest) | " + " | ".join(
        LR_RULES.names()) in md
    assert "| adam | decade | 0.0010 | 0.8000 | 3.0000 | ok |" in md and "| adam | 0.0010 | 0.8000 | 2 | 2 epochs | 6 |" in md
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == {"lr_find", "refine"}
    # written again from the folder alone, as `segtune report FOLDER` does
    (tmp_path / "report.md").unlink()
    assert write_report(tmp_path) == html and "## Refine" in (tmp_path / "report.md").read_text()
