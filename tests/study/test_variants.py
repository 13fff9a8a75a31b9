"""Variants (named joint settings) and conditions on several entries of a space."""

from __future__ import annotations

import pytest
from tests.conftest import study_tree, write_study

from segtune.errors import ConfigError
from segtune.report import study_report
from segtune.study import dry_run, run_study, study_records
from segtune.study.spec import parse_study

VARIANTS = [
    {"label": "step-fast", "scheduler.name": "step", "scheduler.step_size": 1, "scheduler.gamma": 0.5,
     "optimizer.lr": 0.002},
    {"label": "step-slow", "scheduler.name": "step", "scheduler.step_size": 2, "scheduler.gamma": 0.8,
     "optimizer.lr": 0.001},
    {"label": "constant", "scheduler.name": "none", "optimizer.lr": 0.001},
]


def test_variants_alone_are_one_entry_named_by_label():
    # three variants make three cells, each one value of `variant`, whose settings are the variant's
    _, space = parse_study(study_tree(space={}, variants=VARIANTS))
    cells = list(space.cells())
    assert cells == [{"variant": "step-fast"}, {"variant": "step-slow"}, {"variant": "constant"}]
    assert space.changes(cells[1]) == {"scheduler.name": "step", "scheduler.step_size": 2, "scheduler.gamma": 0.8,
                                       "optimizer.lr": 0.001}


def test_variants_cross_the_space_and_conditions_may_read_them():
    # 3 variants x 2 batch sizes, and a weight decay only for the constant-lr variant: 3 x 2 + 2 more cells
    space_raw = {"train.batch_size": [4, 8],
                 "optimizer.weight_decay": {"when": "variant", "cases": {"constant": [0.0, 0.01]}}}
    _, space = parse_study(study_tree(space=space_raw, variants=VARIANTS))
    cells = list(space.cells())
    assert space.n_grid_cells() == len(cells) == 8
    constant = [c for c in cells if c["variant"] == "constant"]
    assert sorted((c["train.batch_size"], c["optimizer.weight_decay"]) for c in constant) == [
        (4, 0.0), (4, 0.01), (8, 0.0), (8, 0.01)]
    assert all("optimizer.weight_decay" not in c for c in cells if c["variant"] != "constant")


@pytest.mark.parametrize("variants, space, message", [
    ([{"scheduler.name": "step"}], {}, "each variant needs a label"),
    ([{"label": "a", "optimizer.lr": 0.1}, {"label": "a", "optimizer.lr": 0.2}], {}, "label 'a' is used twice"),
    ([{"label": "a", "optimizer.lrr": 0.1}], {}, "variants\\[0\\] \\(a\\).*did you mean 'lr'"),
    ([{"label": "a", "optimizer.lr": 0.1}], {"optimizer.lr": [0.1]}, "set by the variants \\(a\\) too"),
    ([{"label": "a", "optimizer.name": "adamm"}], {}, "variant='a' is invalid(.|\n)*did you mean 'adam'"),
])
def test_invalid_variants_are_named(variants, space, message):
    with pytest.raises(ConfigError, match=message):
        parse_study(study_tree(space=space, variants=variants))


def test_a_condition_on_two_entries_picks_the_value_of_each_pair():
    # an lr per optimizer *and* loss, one value each; a pair without a case keeps the base lr
    raw = {"optimizer.name": ["adam", "sgd"], "loss.name": ["dice_ce", "dice"],
           "optimizer.lr": {"when": ["optimizer.name", "loss.name"],
                            "cases": {"adam, dice_ce": 2.0e-4, "adam, dice": 1.0e-3, "sgd, dice": [0.05, 0.1]}}}
    _, space = parse_study(study_tree(space=raw))
    cells = list(space.cells())
    lrs = sorted((c["optimizer.name"], c["loss.name"], c.get("optimizer.lr")) for c in cells)
    assert lrs == [("adam", "dice", 1.0e-3), ("adam", "dice_ce", 2.0e-4), ("sgd", "dice", 0.05), ("sgd", "dice", 0.1),
                   ("sgd", "dice_ce", None)]
    assert space.n_grid_cells() == 5  # the two entries form one grid dimension: no meaningless cell


@pytest.mark.parametrize("cases, message", [
    ({"adam": [0.1]}, "must give one value per condition \\(optimizer.name, scheduler.name\\)"),
    ({"adam, cosin": [0.1]}, "'cosin' is not a value of scheduler.name.*did you mean 'cosine'"),
])
def test_a_bad_case_of_a_two_entry_condition_is_named(cases, message):
    raw = {"optimizer.name": ["adam"], "scheduler.name": ["none", "cosine"],
           "optimizer.lr": {"when": ["optimizer.name", "scheduler.name"], "cases": cases}}
    with pytest.raises(ConfigError, match=message):
        parse_study(study_tree(space=raw))


@pytest.mark.slow
def test_a_variant_study_trains_each_label_with_its_settings(tmp_path):
    # the trial records its label as one parameter; its config carries the variant's settings
    variants = [{"label": "adam-fast", "optimizer.name": "adam", "optimizer.lr": 0.01},
                {"label": "sgd-slow", "optimizer.name": "sgd", "optimizer.lr": 0.001}]
    path = write_study(tmp_path, space={"train.batch_size": [8]}, variants=variants)
    study = run_study(path, study_dir=tmp_path / "out")
    assert dry_run(path, timing=False).studies[0].n_trials == len(study.trials) == 2  # the dry run's count
    records = {r.params["variant"]: r for r in study_records(study)}
    assert sorted(records) == ["adam-fast", "sgd-slow"]  # a label and a batch size per trial
    assert all(set(r.params) == {"variant", "train.batch_size"} for r in records.values())
    trials = {t.user_attrs["params"]["variant"]: t.user_attrs["config"] for t in study.trials}
    assert trials["sgd-slow"]["optimizer"]["name"] == "sgd" and trials["sgd-slow"]["optimizer"]["lr"] == 0.001
    assert trials["adam-fast"]["optimizer"]["lr"] == 0.01
    # the report names the trials by label: one setting, in the file's order
    text = study_report(study, study_dir=tmp_path / "out").with_suffix(".md").read_text()
    assert "**Varied:** variant ∈ {adam-fast, sgd-slow}" in text and "| trial | variant |" in text
