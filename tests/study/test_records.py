"""The trial record: one reading of what a study stores, shared by the leaderboard, the report and the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from tests.conftest import write_study
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from segtune.report.data import trial_records
from segtune.study import RunRecord, Status, TrialRecord, best_trial, leaderboard
from segtune.study.records import progress_line

LRS = [0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]


def _run(seed: int, value: float, run_dir: Path) -> dict:
    return {"seed": seed, "value": value, "epochs_run": 3, "best_epoch": 2, "run_dir": str(run_dir),
            "class_names": ["background", "disc"], "test": {"dice_mean": value - 0.1}}


def _trial(state, lr, *, value=None, curve=None, **attrs):
    return optuna.trial.create_trial(state=state, params={"optimizer.lr": lr},
                                     distributions={"optimizer.lr": CategoricalDistribution(LRS)},
                                     user_attrs={"params": {"optimizer.lr": lr}, "seconds": 5.0, **attrs},
                                     value=value, intermediate_values=curve or {})


@pytest.fixture
def mixed_study(tmp_path):
    """Trials added out of rank order: stopped, failed, pruned, complete, died, running, complete."""
    study = optuna.create_study(study_name="mixed", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    study.set_user_attr("spec", {"objective": "val.dice_mean"})
    study.add_trial(_trial(TrialState.FAIL, 0.1, curve={1: 0.4}, interrupted=True))  # Ctrl-C
    study.add_trial(_trial(TrialState.FAIL, 0.03, fail_reason="TrainingDiverged: loss nan at epoch 1"))
    study.add_trial(_trial(TrialState.PRUNED, 0.01, curve={1: 0.2, 2: 0.25}, epochs=2))
    study.add_trial(_trial(TrialState.COMPLETE, 0.003, value=0.6, curve={1: 0.6}, epochs=3,
                           runs=[_run(0, 0.6, tmp_path / "trials" / "0003-seed0")]))
    study.add_trial(_trial(TrialState.FAIL, 0.001))  # its worker died
    study.add_trial(_trial(TrialState.RUNNING, 0.0003, curve={1: 0.5}))
    study.add_trial(_trial(TrialState.COMPLETE, 0.1, value=0.8, curve={1: 0.8}, epochs=3, spread=0.01,
                           runs=[_run(0, 0.79, tmp_path / "r0"), _run(1, 0.81, tmp_path / "r1")]))
    return study


def test_the_leaderboard_and_the_report_give_the_same_states_in_the_same_order(mixed_study, tmp_path):
    # one ranking: completed best first, then running (it may still complete), pruned, failed,
    # stopped (Ctrl-C) and died; a Ctrl-C'd trial is "stopped" in both
    from segtune.report import write_trial_tables

    expected = [(6, "complete"), (3, "complete"), (5, "running"), (2, "pruned"), (1, "failed"), (0, "stopped"),
                (4, "died")]
    header, rows = leaderboard(mixed_study)
    assert [(r[0], r[header.index("state")]) for r in rows] == expected
    records = trial_records(mixed_study)
    assert [(r.number, r.state) for r in records] == expected
    write_trial_tables(mixed_study, records, tmp_path)
    with open(tmp_path / "trials.csv", newline="") as f:
        table = [(int(r["trial"]), r["state"]) for r in csv.DictReader(f)]
    assert table == expected


def test_a_trial_record_reads_every_stored_attribute(mixed_study, tmp_path):
    trials = mixed_study.get_trials()
    best = TrialRecord.from_trial(trials[6], trials=trials)
    assert (best.number, best.state, best.params, best.value) == (6, Status.COMPLETE, {"optimizer.lr": 0.1}, 0.8)
    assert best.values == {0: 0.79, 1: 0.81} and best.spread == 0.01 and best.epochs == 3 and best.seconds == 5.0
    assert best.runs[1] == RunRecord(seed=1, value=0.81, epochs_run=3, best_epoch=2, run_dir=tmp_path / "r1",
                                     class_names=("background", "disc"), test={"dice_mean": pytest.approx(0.71)})
    assert best.runs[0].to_attr() == _run(0, 0.79, tmp_path / "r0")  # written as it is read
    assert best.test == [{"dice_mean": pytest.approx(0.69)}, {"dice_mean": pytest.approx(0.71)}]
    assert best.home == 6 and best.same_as is None and best.reason == ""
    # an unfinished trial's value is its last report; a stopped one says why and has no runs of its own
    stopped = TrialRecord.from_trial(trials[0], trials=trials)
    assert stopped.value == 0.4 and stopped.reason == "stopped by Ctrl-C" and stopped.run_dirs == []
    assert TrialRecord.from_trial(trials[1]).reason == "TrainingDiverged: loss nan at epoch 1"
    assert TrialRecord.from_trial(trials[4]).reason == "its worker died (no heartbeat)"


def test_best_trial_is_the_record_of_the_best_completed_trial(mixed_study, tmp_path):
    best = best_trial(mixed_study)
    assert best.number == 6 and best.value == 0.8 and max(best.runs, key=lambda r: r.value).run_dir == tmp_path / "r1"
    empty = optuna.create_study(storage=f"sqlite:///{tmp_path / 'empty.db'}")
    empty.add_trial(_trial(TrialState.PRUNED, 0.01, curve={1: 0.2}))
    assert best_trial(empty) is None


def test_a_progress_line_gives_the_reason_the_leaderboard_gives(mixed_study):
    # a stopped or died trial says why, as its leaderboard row does; a completed one has no reason
    trials = mixed_study.get_trials()
    header, rows = leaderboard(mixed_study)
    reasons = {r[0]: r[header.index("reason")] for r in rows}
    assert progress_line(trials[0]).endswith("(stopped by Ctrl-C)") and reasons[0].startswith("stopped by Ctrl-C")
    assert progress_line(trials[4]).endswith("(its worker died (no heartbeat))")
    assert reasons[4] == "its worker died (no heartbeat)"
    assert progress_line(trials[1]).endswith("(TrainingDiverged: loss nan at epoch 1)")
    assert progress_line(trials[6]) == "trial   6 complete 0.8000  epochs   3      5 s  optimizer.lr=0.1"


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
