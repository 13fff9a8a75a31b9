"""``segtune pretrain`` and ``segtune lr-find``: the help shows the real defaults; pretrain writes its report."""

import contextlib
import inspect
import io
import re

import pytest
import yaml

from segtune.cli import main
from segtune.config import TrainConfig
from segtune.training.lr_find import lr_range_test, refine_lr

from tests.conftest import tiny_tree


def _help(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")  # one line per option
    with pytest.raises(SystemExit, match="^0$"):
        main([command, "--help"])
    return capsys.readouterr().out


def _line(text, option):
    """The option's line of the help, its help text joined on when argparse puts it on the next line."""
    joined = re.sub(r"\n {10,}", " ", text)
    return next(line for line in joined.splitlines() if line.lstrip().startswith(option + " "))


DEFAULTS = [("--steps", lr_range_test, "n_steps", "({})"), ("--start-lr", lr_range_test, "start_lr", "({:g})"),
            ("--end-lr", lr_range_test, "end_lr", "({:g})"), ("--smoothing", lr_range_test, "smoothing", "({:g};"),
            ("--rule", lr_range_test, "rule", "({})"), ("--low", refine_lr, "low", "({:g})"),
            ("--high", refine_lr, "high", "({:g})"), ("--n-bisect", refine_lr, "n_bisect", "({})")]


@pytest.mark.parametrize("option, function, name, shown", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_lr_find_help_shows_the_functions_defaults(monkeypatch, capsys, option, function, name, shown):
    default = inspect.signature(function).parameters[name].default
    assert shown.format(default) in _line(_help("lr-find", monkeypatch, capsys), option)


def test_lr_find_help_follows_a_changed_default(monkeypatch, capsys):
    # the help reads the signature when the parser is built: no number is copied by hand
    assert "(100)" in _line(_help("lr-find", monkeypatch, capsys), "--steps")
    monkeypatch.setitem(lr_range_test.__kwdefaults__, "n_steps", 123)
    monkeypatch.setitem(refine_lr.__kwdefaults__, "low", 3e-6)
    text = _help("lr-find", monkeypatch, capsys)
    assert "optimizer steps (123)" in _line(text, "--steps") and "lowest lr (3e-06)" in _line(text, "--low")


def test_lr_find_help_names_every_rule_and_the_configs_epochs(monkeypatch, capsys):
    text = _help("lr-find", monkeypatch, capsys)
    assert re.search(r"one of min_tenth, steepest, valley \(steepest\)", _line(text, "--rule"))
    epochs = TrainConfig.model_fields["epochs"].default
    assert f"the config's train.epochs, {epochs} unless it sets them" in _line(text, "--epochs")


@pytest.mark.slow
def test_pretrain_writes_the_report_and_says_where(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree(train={"epochs": 1, "batch_size": 8})))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["pretrain", str(tmp_path / "tiny.yaml"), "--quiet", "--out", str(tmp_path / "run")]) == 0
    html = tmp_path / "run" / "report.html"
    assert f"report: {html} (and report.md, figures/ beside it)" in printed.getvalue()
    assert "validation MSE" in (tmp_path / "run" / "report.md").read_text()


def test_lr_find_without_out_writes_to_a_new_timestamped_folder(tmp_path, monkeypatch, capsys):
    # runs/lr-find-<name>-<timestamp>, as the help says: a second test never overwrites the first
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree()))
    assert main(["lr-find", "tiny.yaml", "--steps", "10"]) == 0
    folders = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(folders) == 1 and re.fullmatch(r"lr-find-tiny-\d{8}-\d{6}", folders[0]), folders
    assert (tmp_path / "runs" / folders[0] / "lr_find.png").is_file()
