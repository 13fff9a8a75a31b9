"""Pre-training as a study setting: each distinct pre-training runs once, in the study folder, and
every trial with that setting starts from it and stores its reconstruction errors."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from segtune.study import run_study

from tests.conftest import tiny_tree


@pytest.mark.slow  # 4 trials and 2 pre-trainings
def test_each_pretraining_setting_runs_once_and_its_errors_are_on_the_trials(tmp_path):
    # 2 pre-training budgets x frozen or fine-tuned: 4 trials, 2 pre-trainings; a 4-level autoencoder
    # for a 3-level segmenter, budgets in steps
    base = tiny_tree(model={"name": "monai_unet", "channels": [4, 8, 16], "num_res_units": 1},
                     train={"steps": 2, "batch_size": 8, "patience": 0},
                     pretrain={"model": {"channels": [4, 8, 16, 32]}})
    study = {"name": "pre", "base": base, "method": "grid",
             "space": {"pretrain.steps": [1, 2], "model.freeze_encoder": [False, True]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    trials = run_study(tmp_path / "study.yaml", study_dir=tmp_path / "out").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    cache = sorted(p.name.split("-")[0] for p in (tmp_path / "out" / "pretrain").iterdir())
    assert cache == ["steps1", "steps2"]
    for t in trials:
        pre = json.loads((tmp_path / "out" / "pretrain" / t.user_attrs["pretrain_run"].split("/")[-1]
                          / "summary.json").read_text())
        assert pre["steps_run"] == t.params["pretrain.steps"]
        assert (t.user_attrs["pretrain_mse"], t.user_attrs["pretrain_mae"]) == (pre["val"]["mse"], pre["val"]["mae"])
        assert t.user_attrs["config"]["model"]["encoder_weights"] == pre["encoder"]
        # the pruners' rungs are steps: the one validation of each trial is reported at step 2
        assert list(t.intermediate_values) == [2]
