"""One run's report."""

from __future__ import annotations

from segtune.report import write_report


def test_a_single_run_gets_curves_and_predictions(run_dir, tmp_path):
    html = write_report(run_dir, out=tmp_path / "r")
    md = (html.parent / "report.md").read_text()
    assert "| mean (foreground) |" in md
    assert {p.stem for p in (html.parent / "figures").glob("*.png")} == {"loss", "dice", "lr", "predictions"}
