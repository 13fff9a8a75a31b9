"""Prediction panels from checkpoints."""

from __future__ import annotations

import pytest

from segtune.cli import main


@pytest.mark.slow
def test_cli_report_of_a_study_with_a_damaged_best_pt_reports_the_rest(tmp_path, make_study, capsys):
    # trial 0's best.pt cut in half: every trial is still reported, its predictions left out with a line saying why
    make_study(tmp_path, n_trials=2)
    damaged = tmp_path / "trials" / "0000-seed0" / "best.pt"
    damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 2])
    assert main(["report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"warning: {damaged}: not a readable checkpoint: the file is damaged (truncated?)" in err
    assert f"No predictions of trial 0: {damaged}: not a readable checkpoint" in md
    assert "**Best: trial 0**" in md and "| 1 | adam | cosine |" in md  # both trials in the leaderboard
    assert "the prediction of trial 1 (best.pt)" in md  # the other trial's panel
    assert "weights_only" not in out + err + md
