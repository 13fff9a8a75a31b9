"""Staged studies: the winner rule, the path from stage to stage, resume after a stop between stages,
and the dry run's counts against the trials a run makes."""

from __future__ import annotations

import pytest
import yaml
from tests.conftest import tiny_tree

from segtune.cli import main
from segtune.errors import ConfigError
from segtune.study import dry_run, load_stages, run_stages
from segtune.study.records import Status, TrialRecord
from segtune.study.stages import decide, stage_dir, stage_studies


def _record(number: int, params: dict, values: dict[int, float]) -> TrialRecord:
    return TrialRecord(number=number, state=Status.COMPLETE, params=params,
                       value=sum(values.values()) / len(values), values=values)


BASE = {"optimizer": {"name": "adam", "weight_decay": 0.0}}


@pytest.mark.parametrize("runner_up, tie, rule, fixed", [
    # the runner-up 0.001 below the best on each seed but one: the interval of the difference holds 0
    ({0: 0.80, 1: 0.83, 2: 0.79}, "keep_base", "kept_base", {}),
    ({0: 0.80, 1: 0.83, 2: 0.79}, "best_mean", "tie_best_mean", {"optimizer.weight_decay": 0.01}),
    # clearly below on every seed: separable, the best wins whatever the tie rule
    ({0: 0.70, 1: 0.71, 2: 0.69}, "keep_base", "best_mean", {"optimizer.weight_decay": 0.01}),
])
def test_the_winner_rule_keeps_the_base_when_best_and_runner_up_are_within_noise(runner_up, tie, rule, fixed):
    best = _record(0, {"optimizer.weight_decay": 0.01}, {0: 0.81, 1: 0.82, 2: 0.80})
    other = _record(1, {"optimizer.weight_decay": 0.001}, runner_up)
    decision = decide([other, best], maximize=True, tie=tie, changes_of=lambda r: dict(r.params), base=BASE)
    assert decision.rule == rule and decision.changes == fixed
    assert decision.best["number"] == 0 and decision.runner_up["number"] == 1
    assert decision.base_after["optimizer"]["weight_decay"] == fixed.get("optimizer.weight_decay", 0.0)
    assert decision.difference["seeds"] == [0, 1, 2]


def test_one_seed_cannot_be_tested_and_the_best_mean_wins():
    best, other = _record(0, {"optimizer.lr": 0.01}, {0: 0.9}), _record(1, {"optimizer.lr": 0.1}, {0: 0.89})
    decision = decide([best, other], maximize=True, tie="keep_base", changes_of=lambda r: dict(r.params), base=BASE)
    assert decision.rule == "untested" and decision.changes == {"optimizer.lr": 0.01} and decision.difference is None


def test_per_keeps_each_values_best_settings():
    records = [_record(0, {"optimizer.name": "adam", "optimizer.lr": 1e-3}, {0: 0.9, 1: 0.9}),
               _record(1, {"optimizer.name": "adam", "optimizer.lr": 1e-2}, {0: 0.5, 1: 0.6}),
               _record(2, {"optimizer.name": "sgd", "optimizer.lr": 0.1}, {0: 0.7, 1: 0.8}),
               _record(3, {"optimizer.name": "sgd", "optimizer.lr": 0.01}, {0: 0.2, 1: 0.3})]
    decision = decide(records, maximize=True, tie="keep_base", changes_of=lambda r: dict(r.params), base=BASE,
                      per="optimizer.name")
    assert decision.follows == {"optimizer.name": {"adam": {"optimizer.lr": 1e-3}, "sgd": {"optimizer.lr": 0.1}}}
    # two seeds: the runner-up (sgd) is within the noise, so the adam base is kept, at adam's best lr
    assert decision.rule == "kept_base" and decision.changes == {"optimizer.lr": 1e-3}
    assert decision.base_after["optimizer"] == {"name": "adam", "weight_decay": 0.0, "lr": 1e-3}


def _staged_file(tmp_path, **top):
    tree = {"name": "staged", "base": tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0}),
            "method": "grid", "repeats": 1,
            "stages": [
                {"name": "lr", "per": "optimizer.name",
                 "space": {"optimizer.name": ["adam", "sgd"],
                           "optimizer.lr": {"when": "optimizer.name", "cases": {"adam": 0.01, "sgd": 0.1}}}},
                {"name": "schedule", "space": {"optimizer.name": ["adam", "sgd"], "scheduler.name": ["none"]}},
                {"name": "decay", "space": {"optimizer.weight_decay": [0.0, 0.01]}, "lr": [0.003]}]}
    tree.update(top)
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


class _Stop(Exception):
    pass


def test_a_stop_between_stages_resumes_at_the_next_stage_and_never_reruns_a_finished_one(tmp_path, capsys):
    path, out = _staged_file(tmp_path), tmp_path / "out"

    def stop_after_first(decision):
        if decision.index == 0:
            raise _Stop  # the process ends right after stage 1 wrote its decision

    with pytest.raises(_Stop):
        run_stages(path, study_dir=out, on_stage_done=stop_after_first)
    staged = load_stages(path)
    first = stage_dir(out, 0, staged.stages[0])
    written = (first / "decision.json").read_text()
    assert not stage_dir(out, 1, staged.stages[1]).exists()
    staged, decisions = run_stages(path, study_dir=out)
    studies = stage_studies(staged, out)
    assert len(studies[0].trials) == 2 and (first / "decision.json").read_text() == written  # not run again
    assert [d.name for d in decisions] == ["lr", "schedule", "decay"]
    # each stage's trials ran on the previous winner; stage 2's sgd trial took stage 1's sgd lr
    lrs = {t.user_attrs["params"]["optimizer.name"]: t.user_attrs["config"]["optimizer"]["lr"] for t in studies[1].trials}
    assert lrs == {"adam": 0.01, "sgd": 0.1}
    winner = decisions[1].base_after["optimizer"]["name"]
    assert {t.user_attrs["config"]["optimizer"]["name"] for t in studies[2].trials} == {winner}
    assert {t.user_attrs["config"]["optimizer"]["lr"] for t in studies[2].trials} == {0.003}  # the stage's own lr
    # the dry run counts the trials that the run made
    assert [s.n_trials for s in dry_run(path, timing=False).studies] == [len(s.trials) for s in studies] == [2, 2, 2]
    assert main(["study", "status", str(path), "--out", str(out)]) == 0
    assert "stage 3 (decay): decided (untested): fixed {'optimizer.weight_decay'" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"tie": "coin"}, "tie must be keep_base or best_mean"),
    ({"space": {"optimizer.lr": [0.1]}}, "space belongs to each stage"),
    # three problems in three stages, all in one message
    ({"stages": [{"name": "a", "space": {"optimizer.lrr": [0.1]}}, {"name": "b", "spaces": {}},
                 {"name": "a", "space": {"optimizer.lr": [0.1]}}]},
     "(?s)(?=.*stages\\[1\\]: invalid stage\n  spaces: unknown key)(?=.*two stages are named 'a')"
     "(?=.*stage 1 \\(a\\).*did you mean 'lr')"),
    ({"stages": [{"name": "a", "space": {"optimizer.lr": [0.1]}, "per": "optimizer.name"}]},
     "per: 'optimizer.name' must name a list entry"),
    ({"stages": [{"name": "a", "space": {"optimizer.lr": [0.1]}, "lr": [0.01]}]}, "both set the lr"),
])
def test_every_problem_of_a_staged_file_is_named_at_once(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_stages(_staged_file(tmp_path, **change))


def test_a_decided_stage_whose_definition_changed_is_an_error_not_a_silent_reuse(tmp_path):
    path, out = _staged_file(tmp_path), tmp_path / "out"
    tree = yaml.safe_load(path.read_text())
    tree["stages"] = tree["stages"][:1]
    path.write_text(yaml.safe_dump(tree))
    run_stages(path, study_dir=out)
    tree["stages"][0]["space"]["optimizer.lr"]["cases"]["sgd"] = 0.05
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="stage 1 \\(lr\\) was decided on another definition \\(space differ"):
        run_stages(path, study_dir=out)


def test_a_later_decision_wins_over_an_earlier_stage_s_per_value_settings():
    # stage 1 kept, for train_fraction 0.1, patience 2; stage 2 then chose patience 7: 7 stays
    from segtune.study.stages import Decision, next_follows

    earlier = {"data.train_fraction": {"0.1": {"train.patience": 2, "model.num_res_units": 5}}}
    later = Decision(1, "patience", "best_mean", {"train.patience": 7}, {})
    assert next_follows(earlier, later) == {"data.train_fraction": {"0.1": {"model.num_res_units": 5}}}


def test_duplicate_values_and_cases_are_errors_not_an_endless_grid():
    from segtune.errors import ConfigError
    from segtune.study.space import Space

    with pytest.raises(ConfigError, match="the value 0.1 is listed twice"):
        Space({"optimizer.lr": [0.1, 0.1]})
    with pytest.raises(ConfigError, match="are the same case"):
        Space({"optimizer.name": ["adam"], "loss.name": ["dice"],
               "optimizer.lr": {"when": ["optimizer.name", "loss.name"],
                                "cases": {"adam, dice": [0.1, 0.2], "adam,dice": [0.3]}}})
