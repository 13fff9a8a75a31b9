"""``segtune train`` with ``optimizer.lr: auto``: the LR range test's lr, the one a study's auto finds."""

import pytest
import yaml

from segtune.cli import main
from segtune.config import build_config
from segtune.training.lr_find import lr_range_test

from tests.conftest import tiny_tree


@pytest.mark.slow  # two range tests of 100 steps
def test_train_takes_the_range_tests_lr(tmp_path, capsys):
    # one thread: the tiny task's range test reads another lr off its curve with two (rounding)
    train = {"epochs": 1, "batch_size": 8, "patience": 0, "num_threads": 1}
    tree = tiny_tree(optimizer={"name": "adam", "lr": "auto"}, train=train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["train", str(path), "--quiet", "--out", str(tmp_path / "run")]) == 0
    # the range test of the config with the optimizer's default lr standing in for auto
    expected = lr_range_test(build_config(tiny_tree(optimizer={"name": "adam"}, train=tree["train"]))).suggestion
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == expected
    assert f"optimizer.lr: auto -> {expected:.3g} (LR range test of adam, rule steepest)" in capsys.readouterr().out


def test_auto_from_the_command_line_overrides_the_files_lr(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(train={"steps": 2, "batch_size": 8, "patience": 0,
                                                                      "num_threads": 1})))
    assert main(["train", str(path), "--quiet", "--set", "optimizer.lr=auto", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "optimizer.lr: auto -> " in out and "best step 2 of 2" in out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optimizer"]["lr"] != 0.01
