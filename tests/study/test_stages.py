"""Staged studies: the winner rule, the path from stage to stage, resume after a stop between stages,
and the dry run's counts against the trials a run makes."""

from __future__ import annotations

import math
import types

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


@pytest.mark.slow
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
     "(?s)(?=.*stage 2 \\(b\\): invalid stage\n  spaces: unknown key)(?=.*two stages are named 'a')"
     "(?=.*stage 1 \\(a\\).*did you mean 'lr')"),
    ({"stages": [{"name": "a", "space": {"optimizer.lr": [0.1]}, "per": "optimizer.name"}]},
     "per: 'optimizer.name' must name a list entry"),
    ({"stages": [{"name": "a", "space": {"optimizer.lr": [0.1]}, "lr": [0.01]}]}, "both set the lr"),
])
def test_every_problem_of_a_staged_file_is_named_at_once(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_stages(_staged_file(tmp_path, **change))


@pytest.mark.slow
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


def _decided_by_hand(tmp_path, first: dict) -> tuple:
    """A staged file whose stage 1 (``first``'s keys added) has a decision written as a run writes
    it, and stage 2 a directory: no training."""
    import json
    from dataclasses import asdict

    from segtune.study.stages import Decision, stage_fingerprint, stage_study

    path, out = _staged_file(tmp_path), tmp_path / "out"
    tree = yaml.safe_load(path.read_text())
    tree["stages"][0].update(first)
    path.write_text(yaml.safe_dump(tree))
    staged = load_stages(path)
    spec, _ = stage_study(staged, 0, staged.top["base"], {})
    decision = Decision(0, "lr", "untested", {}, staged.top["base"], study=stage_fingerprint(staged, 0, spec))
    stage_dir(out, 0, staged.stages[0]).mkdir(parents=True)
    (stage_dir(out, 0, staged.stages[0]) / "decision.json").write_text(json.dumps(asdict(decision)))
    stage_dir(out, 1, staged.stages[1]).mkdir(parents=True)
    return path, out, tree


@pytest.mark.parametrize("first, edit, changed", [
    ({"method": "random", "n_trials": 2}, {"n_trials": 3}, "n_trials"),
    ({"method": "random", "n_trials": 2}, {"seed": 5}, "seed"),
    ({}, {"tie": "best_mean"}, "tie"),
    ({}, {"per": None}, "per"),
    ({}, {"pruner": {"name": "median", "min_rung": 1}}, "pruner"),
])
def test_an_edit_that_changes_what_a_decided_stage_decides_is_found_and_the_later_stages_named(
        tmp_path, first, edit, changed):
    from segtune.study.stages import walk

    path, out, tree = _decided_by_hand(tmp_path, first)
    assert len(walk(load_stages(path), out)[0]) == 1  # unedited: the decision stands
    tree["stages"][0].update(edit)
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError) as raised:
        walk(load_stages(path), out)
    message = str(raised.value)
    assert f"stage 1 (lr) was decided on another definition ({changed} differ)" in message
    # the advice names the stages that start from its winner, and the directory of the one started
    assert "The stages after it start from its winner and run again after it: 2 (schedule), 3 (decay)" in message
    assert f"move {stage_dir(out, 1, load_stages(path).stages[1])} aside with it" in message


def test_a_grid_stage_s_n_trials_is_not_part_of_its_definition(tmp_path):
    # a grid ignores n_trials: writing one changes nothing the stage decided
    from segtune.study.stages import walk

    path, out, tree = _decided_by_hand(tmp_path, {})
    tree["stages"][0]["n_trials"] = 7
    path.write_text(yaml.safe_dump(tree))
    assert len(walk(load_stages(path), out)[0]) == 1


def test_a_stage_races_its_repeats_as_a_study_does(tmp_path):
    from segtune.study.spec import Racing
    from segtune.study.stages import stage_study

    tree = yaml.safe_load(_staged_file(tmp_path).read_text())
    tree["stages"][2]["repeats"] = {"min": 2, "max": 4, "alpha": 0.1}
    path = tmp_path / "racing.yaml"
    path.write_text(yaml.safe_dump(tree))
    staged = load_stages(path)
    spec, _ = stage_study(staged, 2, staged.top["base"], {})
    assert spec.repeats == Racing(min=2, max=4, alpha=0.1) and (spec.min_repeats, spec.max_repeats) == (2, 4)
    assert [s.repeats for s in dry_run(path, timing=False).studies] == [1, 1, 4]  # at most racing's max seeds
    tree["stages"][2]["repeats"] = {"min": 3, "max": 2}
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="stage 3 \\(decay\\): invalid stage(.|\n)*min \\(3\\) must be less than max"):
        load_stages(path)


def test_lr_auto_with_an_lr_in_the_stage_s_space_or_variants_is_an_error(tmp_path):
    space = {"optimizer.lr": [0.1]}
    with pytest.raises(ConfigError, match="lr: 'auto' and space: optimizer.lr both set the lr \\(lr: auto finds the "
                                          "lr by the range test for every trial\\); give one of them: remove lr, "
                                          "or optimizer.lr from the space"):
        load_stages(_staged_file(tmp_path, stages=[{"name": "a", "space": space, "lr": "auto"}]))
    variants = [{"label": "fast", "optimizer.lr": 0.1}, {"label": "slow", "optimizer.lr": 0.01}]
    with pytest.raises(ConfigError, match="the variants' optimizer.lr \\(fast, slow\\) both set the lr"):
        load_stages(_staged_file(tmp_path, stages=[{"name": "a", "variants": variants, "lr": "auto"}]))


def test_an_invalid_stage_s_space_is_named_with_its_keys_and_stages_keep_their_numbers(tmp_path):
    stages = [{"name": "a", "tie": "coin", "space": {"optimizer.lrr": [0.1]}},
              {"name": "b", "space": {"optimizer.lrr": [0.1]}}]
    with pytest.raises(ConfigError) as raised:
        load_stages(_staged_file(tmp_path, stages=stages))
    message = str(raised.value)
    assert "stage 1 (a): invalid stage\n  tie:" in message
    assert "stage 1 (a): space: unknown config path 'optimizer.lrr'" in message
    assert "stage 2 (b): " in message and "stage 1 (b)" not in message  # b is the file's second stage


def test_an_invalid_stage_s_values_are_checked_in_the_same_run_and_numbered_as_the_valid_ones(tmp_path, capsys):
    # stage 1's tie and stage 2's repeats are invalid; their values (an unknown optimizer and loss, a
    # grid range without a step) are named with them, every stage counted from 1 by its name
    stages = [{"name": "a", "tie": "coin", "space": {"optimizer.name": ["adam", "sgdd"]}},
              {"name": "b", "repeats": {"min": 3, "max": 2},
               "space": {"model.dropout": {"low": 0.0, "high": 0.5}, "loss.name": ["dice", "dcie"]}},
              {"name": "c", "space": {"optimizer.lrr": [0.1]}}]
    assert main(["study", str(_staged_file(tmp_path, stages=stages)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for part in ("stage 1 (a): invalid stage\n  tie:", "stage 1 (a): space: the config for optimizer.name='sgdd'",
                 "stage 2 (b): invalid stage\n  repeats", "stage 2 (b): space: model.dropout: a grid needs a list",
                 "loss: unknown loss 'dcie'", "stage 3 (c): space: unknown config path 'optimizer.lrr'"):
        assert part in err, part
    assert "stages[" not in err and "Traceback" not in err


@pytest.mark.parametrize("per", [["optimizer.name"], {"path": "optimizer.name"}])
def test_a_badly_typed_per_is_an_error_not_a_crash(tmp_path, capsys, per):
    stages = [{"name": "a", "tie": "coin", "per": per, "space": {"optimizer.name": ["adam", "sgd"]}}]
    assert main(["study", str(_staged_file(tmp_path, stages=stages)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stage 1 (a): invalid stage\n  tie:" in err and "per: Input should be a valid string" in err
    assert "Traceback" not in err


def test_per_on_a_range_entry_is_refused(tmp_path):
    # a range's values are drawn by its trials: no value of it can pick the settings to keep
    stages = [{"name": "a", "per": "model.dropout", "space": {"model.dropout": {"low": 0.0, "high": 0.5, "step": 0.25},
                                                              "optimizer.name": ["adam", "sgd"]}}]
    with pytest.raises(ConfigError, match="stage 1 \\(a\\): per: 'model.dropout' must name a list entry of the "
                                          "stage's space, e.g. per: optimizer.name"):
        load_stages(_staged_file(tmp_path, stages=stages))


def test_per_reads_a_path_the_base_leaves_to_its_default_from_the_built_config():
    # the base sets no loss: its loss is the default dice_ce. The base is kept (within noise), and
    # the next base takes dice_ce's best lr, not nothing
    records = [_record(0, {"loss.name": "dice", "optimizer.lr": 1e-2}, {0: 0.81, 1: 0.80}),
               _record(1, {"loss.name": "dice_ce", "optimizer.lr": 1e-3}, {0: 0.80, 1: 0.81}),
               _record(2, {"loss.name": "dice_ce", "optimizer.lr": 1e-1}, {0: 0.30, 1: 0.31})]
    decision = decide(records, maximize=True, tie="keep_base", changes_of=lambda r: dict(r.params), base=BASE,
                      per="loss.name")
    assert decision.rule == "kept_base" and decision.changes == {"optimizer.lr": 1e-3}
    assert decision.base_after["optimizer"]["lr"] == 1e-3


@pytest.mark.slow  # the range test: 100 training steps, about 20 s on a loaded 2-core machine
def test_lr_auto_in_a_stage_finds_the_lr_again_instead_of_the_earlier_stage_s(tmp_path):
    # stage 1 fixes lr 0.05; stage 2 re-tunes it by the range test, once for both of its cells (the
    # augmentation is not what a found lr depends on), and passes the found lr on as its decision
    from segtune.study import AUTO_LR_CACHE

    stages = [{"name": "fixed", "space": {"optimizer.lr": [0.05]}},
              {"name": "retuned", "space": {"augment.name": ["none", "flip"]}, "lr": "auto"}]
    path, out = _staged_file(tmp_path, stages=stages), tmp_path / "out"
    staged, decisions = run_stages(path, study_dir=out)
    assert decisions[0].base_after["optimizer"]["lr"] == 0.05
    study = stage_studies(staged, out)[1]
    found = [v["lr"] for k, v in study.user_attrs.items() if k.startswith(AUTO_LR_CACHE)]
    assert len(found) == 1 and found[0] != 0.05
    assert [t.user_attrs["config"]["optimizer"]["lr"] for t in study.trials] == found * 2
    assert decisions[1].base_after["optimizer"]["lr"] == found[0]


@pytest.mark.slow
def test_a_racing_stage_trains_and_decides_on_the_seeds_its_race_gave(tmp_path):
    """A stage whose repeats race runs its rounds and decides from the extended trials, not the first seeds."""
    tree = yaml.safe_load(_staged_file(tmp_path).read_text())
    tree["stages"] = [{"name": "decay", "space": {"optimizer.weight_decay": [0.0, 0.01]},
                       "repeats": {"min": 2, "max": 3, "alpha": 0.05}}]
    path, out = tmp_path / "racing.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(tree))
    staged, decisions = run_stages(path, study_dir=out)
    (decision,) = decisions
    assert decision.best is not None and len(decision.best["seeds"]) == 3
    from segtune.study.records import Status, study_records

    records = [r for r in study_records(stage_studies(staged, out)[0]) if r.state == Status.COMPLETE]
    seeds = {r.params["optimizer.weight_decay"]: len(r.values) for r in records}  # one record per configuration
    # two configurations on 2 seeds leave the race's test 1 degree of freedom: neither stops, so a round runs
    assert len(records) == 2 and seeds == {0.0: 3, 0.01: 3}
    assert any("extends" in t.user_attrs for t in stage_studies(staged, out)[0].trials)
    assert decision.best["seeds"] == next(r.values for r in records if r.number == decision.best["number"])


def test_a_stage_whose_race_has_no_winner_keeps_its_base_and_says_why(tmp_path, monkeypatch):
    """Every run's objective is inf (HD95 where a class is never found): the stage's race leaves no
    configuration, so the stage keeps its starting configuration instead of taking the first trial."""
    import segtune.study.objective
    from segtune.report.stages import _RULES

    def train(config, **kwargs):
        split = {"dice_mean": 0.5, "hd95_mean": math.inf, "per_case": {}}
        return types.SimpleNamespace(summary={"val": split, "test": split, "epochs_run": 1, "best_epoch": 1,
                                              "class_names": ["background", "a"]})

    monkeypatch.setattr(segtune.study.objective, "train", train)
    tree = yaml.safe_load(_staged_file(tmp_path).read_text())
    tree["objective"] = "val.hd95_mean"
    tree["stages"] = [{"name": "decay", "space": {"optimizer.weight_decay": [0.0, 0.01]},
                       "repeats": {"min": 2, "max": 3}}]
    path = tmp_path / "racing.yaml"
    path.write_text(yaml.safe_dump(tree))
    base = load_stages(path).top["base"]
    _, (decision,) = run_stages(path, study_dir=tmp_path / "out")
    assert decision.rule == "no_winner" and decision.changes == {} and decision.base_after == base
    assert decision.n_trials == 2 and "no configuration left" in _RULES[decision.rule]


def test_the_winner_rule_with_a_race_that_ended_with_no_winner_changes_nothing():
    records = [_record(0, {"optimizer.weight_decay": 0.01}, {0: 0.9, 1: 0.9}),
               _record(1, {"optimizer.weight_decay": 0.0}, {0: 0.5, 1: 0.6})]
    decision = decide(records, maximize=True, tie="best_mean", changes_of=lambda r: dict(r.params), base=BASE,
                      race_end="no winner: no configuration is left in the race (...)")
    assert decision.rule == "no_winner" and decision.changes == {} and decision.base_after == BASE
    assert decide(records, maximize=True, tie="best_mean", changes_of=lambda r: dict(r.params),
                  base=BASE).changes == {"optimizer.weight_decay": 0.01}


def test_a_trial_whose_objective_is_not_finite_neither_wins_a_stage_nor_breaks_its_paired_test():
    """HD95 is inf where a class is never found: such a runner-up is left out (no paired test of inf
    differences), and a stage with no finite trial fixes nothing."""
    from segtune.report.stages import path_blocks

    best = _record(0, {"optimizer.weight_decay": 0.01}, {0: 2.0, 1: 2.1})
    inf = _record(1, {"optimizer.weight_decay": 0.0}, {0: 1.0, 1: math.inf})
    decision = decide([inf, best], maximize=False, tie="keep_base", changes_of=lambda r: dict(r.params), base=BASE)
    assert decision.rule == "untested" and decision.best["number"] == 0 and decision.runner_up is None
    decision = decide([inf], maximize=False, tie="keep_base", changes_of=lambda r: dict(r.params), base=BASE)
    assert decision.rule == "no_result" and decision.changes == {} and decision.base_after == BASE
    ended = "no winner: no configuration is left in the race (trial 1 left the race)"
    decision = decide([inf, best], maximize=False, tie="keep_base", changes_of=lambda r: dict(r.params), base=BASE,
                      race_end=ended)
    staged = types.SimpleNamespace(stages=[object()], top={"base": BASE})
    (row,) = path_blocks(staged, [decision])[1].rows
    assert row[4] == f"the race: {ended}" and "starting configuration is kept" in row[5]
