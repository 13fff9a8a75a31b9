"""End to end through the command line: train, evaluate, predict; errors without tracebacks."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from segtune.cli import main

from tests.conftest import tiny_tree


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_tree()))
    return path


def test_train_evaluate_predict(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--set", "train.epochs=2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "mean (foreground)" in out
    summary = json.loads((run / "summary.json").read_text())

    assert main(["evaluate", str(run), "--split", "test"]) == 0
    table = capsys.readouterr().out
    mean_line = next(line for line in table.splitlines() if line.startswith("mean (foreground)"))
    assert float(mean_line.split()[2]) == pytest.approx(summary["test"]["dice_mean"], abs=1e-4)

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((20, 28)) * 255).astype(np.uint8)).save(images / f"im{i}.png")
    assert main(["predict", str(run), str(images), "--out", str(tmp_path / "masks")]) == 0
    masks = sorted((tmp_path / "masks").iterdir())
    assert [m.name for m in masks] == ["im0.png", "im1.png"]
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (20, 28) and mask.max() <= 2  # odd size handled, labels within the 3 classes


def test_user_errors_exit_2_without_traceback(config_file, capsys):
    assert main(["train", str(config_file), "--set", "loss.name=dcie"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "did you mean 'dice'" in err
    assert main(["evaluate", "/no/such/run"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_file_that_is_not_utf8_is_an_error_naming_its_line(tmp_path, capsys, command):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: tiny\n# réglages\n".encode("latin-1"))
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not UTF-8 text (byte 0xe9 on line 2); save the file as UTF-8")
    assert "Traceback" not in err


def test_a_set_value_that_is_not_yaml_is_an_error_with_the_fix(config_file, capsys):
    assert main(["train", str(config_file), "--set", "optimizer.lr=[1,"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set 'optimizer.lr=[1,': the value '[1,' is not valid YAML")
    assert "write a list as [1, 2]" in err and "optimizer.lr='[1,'" in err


def test_images_smaller_than_the_networks_multiple_train_and_predict(tmp_path):
    # 8x8 images through 3 down-samplings would reach a 1x1 map, where instance norm fails
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(
        data={"source": "synthetic", "n_train": 8, "n_val": 4, "n_test": 4, "size": 8, "n_classes": 3},
        model={"name": "monai_unet", "channels": [4, 8, 8, 8], "num_res_units": 1, "norm": "instance"},
        train={"epochs": 1, "batch_size": 4, "patience": 0})))
    run = tmp_path / "run"
    assert main(["train", str(path), "--quiet", "--out", str(run)]) == 0
    Image.fromarray(np.full((5, 7), 128, dtype=np.uint8)).save(tmp_path / "tiny.png")
    assert main(["predict", str(run), str(tmp_path / "tiny.png"), "--out", str(tmp_path / "masks")]) == 0
    assert np.asarray(Image.open(tmp_path / "masks" / "tiny.png")).shape == (5, 7)


@pytest.mark.slow
def test_module_entry_point_and_version():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "segtune", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("segtune ")


def test_predict_uses_the_training_sets_normalisation(tmp_path):
    # zscore_dataset: the training split's mean and std travel in the checkpoint to `predict`
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(data={"source": "synthetic", "n_train": 16, "n_val": 8, "n_test": 8,
                                                   "size": 32, "normalize": "zscore_dataset"})))
    run = tmp_path / "run"
    assert main(["train", str(path), "--quiet", "--out", str(run)]) == 0
    from segtune.training.checkpoint import load_checkpoint

    stats = load_checkpoint(run / "best.pt")["meta"]["normalize_stats"]
    assert len(stats["mean"]) == 1 and stats["std"][0] > 0
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert main(["predict", str(run), str(tmp_path / "grey.png"), "--out", str(tmp_path / "masks")]) == 0
    assert (tmp_path / "masks" / "grey.png").exists()


@pytest.mark.slow
def test_demo_runs_a_study_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    # the real demo study, shrunk: 2 mm slices, 1 epoch per trial, a narrower network
    assert main(["demo", "--quiet", "--out", str(out), "--set", "data.spacing=2", "train.epochs=1",
                 "model.channels=[8,16,32,64]"]) == 0
    printed = capsys.readouterr().out
    assert "best trial" in printed and "mean (foreground)" in printed and "white_matter" in printed
    html = out / "report" / "report.html"
    assert f"report: {html}" in printed and html.stat().st_size > 10_000
    assert (out / "report" / "trials.csv").read_text().count("\n") == 5  # header + the 4 trials of the grid


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_evaluate_and_predict_on_a_damaged_checkpoint_say_so_safely(config_file, tmp_path, capsys, keep):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--set", "train.epochs=1", "--out", str(run), "--quiet"]) == 0
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[:int(len(data) * keep)])  # empty, half, all but the end
    capsys.readouterr()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "im.png")
    for argv in (["evaluate", str(run)], ["predict", str(run), str(tmp_path / "im.png"), "--out", str(tmp_path / "m")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run / 'best.pt'}: not a readable checkpoint: the file is damaged (truncated?)")
        assert err.count("\n") == 1 and "weights_only" not in err and "re-run the training that wrote it" in err


def test_train_from_a_dataset_folder_alone(tmp_path, capsys):
    # `segtune train --data DIR`: the folder's layout names the source; the other settings are planned from it
    from tests.data.writers import write_folder

    folder = write_folder(tmp_path / "cells", n=8, size=16)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--set", "train.epochs=1", "--out", str(run), "--quiet"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["source"] == "folder" and config["data"]["path"] == str(folder)
    assert config["train"]["patch_size"] == [16, 16] and config["model"]["norm"] == "instance"
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize("args, message", [
    ([], "needs a config file or --data DIR"),
    (["tiny.yaml", "--data", "cells"], "needs a config file or --data DIR"),
    (["--data", "no/such/folder"], "--data no/such/folder: no such dataset folder"),
])
def test_train_needs_exactly_one_of_a_config_and_a_dataset_folder(args, message, capsys):
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err
