"""The report's answer on trials with per-case values: the ranking, the runs racing spent, the scatter."""

from __future__ import annotations

import random
from pathlib import Path

import optuna

from segtune.report.data import ReportedTrial
from segtune.report.document import Figure, Table, Text
from segtune.report.verdicts import answer_blocks, leader_metrics
from segtune.study.records import RACE, SPEC, RunRecord, Status


def trial(number: int, level: float, n_seeds: int, rng: random.Random) -> ReportedTrial:
    runs = []
    for seed in range(n_seeds):
        cases = {f"case{i}": {"dice_mean": level + 0.01 * i + rng.gauss(0, 0.005), "hd95_mean": 10 - 10 * level}
                 for i in range(12)}
        value = sum(c["dice_mean"] for c in cases.values()) / 12
        runs.append(RunRecord(seed=seed, value=value, epochs_run=1, best_epoch=1, run_dir=Path("."),
                              test={"dice_mean": value, "hd95_mean": 10 - 10 * level}, cases={"val": cases}))
    return ReportedTrial(number=number, state=Status.COMPLETE, params={"optimizer.lr": level}, value=level,
                         values={r.seed: r.value for r in runs}, runs=tuple(runs), home=number)


def test_answer_ranks_with_ties_counts_racing_runs_and_draws_the_cases():
    rng = random.Random(0)
    records = [trial(0, 0.80, 5, rng), trial(1, 0.80, 2, rng), trial(2, 0.60, 2, rng)]
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SPEC, {"objective": "val.dice_mean", "repeats": {"min": 2, "max": 5}})
    study.set_user_attr(RACE, {"0": "5 seeds: the most repeats allows",
                               "1": "practical tie: within 0.01 of the best (leader: trial 0)",
                               "2": "separated: behind trial 0 on 2 seeds"})
    blocks = answer_blocks(study, records)
    text = "\n".join(b.text for b in blocks if isinstance(b, Text))
    assert "**#0 = #1 > #2**" in text
    assert "spent 9 runs on the 3 completed configurations, against 15 for a fixed 5 seeds each (60%)" in text
    assert ("The race: 1 stopped behind the leader, 1 stopped as practical ties, 1 ran the most seeds" in text)
    verdicts = next(b for b in blocks if isinstance(b, Table))
    # case by case: 12 cases shared, each the mean over the 2 seeds both ran
    assert [row[2] for row in verdicts.rows] == ["Wilcoxon signed-rank over 12 cases"] * 2
    assert [row[-1] for row in verdicts.rows] == ["no difference", "better"]
    assert any(isinstance(b, Figure) and b.name == "per_case" for b in blocks)
    metrics = next(b for b in leader_metrics(records) if isinstance(b, Table))
    assert metrics.header == ["trial", "runs", "test dice_mean", "test hd95_mean"]
    assert [row[1] for row in metrics.rows] == [5, 2, 2]


def test_runs_csv_has_a_row_per_seed_and_fold(tmp_path):
    import csv

    from segtune.report.study import write_trial_tables

    runs = tuple(RunRecord(seed=s, fold=f, value=0.5 + s / 10 + f / 100, epochs_run=1, best_epoch=1, run_dir=Path("."))
                 for s in (0, 1) for f in (0, 1))
    record = ReportedTrial(number=3, state=Status.COMPLETE, params={"optimizer.lr": 0.01}, value=0.555,
                           values={0: 0.505, 1: 0.605}, runs=runs)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SPEC, {"objective": "val.dice_mean"})
    write_trial_tables(study, [record], tmp_path)
    with open(tmp_path / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["seed"], r["fold"], float(r["val.dice_mean"])) for r in rows] == [
        ("3", "0", "0", 0.5), ("3", "0", "1", 0.51), ("3", "1", "0", 0.6), ("3", "1", "1", 0.61)]
