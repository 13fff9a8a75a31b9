"""`segtune report` and write_report: a study directory, a storage, a run, or neither."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from segtune.cli import main
from tests.conftest import tiny_tree


@pytest.mark.slow  # a whole report, every figure drawn
def test_cli_report_of_a_study_too_small_for_importances(tmp_path, make_study, capsys):
    make_study(tmp_path, n_trials=1)
    assert main(["report", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report' / 'report.html'}" in capsys.readouterr().out
    # a sentence instead of importances
    assert "Importances need at least 3 completed trials" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--layout", "optimizer.lr"], r"optimizer.lr is not varied\); the varied hyperparameters are optimizer.name, "
                                   "scheduler.name"),
    (["--study", "nope"], "no study 'nope' in the storage; it holds: known"),
])
def test_cli_report_errors_name_the_fix(study_report, tmp_path, capsys, args, message):
    assert main(["report", str(study_report.parent), "--out", str(tmp_path), *args]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_cli_report_from_a_storage_url_and_a_study_name(study_report, tmp_path):
    # the form for a study on a server: --storage URL --study NAME (here the same SQLite file)
    url = f"sqlite:///{study_report.parent / 'study.db'}"
    assert main(["report", "--storage", url, "--study", "known", "--out", str(tmp_path / "r")]) == 0
    assert "**Best: trial 0**" in (tmp_path / "r" / "report.md").read_text()


def test_cli_report_of_a_folder_that_is_neither_study_nor_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no study.db here" in capsys.readouterr().err


@pytest.mark.slow
def test_segtune_study_writes_its_report_at_the_end(tmp_path, capsys):
    study = {"name": "one", "base": tiny_tree(train={"epochs": 1, "batch_size": 8, "patience": 0}),
             "method": "grid", "space": {"optimizer.lr": [0.01]}}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert f"report: {tmp_path / 'out' / 'report' / 'report.html'}" in capsys.readouterr().out
    assert "**Best: trial 0**" in (tmp_path / "out" / "report" / "report.md").read_text()


@pytest.mark.slow
def test_writing_a_report_leaves_the_callers_matplotlib_backend_as_it_was(run_dir, tmp_path):
    # a caller on another backend (svg here, as MPLBACKEND sets it) keeps it, and pyplot is never imported
    code = ("import sys, matplotlib; from segtune.report import write_report; write_report(sys.argv[1], out=sys.argv[2]); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir), str(tmp_path / "r")], capture_output=True,
                          text=True, env={**os.environ, "MPLBACKEND": "svg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["svg", "False"]
    assert {p.stem for p in (tmp_path / "r" / "figures").glob("*.png")} == {"loss", "dice", "lr", "predictions"}
