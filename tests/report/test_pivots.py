"""Pivots, metrics per cell, averages and the bar charts: every number is the stored one, shown honestly."""

from __future__ import annotations

import csv

import pytest
from matplotlib.container import ErrorbarContainer

from segtune.report.figures import grouped_bars, marginal_chart, objective_bars
from segtune.report.levels import Levels
from segtune.report.pivots import independent_pairs
from segtune.study.stats import mean_ci
from tests.report.conftest import TRIALS


def _table(report, name):
    with open(report / "tables" / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def test_every_pivot_cell_is_the_stored_trials_metric(study_report):
    # the pivot shows the best trial of each cell with the interval of its stored seeds' values
    pivot = {r["optimizer.name \\ scheduler.name"]: r for r in _table(study_report, "pivot-optimizer.name-scheduler.name")}
    for opt, sched, _, values in TRIALS[:3]:
        assert pivot[opt][sched] == mean_ci(list(values.values())).text()
    # the metrics per cell: val Dice at the best epoch and the test Dice of each class, mean over the seeds
    cells = _table(study_report, "metrics-optimizer.name-scheduler.name")
    for row, (opt, sched, _, values) in zip(cells, TRIALS[:3]):
        mean = sum(values.values()) / len(values)
        assert (row["optimizer.name"], row["scheduler.name"], row["seeds"]) == (opt, sched, "3")
        assert float(row["val Dice"]) == pytest.approx(mean)
        assert float(row["test Dice disc"]) == pytest.approx(mean) and float(row["test Dice ring"]) == 0.5
        assert row["train Dice"] == ""  # the runs recorded no train_dice_mean: missing, not 0
        assert (row["epochs"], row["seconds per run"]) == ("3", "4")


def test_a_pruned_trial_shows_no_seeds_rather_than_zero(study_report):
    md = (study_report / "report.md").read_text()
    assert "| 3 | sgd | cosine | 0.3000 | – | 1 pruned | 1 | pruned |" in md  # leaderboard: no interval, its run pruned
    pruned = [r for r in _table(study_report, "metrics-optimizer.name-scheduler.name") if r["state"] == "pruned"]
    assert [r["seeds"] for r in pruned] == ["–"] and "| 0 seeds" not in md and "0.0000 ±" not in md


def test_averages_count_every_trial_that_reported_not_only_completed_ones(study_report):
    # sgd: 3 seeds of trial 2 and the pruned trial 3's last value; cosine: trial 1's seeds and trial 3
    rows = {r["scheduler.name"]: r for r in _table(study_report, "averages-scheduler.name")}
    assert (rows["cosine"]["values"], rows["cosine"]["completed"], rows["cosine"]["pruned"]) == ("4", "1", "1")
    expected = mean_ci([0.805, 0.815, 0.809, 0.3])
    assert float(rows["cosine"]["mean val.dice_mean"]) == pytest.approx(expected.mean)


@pytest.mark.parametrize("draw", [
    lambda cis: marginal_chart({"optimizer.name": [("adam", cis[0]), ("sgd", cis[1])]}, objective="val.dice_mean"),
    lambda cis: grouped_bars({"adam": {"dice": cis[0]}, "sgd": {"dice": cis[1]}}, group_title="optimizer.name",
                             bar_title="loss.name", objective="val.dice_mean"),
    lambda cis: objective_bars(["#0", "#1"], cis, objective="val.dice_mean"),
])
def test_bar_axes_start_at_zero_and_one_seed_draws_no_interval(draw):
    # values near 0.8 would tempt a zoomed axis; one seed (the second bar) has no interval to draw
    cis = [mean_ci([0.80, 0.82, 0.81]), mean_ci([0.79])]
    fig = draw(cis)
    for ax in fig.axes:
        if ax.patches:
            assert ax.get_ylim()[0] == 0.0
            errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert sum(len(c.lines[2][0].get_segments()) for c in errorbars) == 1  # the 3-seed bar only


def test_pivots_leave_out_pairs_where_one_is_set_per_value_of_the_other(study_report):
    from segtune.report.data import load_report_study, trial_records

    records = trial_records(load_report_study(study_report.parent))
    name, sched = Levels("optimizer.name", records), Levels("scheduler.name", records)
    lr = Levels("optimizer.momentum", records)
    space = {"optimizer.name": ["adam", "sgd"], "scheduler.name": ["none", "cosine"],
             "optimizer.momentum": {"when": "optimizer.name", "cases": {"sgd": [0.9, 0.99]}}}
    pairs = independent_pairs([name, sched, lr], space)
    assert [(a.path, b.path) for a, b in pairs] == [("optimizer.name", "scheduler.name"),
                                                    ("scheduler.name", "optimizer.momentum")]


def test_a_step_budget_run_reads_the_row_of_its_best_validation_not_of_its_epoch():
    # two validations an epoch: the best, at step 7 (epoch 3.5), is not the epoch's first row (step 6)
    from segtune.report.cells import _at_best
    from segtune.study.records import RunRecord

    stored = {"seed": 0, "value": 0.8, "epochs_run": 4.0, "best_epoch": 3.5, "run_dir": "r", "best_step": 7}
    run = RunRecord.from_attr(stored)
    assert (run.best_epoch, run.epochs_run, run.best_step) == (3.5, 4, 7)
    assert RunRecord.from_attr(run.to_attr()) == run
    rows = [{"step": "6", "epoch": "3.0"}, {"step": "7", "epoch": "3.5"}, {"step": "8", "epoch": "4.0"}]
    assert [r["step"] for r in rows if _at_best(r, run)] == ["7"]
    by_epoch = RunRecord.from_attr({**stored, "best_epoch": 3, "best_step": None})
    assert [r["epoch"] for r in [{"epoch": "2"}, {"epoch": "3"}] if _at_best(r, by_epoch)] == ["3"]


def test_the_study_s_best_is_in_bold_in_the_leaderboard_and_its_pivot_cell_only(study_report):
    md = (study_report / "report.md").read_text()
    section = lambda title: md.split(f"## {title}")[1].split("\n## ")[0]  # noqa: E731
    best = mean_ci([0.80, 0.82, 0.81])  # adam, none: the best mean of TRIALS
    assert section("Leaderboard").count("**") == 2 and f"**{best.mean:.4f}**" in section("Leaderboard")
    pivots = section("Hyperparameters: pairs and averages")
    assert pivots.count("**") == 2 and f"**{best.text()}**" in pivots
