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


def test_panels_of_a_patch_trained_run_predict_by_sliding_windows():
    # a run trained on 16x16 crops is shown as `predict` shows it: whole 40x40 images by sliding windows
    import torch

    from segtune.components.models import build_model
    from segtune.report.predictions import _predict
    from segtune.training.evaluate import predict_labels

    torch.manual_seed(0)
    model = build_model("unet", {"depth": 2, "base": 4}, 1, 3)
    with torch.no_grad():  # weights large enough that the labels vary and depend on what a window sees
        for p in model.parameters():
            p.normal_(0, 1)
    meta = {"model": "unet", "model_options": {"depth": 2, "base": 4}, "in_channels": 1, "out_channels": 3,
            "patch_size": [16, 16]}
    images = torch.randn(2, 1, 40, 40)
    shown = _predict({"model": model.state_dict(), "meta": meta}, images)
    windows = predict_labels(model, images, patch_size=(16, 16)).numpy()
    whole = predict_labels(model, images).numpy()
    assert (shown == windows).all() and not (shown == whole).all()
