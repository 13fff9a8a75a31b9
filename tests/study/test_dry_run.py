"""The dry run: every problem of a study file at once, the counts and cells it prints, no training."""

from __future__ import annotations

import pytest
import yaml
from tests.conftest import study_tree

from segtune.cli import main
from segtune.errors import ConfigError
from segtune.study import dry_run, run_study


def _write(tmp_path, tree) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_dry_run_prints_counts_cells_and_minutes_and_trains_nothing(tmp_path, capsys):
    variants = [{"label": "adam", "optimizer.name": "adam"}, {"label": "sgd", "optimizer.name": "sgd",
                                                                 "optimizer.lr": 0.1}]
    path = _write(tmp_path, study_tree(space={"train.batch_size": [4, 8]}, variants=variants, repeats=2))
    assert main(["study", path, "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "grid, 4 trial(s) x 2 repeat(s) = 8 run(s) of at most 1 epochs" in out
    assert out.count("\nsgd ") == 2 and "variant  train.batch_size" in out  # one row per cell, by label
    assert "about 0 minutes" in out and "nothing was trained" in out
    assert not (tmp_path / "out").exists()


def test_every_problem_of_a_study_file_is_reported_at_once(tmp_path, capsys):
    # a misspelt set path, a misspelt space path's neighbour value and an impossible value, in one message
    tree = study_tree(space={"optimizer.name": ["adam", "sgdd"], "loss.name": ["dice", "dcie"]})
    tree["set"] = {"train.epoch": 2, "optimizer.lrr": 0.1}
    assert main(["study", _write(tmp_path, tree), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for part in ("set: unknown config path 'train.epoch'", "set: unknown config path 'optimizer.lrr'",
                 "optimizer.name='sgdd'", "loss.name='dcie'"):
        assert part in err, part
    assert "Traceback" not in err


def test_the_dry_run_finds_what_only_the_data_shows(tmp_path, capsys):
    # 3 classes: no class 'tumour' for the objective, and bce needs a binary task: both named at once
    tree = study_tree(objective="val.dice_per_class.tumour", space={"loss.name": ["dice", "bce"]})
    assert main(["study", _write(tmp_path, tree), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "the data has no class 'tumour'" in err
    assert "the cell loss.name=bce: loss 'bce' uses one sigmoid output and needs a binary task" in err


def test_a_run_checks_what_the_data_shows_before_any_trial(tmp_path):
    # a sigmoid loss on 3 classes: the study stops before its first trial, naming the value and the fix
    path = _write(tmp_path, study_tree(space={"loss.name": ["dice", "bce"]}))
    with pytest.raises(ConfigError, match="loss.name=bce: loss 'bce' uses one sigmoid output(.|\n)*use loss.name="):
        run_study(path, study_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "trials").exists()


def _label_map_variants(tmp_path, base_data: dict, loss: str, variants: list[dict]) -> str:
    base = {**study_tree()["base"], "loss": {"name": loss}}
    base["data"] = {**base["data"], **base_data}
    return _write(tmp_path, {**study_tree(variants=variants), "space": {}, "base": base})


def test_each_cell_s_loss_is_checked_against_the_classes_of_its_own_label_map(tmp_path):
    # 3 classes; the variant 'binary' maps class 2 onto 1, so its sigmoid loss fits its 2 classes
    variants = [{"label": "binary", "data.label_map": {2: 1}, "loss.name": "bce"},
                {"label": "multi", "loss.name": "dice_ce"}]
    plan = dry_run(_label_map_variants(tmp_path, {}, "dice_ce", variants), timing=False)
    assert plan.studies[0].n_trials == 2


def test_a_cell_whose_label_map_undoes_the_base_s_is_refused_before_any_trial(tmp_path):
    # the base is binary (class 2 onto 1) with bce; the variant 'three' maps 1 onto itself only, so
    # it has 3 classes and bce cannot train it: refused by the dry run and by a run alike, by its label
    variants = [{"label": "three", "data.label_map": {1: 1}}, {"label": "two", "train.batch_size": 8}]
    path = _label_map_variants(tmp_path, {"label_map": {2: 1}}, "bce", variants)
    with pytest.raises(ConfigError, match="the cell variant=three: loss 'bce' uses one sigmoid output"):
        dry_run(path, timing=False)
    with pytest.raises(ConfigError, match="the cell variant=three: loss 'bce'"):
        run_study(path, study_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "trials").exists()


def test_a_label_map_naming_a_label_the_data_lacks_is_named_with_its_cell(tmp_path):
    variants = [{"label": "bad", "data.label_map": {7: 1}}, {"label": "good", "train.batch_size": 8}]
    with pytest.raises(ConfigError, match="the cell variant=bad: data.label_map maps label 7"):
        dry_run(_label_map_variants(tmp_path, {}, "dice_ce", variants), timing=False)


def test_a_set_value_that_breaks_the_base_does_not_hide_the_rest_of_the_file(tmp_path, capsys):
    # train.epochs -1 makes the base invalid: the fields and the space are still checked, on the
    # base without the set changes, and named with it
    tree = study_tree(method="random", space={"optimizer.name": ["adam", "sgdd"], "optimizer.lrr": [0.1]})
    tree["set"] = {"train.epochs": -1}
    assert main(["study", _write(tmp_path, tree), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for part in ("base: invalid config\n  train.epochs: Input should be greater than or equal to 1 (got -1)",
                 "method random needs n_trials", "space: unknown config path 'optimizer.lrr'",
                 "optimizer.name='sgdd' is invalid"):
        assert part in err, part


def test_a_cell_that_merges_rare_classes_is_checked_on_its_own_data(tmp_path):
    # a share no foreground class reaches merges them all: that cell's data cannot be made, and is
    # named; the cell without merging passes
    path = _write(tmp_path, study_tree(space={"data.min_class_fraction": [0.0, 0.99]}))
    with pytest.raises(ConfigError, match="the cell data.min_class_fraction=0.99: data.min_class_fraction=0.99: "
                                          "every foreground class is rarer than that"):
        dry_run(path, timing=False)


def test_the_data_checks_run_with_the_config_errors(tmp_path, capsys):
    # 3 classes, no 'tumour': named with a misspelt space path in the same run
    tree = study_tree(objective="val.dice_per_class.tumour", space={"optimizer.lrr": [0.1], "loss.name": ["dice", "bce"]})
    assert main(["study", _write(tmp_path, tree), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for part in ("space: unknown config path 'optimizer.lrr'", "the data has no class 'tumour'",
                 "the cell loss.name=bce: loss 'bce' uses one sigmoid output"):
        assert part in err, part


def test_a_set_value_that_breaks_the_base_keeps_the_set_changes_that_do_not(tmp_path, capsys):
    # train.epochs -1 is refused; loss.name tversky is kept, so its alpha is a valid entry of the space
    tree = study_tree(space={"loss.alpha": [0.3, 0.7]})
    tree["set"] = {"train.epochs": -1, "loss.name": "tversky"}
    assert main(["study", _write(tmp_path, tree), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: Input should be greater than or equal to 1 (got -1)" in err
    assert "alpha" not in err


def test_every_set_problem_is_named_the_optimizer_s_too(tmp_path, capsys):
    tree = study_tree()
    tree["set"] = {"loss.name": "dcie", "optimizer.name": "sgdd"}
    assert main(["study", _write(tmp_path, tree), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "base: invalid config" in err and "unknown loss 'dcie'" in err and "unknown optimizer 'sgdd'" in err


def test_a_run_checks_every_cell_of_a_finite_space_on_its_own_data(tmp_path):
    # the base is binary (class 2 onto 1); the variant 'three' has 3 classes, and only crossed with
    # loss.name=bce does it fail: found before the first trial, not by a trial
    variants = [{"label": "two", "train.batch_size": 8}, {"label": "three", "data.label_map": {1: 1}}]
    tree = yaml.safe_load(open(_label_map_variants(tmp_path, {"label_map": {2: 1}}, "dice", variants)))
    tree["space"] = {"loss.name": ["dice", "bce"]}
    path = _write(tmp_path, tree)
    with pytest.raises(ConfigError, match="the cell variant=three, loss.name=bce: loss 'bce'"):
        run_study(path, study_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "trials").exists()


def test_a_base_whose_data_cannot_be_made_is_named_with_its_file(tmp_path):
    tree = study_tree()
    tree["set"] = {"data.label_map": {7: 1}}
    path = _write(tmp_path, tree)
    with pytest.raises(ConfigError, match=f"^{path}: the base config's data: data.label_map maps label 7"):
        dry_run(path, timing=False)


def test_data_that_cannot_be_made_is_named_once_per_data_not_per_cell(tmp_path):
    variants = [{"label": "bad", "data.label_map": {7: 1}}, {"label": "good", "train.batch_size": 8}]
    tree = yaml.safe_load(open(_label_map_variants(tmp_path, {}, "dice_ce", variants)))
    tree["space"] = {"loss.name": ["dice", "dice_ce"]}
    with pytest.raises(ConfigError) as raised:
        dry_run(_write(tmp_path, tree), timing=False)
    assert str(raised.value).count("maps label 7") == 1
