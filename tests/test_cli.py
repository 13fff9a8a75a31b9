"""End to end through the command line: train, evaluate, predict; errors without tracebacks."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from segtune.cli import main

from conftest import tiny_tree


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
    from segtune.checkpoint import load_checkpoint

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
