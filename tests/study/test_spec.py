"""The study file: its fields and its space checked when it is read, its base file and --set, its
name and objective; the demo and example study files."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from tests.conftest import study_tree, tiny_tree, write_study

from segtune.errors import ConfigError
from segtune.study import run_study
from segtune.study.spec import load_study, parse_study

TrialState = optuna.trial.TrialState


@pytest.mark.parametrize("space, message", [
    ({"optimzer.lr": [0.1]}, "no section or field 'optimzer' \\(did you mean 'optimizer'\\?\\)"),
    ({"optimizer.lrr": [0.1]}, "optimizer has no option 'lrr' \\(did you mean 'lr'\\?\\)"),
    ({"optimizer.name": ["adam", "sgdd"]}, "optimizer.name='sgdd' is invalid(.|\n)*did you mean 'sgd'"),
    ({"optimizer.lr": {"low": 0.1, "high": 0.01}}, "low must be below high"),
    ({"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log ranges need low > 0"),
    ({"optimizer.lr": []}, "list of values is empty"),
    ({"optimizer.lr": 0.1}, "give a list of values, a range"),
    ({"optimizer.name": ["adam"], "optimizer.lr": {"when": "optimizer.nam", "cases": {"adam": [0.1]}}},
     "did you mean 'optimizer.name'"),
    ({"optimizer.name": ["adam"], "optimizer.lr": {"when": "optimizer.name", "cases": {"sdg": [0.1]}}},
     "case 'sdg' is not a value of optimizer.name"),
])
def test_invalid_space_fails_before_any_trial(space, message):
    # every problem of the space is found when the study file is read, naming path and rule
    with pytest.raises(ConfigError, match=message):
        parse_study(study_tree(method="random", n_trials=2, space=space))


@pytest.mark.parametrize("fields, message", [
    ({"method": "random"}, "method random needs n_trials"),
    ({"method": "annealing"}, "unknown study method 'annealing'"),
    ({"objective": "val.dise_mean"}, "objective must be SPLIT.METRIC"),
    ({"objective": "test.dice_mean", "pruner": "median"}, "pruner median needs a validation objective"),
    ({"pruner": {"name": "median", "min_epoch": 2}}, "has no option 'min_epoch' \\(did you mean 'min_epochs'"),
    ({"space": {"optimizer.lr": {"low": 0.001, "high": 0.1}}}, "a grid needs a list of values or a step"),
])
def test_invalid_study_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        parse_study(study_tree(**fields))


def test_a_study_refuses_a_thread_count_that_would_not_be_its_own():
    # the trials train at the study's fixed count; auto in the base, or a count per trial, is refused, not ignored
    tree = study_tree()
    tree["base"]["train"]["num_threads"] = "auto"
    with pytest.raises(ConfigError, match="base config sets train.num_threads: auto, but a study trains every trial "
                                          "at one thread count.*--threads N"):
        parse_study(tree)
    with pytest.raises(ConfigError, match="train.num_threads is in the space or a variant"):
        parse_study(study_tree(space={"optimizer.lr": [0.01], "train.num_threads": [1, 2]}))
    tree["base"]["train"]["num_threads"] = 2  # a count in the base is the study's to override, as before
    assert parse_study(tree)[0].base["train"]["num_threads"] == 2


def test_min_rung_names_the_pruners_first_rung_on_either_clock():
    # min_rung is min_epochs by its clock-neutral name (a step under train.steps); both at once is an error
    spec, _ = parse_study(study_tree(pruner={"name": "median", "min_rung": 3}))
    assert spec.pruner.options == {"min_epochs": 3, "n_startup_trials": 2}
    with pytest.raises(ConfigError, match="pruner.min_rung=3 and pruner.min_epochs=2 are one setting"):
        parse_study(study_tree(pruner={"name": "median", "min_rung": 3, "min_epochs": 2}))


def test_base_file_is_found_next_to_the_study_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_tree()))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "method": "grid", "space": {"optimizer.lr": [0.1]}}))
    spec, _ = load_study(path)
    assert spec.name == "s" and spec.base["data"]["source"] == "synthetic"


def test_set_changes_the_base_and_a_misspelt_path_is_named(tmp_path):
    path = write_study(tmp_path, set={"train.batch_size": 4})
    spec, _ = load_study(path, ["optimizer.lr=0.5"])
    assert spec.base["train"]["batch_size"] == 4 and spec.base["optimizer"]["lr"] == 0.5
    with pytest.raises(ConfigError, match="train has no option 'bach_size' \\(did you mean 'batch_size'"):
        load_study(write_study(tmp_path, set={"train.bach_size": 4}))


def test_set_and_overrides_switching_a_component_leave_out_the_old_ones_options(tmp_path):
    # as `--set` of a run does: adam's betas are not sgd's; a later --set of a path wins over the file's set
    base = tiny_tree(optimizer={"name": "adam", "lr": 0.01, "betas": [0.8, 0.9]})
    spec, _ = load_study(write_study(tmp_path, base=base, set={"optimizer.name": "sgd", "optimizer.lr": 0.1}),
                         ["optimizer.lr=0.2"])
    assert spec.base["optimizer"] == {"name": "sgd", "lr": 0.2}


def test_an_objective_naming_a_class_the_data_lacks_fails_before_the_first_trial(tmp_path, monkeypatch, capsys):
    import segtune.study.objective
    from segtune.cli import main

    def no_training(*args, **kwargs):
        raise AssertionError("a trial trained")

    monkeypatch.setattr(segtune.study.objective, "train", no_training)
    path = write_study(tmp_path, objective="val.dice_per_class.tumour")
    with pytest.raises(ConfigError, match=r"study.yaml: objective val.dice_per_class.tumour: the data has no class "
                                          r"'tumour'; its classes are background, class_1, class_2: "
                                          r"e.g. objective: val.dice_per_class.class_2"):
        run_study(path, study_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no storage, no trial
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: objective val.dice_per_class.tumour: the data has no")
    # a class the data has: the study runs, its objective read per trial
    monkeypatch.undo()
    study = run_study(write_study(tmp_path, objective="val.dice_per_class.class_2"), study_dir=tmp_path / "ok")
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    run = study.trials[0].user_attrs["runs"][0]
    assert study.trials[0].value == run["value"] and 0 <= run["value"] <= 1


def test_the_demo_study_file_is_valid():
    from segtune.cli import demo_config_path

    spec, space = load_study(demo_config_path().with_name("demo_study.yaml"))
    assert spec.base["data"]["source"] == "demo"
    assert spec.method.name == "grid" and space.n_grid_cells() == 4


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].joinpath("studies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_study_file_is_valid(path):
    spec, space = load_study(path)
    assert spec.name and space.params


@pytest.mark.parametrize("name", ["..", "../x", "/tmp/x", ".x"])
def test_a_study_name_that_is_not_a_safe_file_name_is_refused(tmp_path, monkeypatch, capsys, name):
    # the name becomes the study folder runs/<name> (its study.db, trials and report)
    from segtune.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path, name=name)
    assert main(["study", str(path)]) == 2
    assert (f"study.yaml: invalid study file\n  name: must be a safe file name: letters, digits, '-', '_' and '.', "
            f"not starting with '.'") in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_a_study_named_after_its_file_gets_a_safe_name(tmp_path):
    tree = study_tree()
    del tree["name"]
    path = tmp_path / ".my study.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert load_study(path)[0].name == "my-study"


def test_the_fields_space_variants_and_cases_are_checked_together_and_named_at_once():
    # a study field (random without n_trials), a misspelt space path, an empty list, a bad case and
    # a value listed twice in one condition, a variant without a label, a variant's misspelt path and
    # an impossible value: one error names each, with its path and its fix
    tree = study_tree(method="random", variants=[{"optimizer.weight_decay": 0.1},
                                                 {"label": "a", "train.epoch": 2}],
                      space={"optimzer.lr": [0.1], "train.batch_size": [], "optimizer.name": ["adam", "sgd"],
                             "optimizer.momentum": {"when": "optimizer.name", "cases": {"sdg": [0.9],
                                                                                         "sgd": [0.0, 0.0]}},
                             "loss.name": ["dice", "dcie"]})
    with pytest.raises(ConfigError) as raised:
        parse_study(tree)
    message = str(raised.value)
    for part in ("method random needs n_trials", "space: unknown config path 'optimzer.lr'",
                 "space: train.batch_size: the list of values is empty",
                 "case 'sdg' is not a value of optimizer.name; choose from ['adam', 'sgd']",
                 "optimizer.momentum (case sgd): the value 0.0 is listed twice",
                 "variants[0]: each variant needs a label", "variants[1] (a): unknown config path 'train.epoch'",
                 "loss.name='dcie' is invalid"):
        assert part in message, part


def test_a_grid_names_every_range_it_cannot_take():
    # two float ranges without a step: both are named, not only the first
    tree = study_tree(space={"optimizer.lr": {"low": 0.001, "high": 0.1}, "loss.alpha": {"low": 0.1, "high": 0.9}})
    with pytest.raises(ConfigError, match="(?s)optimizer.lr: a grid needs.*loss.alpha: a grid needs"):
        parse_study(tree)
