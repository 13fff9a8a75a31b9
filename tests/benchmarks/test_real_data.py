"""The real-data benchmark script's pieces that run without data: padding, commands, summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.real_data import PadToMultiple, read_summary, segtune_command


def _summary(folder: Path, val: float, test: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"val": {"dice_mean": val}, "test": {"dice_mean": test}}))


def test_padding_to_a_multiple_of_16_gives_logits_of_the_input_size():
    seen = []
    net = PadToMultiple(torch.nn.Conv2d(1, 2, 1))
    net.net.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    assert net(torch.zeros(1, 1, 100, 72)).shape == (1, 2, 100, 72)
    assert seen == [(112, 80)]


def test_commands_of_the_segtune_methods(tmp_path):
    default = segtune_command("default", tmp_path / "d", tmp_path / "out", epochs=7, budget="10m", seed=1)
    assert default[-9:] == ["train", "--data", str(tmp_path / "d"), "--set", "train.epochs=7", "seed=1", "--out",
                            str(tmp_path / "out"), "--quiet"]
    tune = segtune_command("tune", tmp_path / "d", tmp_path / "out", epochs=7, budget="10m", seed=1)
    assert tune[-8:] == ["tune", str(tmp_path / "d"), "--budget", "10m", "--out", str(tmp_path / "out"), "--seed",
                         "1"]
    on_fold = segtune_command("default", tmp_path / "d", tmp_path / "out", epochs=7, budget="10m", seed=1,
                              overrides=["data.fold=1"])
    assert on_fold[-7:-2] == ["--set", "train.epochs=7", "seed=1", "data.fold=1", "--out"]
    tune_fold = segtune_command("tune", tmp_path / "d", tmp_path / "out", epochs=7, budget="10m", seed=1,
                                overrides=["data.fold=1"])
    assert tune_fold[-8:-2] == ["--budget", "10m", "--set", "data.fold=1", "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="choose from monai, default, tune"):
        segtune_command("grid", tmp_path, tmp_path, epochs=1, budget="1m", seed=0)


def test_read_summary_prefers_the_run_then_best_then_the_highest_val_trial(tmp_path):
    _summary(tmp_path / "trials" / "t0", val=0.5, test=0.1)
    _summary(tmp_path / "trials" / "t1", val=0.7, test=0.2)  # highest val: chosen, whatever its test
    _summary(tmp_path / "trials" / "t2", val=0.6, test=0.9)
    assert read_summary(tmp_path) == ({"dice_mean": 0.2}, "trials/t1/summary.json (highest val Dice)")
    _summary(tmp_path / "best", val=0.6, test=0.3)
    assert read_summary(tmp_path) == ({"dice_mean": 0.3}, "best/summary.json")
    with pytest.raises(FileNotFoundError, match="no summary.json with test metrics"):
        read_summary(tmp_path / "trials" / "empty")


def test_the_baseline_crops_only_images_larger_than_the_planned_patch():
    from types import SimpleNamespace

    from benchmarks.real_data import _baseline_crops
    from segtune.data.base import SegData, Split

    def data(side):
        masks = torch.zeros(4, side, side, dtype=torch.long)
        masks[:, :2, :2] = 1
        split = Split(torch.randn(4, 1, side, side), masks)
        return SegData(class_names=["background", "tumour"], train=split, val=split, test=split, info={})

    config = SimpleNamespace(train=SimpleNamespace(patch_size=(16, 16)))
    assert _baseline_crops(config, data(16)) == (None, None)  # whole images, as the plain script trains
    sampler, windows = _baseline_crops(config, data(32))
    assert windows == (16, 16)
    x, y = sampler(torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 16, 16) and bool(y[1].any())  # the second half of the batch is centred on foreground


def test_each_row_is_printed_when_its_method_ends(tmp_path, monkeypatch, capsys):
    import sys

    from benchmarks import real_data

    def run_segtune(method, folder, out, **options):
        assert "lung_tumour | monai | 0.250" in capsys.readouterr().out  # the baseline's row, before this run
        return real_data.Result(folder.name, method, {"dice_mean": 0.5, "dice_per_class": {"background": 1.0,
                                                                                         "tumour": 0.5}}, 2.0)

    monkeypatch.setattr(real_data, "build_dataset", lambda name, cache: tmp_path / name)
    monkeypatch.setattr(real_data, "_has_command", lambda name: True)
    monkeypatch.setattr(real_data, "monai_baseline", lambda folder, epochs, seed, overrides: real_data.Result(
        folder.name, "monai", {"dice_mean": 0.25, "dice_per_class": {"background": 1.0, "tumour": 0.25}}, 1.0))
    monkeypatch.setattr(real_data, "run_segtune", run_segtune)
    monkeypatch.setattr(sys, "argv", ["real_data.py", "--datasets", "lung_tumour", "--methods", "monai,default",
                                      "--out", str(tmp_path / "table.md")])
    real_data.main()
    printed = capsys.readouterr().out
    assert "| lung_tumour | default | 0.500 | +0.250 | tumour 0.500 | 2 |" in printed.splitlines()[0]  # before the table
    assert "| lung_tumour | default | 0.500 | +0.250 |" in (tmp_path / "table.md").read_text()


def test_a_dataset_with_folds_runs_each_fold_asked_for_as_its_own_row(tmp_path, monkeypatch, capsys):
    import sys

    from benchmarks import real_data

    folder = tmp_path / "lung_tumour"
    folder.mkdir()
    (folder / "splits_final.json").write_text("[]")
    seen = []

    def run_segtune(method, folder, out, **options):
        seen.append((method, options["overrides"], out.parent.name))
        return real_data.Result(folder.name, method, {"dice_mean": 0.5, "dice_per_class": {"background": 1.0,
                                                                                         "tumour": 0.5}}, 2.0)

    monkeypatch.setattr(real_data, "build_dataset", lambda name, cache: tmp_path / name)
    monkeypatch.setattr(real_data, "_has_command", lambda name: True)
    monkeypatch.setattr(real_data, "run_segtune", run_segtune)
    monkeypatch.setattr(sys, "argv", ["real_data.py", "--datasets", "lung_tumour", "--methods", "default",
                                      "--folds", "0,1", "--out", str(tmp_path / "table.md")])
    real_data.main()
    assert seen == [("default", ["data.fold=0"], "fold0"), ("default", ["data.fold=1"], "fold1")]
    table = (tmp_path / "table.md").read_text()
    assert "| lung_tumour fold 0 | default | 0.500 |" in table and "| lung_tumour fold 1 | default | 0.500 |" in table
