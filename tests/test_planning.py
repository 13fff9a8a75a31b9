"""The plan applied when a config is loaded: only the keys the config does not set, `plan: off`,
sources without files, saved runs, studies, `train --data` and its resume, `inspect`."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from tests.conftest import tiny_tree
from tests.data.writers import write_folder, write_nnunet

from segtune.cli import main
from segtune.config import load_config
from segtune.errors import ConfigError
from segtune.planning import data_plan, plan_config


@pytest.fixture
def cells(tmp_path):
    return write_folder(tmp_path / "cells", n=8, size=16)


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_loaded_config_takes_the_plan_for_the_keys_it_does_not_set(tmp_path, cells):
    path = _write(tmp_path / "run.yaml", {"data": {"source": "folder", "path": str(cells)},
                                          "train": {"batch_size": 16, "epochs": 3}})
    cfg = load_config(path, ["scheduler.name=step", "scheduler.step_size=2"])
    assert cfg.train.batch_size == 16 and cfg.train.epochs == 3  # the config's own values win
    assert cfg.scheduler.name == "step" and cfg.scheduler.options["step_size"] == 2  # and --set's
    assert cfg.model.options["norm"] == "instance" and cfg.train.patience == 0  # planned
    assert cfg.train.patch_size == (16, 16) and cfg.augment.name == "flip"
    assert cfg.loss.options["include_background"] is False and cfg.loss.options["batch"] is True


def test_an_option_of_a_planned_name_is_taken_without_the_name(cells):
    # augment.name is planned (flip): its intensity option needs no augment.name beside it
    cfg = data_plan(str(cells), ["augment.intensity=1", "augment.vertical=true"]).config
    assert cfg.augment.name == "flip" and cfg.augment.options["intensity"] == 1.0
    assert cfg.augment.options["vertical"] is True
    # with a name the plan does not choose, the option is still checked against it
    with pytest.raises(ConfigError, match="augmentation 'none' has no option 'intensity'"):
        data_plan(str(cells), ["augment.name=none", "augment.intensity=1"])


def test_plan_off_keeps_every_default(tmp_path, cells):
    path = tmp_path / "run.yaml"
    path.write_text(f"plan: off\ndata: {{source: folder, path: {cells}}}\n")  # YAML reads `off` as false
    cfg = load_config(path)
    assert cfg.plan == "off" and cfg.scheduler.name == "none" and cfg.model.options["norm"] == "batch"
    assert cfg.train.batch_size == 16 and cfg.train.patch_size is None and cfg.loss.options["batch"] is False


def test_a_planned_option_is_left_out_where_the_model_has_none(cells):
    planned = data_plan(str(cells), ["model.name=unet"])
    assert "norm" not in planned.config.model.options and planned.config.model.options["batch_norm"] is True
    assert planned.report.unused == {"model.norm": "model unet has no option norm"}
    # a planned component's options are taken where the planned component has them
    assert planned.config.augment.options["vertical"] is False


def test_sources_without_files_are_not_planned(tmp_path):
    path = _write(tmp_path / "tiny.yaml", tiny_tree())
    cfg = load_config(path)
    assert cfg.scheduler.name == "none" and cfg.train.patience == 0 and cfg.train.patch_size is None
    assert plan_config(tiny_tree()).report.status == "no plan"


def test_a_saved_config_loads_equal_without_reading_the_data(tmp_path, cells):
    cfg = data_plan(str(cells)).config
    saved = _write(tmp_path / "config.yaml", cfg.to_dict())
    shutil.rmtree(cells)  # every planned key is set in a saved config: no file header is read
    assert load_config(saved).to_dict() == cfg.to_dict()  # what resuming compares


def test_a_study_base_is_planned_once_and_its_set_and_trials_win(tmp_path, cells):
    from segtune.study.space import config_for
    from segtune.study.spec import load_study

    study = _write(tmp_path / "study.yaml", {
        "base": {"data": {"source": "folder", "path": str(cells)}, "train": {"epochs": 2}},
        "set": {"train.batch_size": 4}, "method": "grid", "space": {"scheduler.name": ["poly", "cosine"]}})
    spec, _ = load_study(study)
    assert spec.base["train"]["batch_size"] == 4 and spec.base["model"]["norm"] == "instance"
    assert spec.base["scheduler"]["name"] == "poly"
    assert config_for(spec.base, {"scheduler.name": "cosine"}).scheduler.name == "cosine"


def test_a_gpu_device_plans_larger_patches(tmp_path):
    big = write_folder(tmp_path / "big", n=2, size=640)
    assert data_plan(str(big), ["train.device=cpu"]).config.train.patch_size == (256, 256)
    assert data_plan(str(big), ["train.device=cuda"]).config.train.patch_size == (512, 512)


def test_a_nifti_ct_dataset_is_planned_with_ct_normalisation_and_its_axis(tmp_path):
    root = write_nnunet(tmp_path / "liver", n_cases=3)
    tree = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**tree, "channel_names": {"0": "CT"}}))
    cfg = data_plan(str(root)).config
    assert cfg.data.normalize == "ct" and cfg.data.options["axis"] == 2 and cfg.augment.options["vertical"] is True


def test_inspect_prints_the_plan_and_what_the_config_overrides(cells, capsys):
    assert main(["inspect", "--data", str(cells), "--set", "train.batch_size=8", "model.name=unet"]) == 0
    text = capsys.readouterr().out
    assert "plan (from the data; the config's own values win)" in text
    assert "scheduler.name=poly                planned" in text
    assert "train.batch_size=2                 config: 8" in text
    assert "model.norm=instance                not used: model unet has no option norm" in text
    assert main(["inspect", "--data", str(cells), "--json", "--set", "plan=off"]) == 0
    shown = json.loads(capsys.readouterr().out)["plan"]
    assert shown["status"] == "off" and shown["applied"] == []
    assert shown["entries"]["train.patch_size"]["value"] == [16, 16]


@pytest.mark.slow
def test_train_from_a_folder_alone_is_planned_and_resumes(tmp_path, cells):
    from segtune.training.loop import train

    class Crash(Exception):
        pass

    def crash(epoch, row):
        if epoch == 1:
            raise Crash()

    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(data_plan(str(cells), ["train.epochs=2"]).config, out_dir=run, callbacks=[crash], verbose=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["plan"] == "auto" and saved["scheduler"]["name"] == "poly" and saved["train"]["batch_size"] == 2
    # the command line plans the same config again, so the run resumes
    assert main(["train", "--data", str(cells), "--set", "train.epochs=2", "--out", str(run), "--resume",
                 "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2
