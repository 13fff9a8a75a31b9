"""How a race ends, and why it has no winner where every configuration's objective is not finite."""

from __future__ import annotations

import math
import types

import pytest
from tests.conftest import write_study

from segtune.study import best_trial, run_study
from segtune.study.racing import race
from segtune.study.records import RACE_END
from segtune.study.spec import Racing

RACE = Racing(min=2, max=5)
NO_BEST = ", so no trial is named best"
NO_FINITE_HINT = ("; an objective that is not finite on a seed (HD95 and ASD are inf where a class is never found) "
                  "takes its configuration out: race on one every run gives a finite value (e.g. val.dice_mean), or "
                  "find out why the runs miss a class")


def test_a_race_whose_every_objective_is_not_finite_ends_saying_why_there_is_no_winner():
    table = {0: {0: math.inf, 1: math.inf}, 1: {0: 2.0, 1: math.nan}, 2: {0: -math.inf, 1: 2.0}}
    r = race(table, RACE, maximize=False)
    assert r.over and r.more == () and r.looks == []
    assert r.calls == {0: "left the race: its objective on seed 0 is not finite",
                       1: "left the race: its objective on seed 1 is not finite",
                       2: "left the race: its objective on seed 0 is not finite"}
    assert r.end == ("no winner: no configuration is left in the race (trial 0 left the race: its objective on seed 0 "
                     "is not finite; trial 1 left the race: its objective on seed 1 is not finite; trial 2 left the "
                     "race: its objective on seed 0 is not finite)" + NO_BEST + NO_FINITE_HINT)


def test_a_race_the_leader_leaves_on_a_later_seed_names_the_one_stopped_before_it():
    table = {0: {0: 0.9, 1: 0.92, 2: math.inf}, 1: {0: 0.6, 1: 0.62}}
    r = race(table, RACE, maximize=True)
    assert r.over and r.end == ("no winner: no configuration is left in the race (trial 0 left the race: its "
                                "objective on seed 2 is not finite; trial 1 separated: behind trial 0 on 2 seeds)"
                                + NO_BEST + " (trial 1 was stopped against trial 0, which left the race later)"
                                + NO_FINITE_HINT)


@pytest.mark.parametrize("table, failed, end", [
    ({0: {0: 2.0, 1: math.inf}, 1: {0: 2.0, 1: 2.1}}, frozenset(), "trial 1 is the last in the race, after 2 seeds"),
    ({0: {s: 0.9 + 0.01 * (s % 2) for s in range(5)}, 1: {s: 0.9 + 0.01 * ((s + 1) % 2) for s in range(5)}},
     frozenset(), "trials 0, 1 ran 5 seeds, the most repeats allows; trial 1 has the best mean over them"),
    ({0: {0: 0.9}}, frozenset(), "no winner: no configuration has completed its first 2 seeds"),
    ({0: {0: 0.9, 1: 0.91}, 1: {0: 0.9, 1: 0.92}}, frozenset({0, 1}),
     "no winner: no configuration is left in the race (trial 0 left the race: its seed 3 failed; trial 1 left the "
     "race: its seed 3 failed)" + NO_BEST),
])
def test_every_end_of_a_race_is_a_sentence(table, failed, end):
    r = race(table, RACE, maximize=True, failed=failed)
    assert r.over and r.end == end


def test_a_race_not_over_has_no_end_yet():
    r = race({0: {0: 0.9, 1: 0.91}, 1: {0: 0.9, 1: 0.92}}, RACE, maximize=True)
    assert r.more == (0, 1) and r.end == ""


def test_a_racing_study_whose_every_run_is_not_finite_records_and_prints_no_winner(tmp_path, monkeypatch, capsys):
    """HD95 is inf where a class is never found: every run of every configuration here. The trials
    complete (with an inf objective), the race ends with no winner, and the study says so."""
    import segtune.study.objective
    from segtune.cli.study import print_study_results
    from segtune.report import study_report

    def train(config, **kwargs):
        split = {"dice_mean": 0.5, "hd95_mean": math.inf, "per_case": {}}
        return types.SimpleNamespace(summary={"val": split, "test": split, "epochs_run": 1, "best_epoch": 1,
                                              "class_names": ["background", "a"]})

    monkeypatch.setattr(segtune.study.objective, "train", train)
    path = write_study(tmp_path, repeats={"min": 2, "max": 4}, space={"optimizer.lr": [0.01, 0.02]},
                       objective="val.hd95_mean")
    study = run_study(path, study_dir=tmp_path / "out")
    assert [(t.state.name, t.value, len(t.user_attrs["runs"])) for t in study.trials] == [("COMPLETE", math.inf, 2)] * 2
    end = study.user_attrs[RACE_END]
    assert end == ("no winner: no configuration is left in the race (trial 0 left the race: its objective on seed 0 "
                   "is not finite; trial 1 left the race: its objective on seed 0 is not finite)" + NO_BEST
                   + NO_FINITE_HINT)
    assert best_trial(study) is None
    capsys.readouterr()
    assert print_study_results(study) is None
    out = capsys.readouterr().out
    assert f"\nthe race: {end}\n" in out and "no best configuration: the race has no winner" in out \
        and "best: trial" not in out
    text = study_report(study, study_dir=tmp_path / "out").with_suffix(".md").read_text()
    assert f"There is no best configuration. The race: {end}." in text and "Best:" not in text


def _mock_training(monkeypatch, hd95):
    """Training replaced by ``hd95(lr, seed)``: its val and test hd95_mean."""
    import segtune.study.objective

    def train(config, **kwargs):
        split = {"dice_mean": 0.5, "hd95_mean": hd95(config.optimizer.lr, config.seed), "per_case": {}}
        return types.SimpleNamespace(summary={"val": split, "test": split, "epochs_run": 1, "best_epoch": 1,
                                              "class_names": ["background", "a"]})

    monkeypatch.setattr(segtune.study.objective, "train", train)


def _three_places(study, tmp_path, capsys):
    """The CLI's output and the report's text of ``study``."""
    from segtune.cli.study import print_study_results
    from segtune.report import study_report

    capsys.readouterr()
    print_study_results(study)
    out = capsys.readouterr().out
    return out, study_report(study, study_dir=tmp_path / "out").with_suffix(".md").read_text()


@pytest.mark.parametrize("repeats", [2, {"min": 2, "max": 4}])
def test_a_trial_whose_objective_is_not_finite_on_one_seed_is_named_best_nowhere(tmp_path, monkeypatch, capsys, repeats):
    """Seed 0 finite, seed 1 inf for every configuration: no best in the CLI or the report, spread unknown."""
    from segtune.study.records import leaderboard

    _mock_training(monkeypatch, lambda lr, seed: 1.0 + lr if seed == 0 else math.inf)
    path = write_study(tmp_path, repeats=repeats, space={"optimizer.lr": [0.01, 0.02]}, objective="val.hd95_mean")
    study = run_study(path, study_dir=tmp_path / "out")
    assert [t.value for t in study.trials] == [math.inf] * 2 and best_trial(study) is None
    assert [t.user_attrs["spread"] for t in study.trials] == [None, None]
    header, rows = leaderboard(study)
    assert [row[header.index("spread")] for row in rows] == ["-", "-"]
    out, text = _three_places(study, tmp_path, capsys)
    assert "no best configuration" in out and "best: trial" not in out and "Best:" not in text
    assert "there is no best configuration" in text.lower()
    assert ("the race: no winner" in out and "The race: no winner" in text) == isinstance(repeats, dict)


def test_a_race_whose_leaders_leave_after_one_was_separated_names_no_best_and_only_trials_on_the_leaderboard(
        tmp_path, monkeypatch, capsys):
    """B is separated behind A after 2 seeds; A and C are then inf on their 3rd: the race has no winner, so
    B is no best (it is only known to be behind A) in the CLI, the report and the sentence, which names
    each configuration by the trial its leaderboard row shows."""
    from segtune.study.records import RACE, leaderboard

    values = {0.01: [1.0, 1.1, math.inf], 0.02: [5.0, 5.3], 0.03: [1.02, 1.12, math.inf]}  # A, B, C
    _mock_training(monkeypatch, lambda lr, seed: values[lr][seed])
    path = write_study(tmp_path, repeats={"min": 2, "max": 4, "alpha": 0.2},
                       space={"optimizer.lr": [0.01, 0.02, 0.03]}, objective="val.hd95_mean")
    study = run_study(path, study_dir=tmp_path / "out")
    header, rows = leaderboard(study)
    shown = {row[header.index("optimizer.lr")]: row[0] for row in rows}  # lr (as shown): trial number
    a, b, c = shown["0.01"], shown["0.02"], shown["0.03"]
    homes = {t.params["optimizer.lr"]: t.number for t in study.trials if "extends" not in t.user_attrs}
    assert a != homes[0.01] and c != homes[0.03] and b == homes[0.02]  # A and C shown by their round's trial
    end = study.user_attrs[RACE_END]
    assert end.startswith(f"no winner: no configuration is left in the race (trial {min(a, c)} left the race: its "
                          f"objective on seed 2 is not finite")
    assert f"trial {b} separated: behind trial {a} on 2 seeds" in end
    assert f", so no trial is named best (trial {b} was stopped against trial {a}, which left the race later)" in end
    assert "none can be ranked" not in end
    assert study.user_attrs[RACE][str(homes[0.02])] == f"separated: behind trial {a} on 2 seeds"
    assert {int(n) for n in __import__("re").findall(r"trial (\d+)", end)} <= {row[0] for row in rows}
    assert best_trial(study) is None
    out, text = _three_places(study, tmp_path, capsys)
    assert "no best configuration: the race has no winner" in out and "best: trial" not in out
    assert f"There is no best configuration. The race: {end}." in text and "Best:" not in text


def test_a_report_of_a_race_with_no_winner_emphasises_no_trial_and_shows_no_best_trials_predictions(
        tmp_path, monkeypatch, capsys):
    """The race of the study above ends with no winner; its only finite trial (B, behind A) leads the
    leaderboard, but the report's leaderboard, pivots and prediction sections do not call it the best."""
    import segtune.report.study as report_study
    from segtune.report.options import ReportOptions

    values = {0.01: [1.0, 1.1, math.inf], 0.02: [5.0, 5.3], 0.03: [1.02, 1.12, math.inf]}
    _mock_training(monkeypatch, lambda lr, seed: values[lr][seed])
    path = write_study(tmp_path, repeats={"min": 2, "max": 4, "alpha": 0.2},
                       space={"optimizer.lr": [0.01, 0.02, 0.03]}, objective="val.hd95_mean")
    study = run_study(path, study_dir=tmp_path / "out")
    shown = []
    monkeypatch.setattr(report_study, "worst_case_blocks", lambda title, *a, **k: shown.append(title) or [])
    monkeypatch.setattr(report_study, "section", lambda title, blocks: shown.append(title) or list(blocks))
    text = report_study.study_report(study, study_dir=tmp_path / "out",
                                     options=ReportOptions(formats=())).with_suffix(".md").read_text()
    assert "**" not in text.split("## Leaderboard")[1].split("\n## ")[0]  # no cell of the leaderboard in bold
    assert "Predictions of the top-ranked trials (the study names no best)" in shown
    assert not any(t.startswith("Worst cases") or t.startswith("trial") for t in shown)
