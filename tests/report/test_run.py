"""One run's report."""

from __future__ import annotations

import shutil

from segtune.report import write_report


def test_a_single_run_gets_curves_and_predictions(run_dir, tmp_path):
    html = write_report(run_dir, out=tmp_path / "r")
    md = (html.parent / "report.md").read_text()
    assert "| mean (foreground) |" in md
    assert {p.stem for p in (html.parent / "figures").glob("*.png")} == {"loss", "dice", "lr", "predictions"}


def test_an_unfinished_run_is_reported_by_its_kind(run_dir, tmp_path):
    # no summary.json yet: a segmentation run shows its loss, Dice and lr curves and its predictions;
    # a pre-training run, known by the MSE columns of its metrics, shows its MSE curve
    segmentation, pretraining = tmp_path / "train", tmp_path / "pretrain"
    for d in (segmentation, pretraining):
        d.mkdir()
        shutil.copy(run_dir / "config.yaml", d)
    shutil.copy(run_dir / "metrics.csv", segmentation)
    shutil.copy(run_dir / "best.pt", segmentation)
    (pretraining / "metrics.csv").write_text("epoch,train_mse,val_mse,val_mae,seconds\n1,0.9,0.8,0.7,0.1\n2,0.6,0.5,0.4,0.1\n")
    for d, title, figures in [(segmentation, "Run tiny", {"loss", "dice", "lr", "predictions"}),
                              (pretraining, "Pre-training tiny", {"mse"})]:
        html = write_report(d)
        assert "The run has not finished (no summary.json): curves only." in (html.parent / "report.md").read_text()
        assert f"<title>{title}</title>" in html.read_text()
        assert {p.stem for p in (html.parent / "figures").glob("*.png")} == figures
