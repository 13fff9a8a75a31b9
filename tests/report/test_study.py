"""A study's report on a study with known objective values: its verdicts, tables, files and page."""

from __future__ import annotations

import csv
import re

import pytest

from tests.report.browser import find_chromium, render


def test_study_report_answers_with_the_noise_and_lists_every_trial(study_report):
    md = (study_report / "report.md").read_text()
    # the best, with its interval, and no crowned winner over trial 1 (within the noise)
    assert "**Best: trial 0**" in md and "0.8100 ± 0.0248" in md
    assert "**No clear winner:** trial 1 differs from the best by less than the noise" in md
    # the ranking with ties, and the paired verdict of each of its steps
    assert "**#0 = #1 > #2**" in md
    assert "| 0 | 2 | paired t over 3 seeds | 0.1983 | 0.1912 | 0.2055 |" in md and "| better |" in md
    # a pruned trial's run is counted as pruned, not as "0 seeds"
    assert "| 1 pruned |" in md
    # the leaderboard holds the pruned trial and the failed one with its reason
    assert "| pruned |" in md and "TrainingDiverged: diverged at epoch 1" in md
    # final test metrics per class, mean over seeds
    assert ("| trial | optimizer.name | scheduler.name | test loss (own) | test Dice | test Dice disc | test Dice ring |"
            in md)
    assert "| 0 | adam | none | 0.1900 | 0.8100 | 0.8100 | 0.5000 |" in md
    # the pivot table of the two hyperparameters, and importances
    assert "| optimizer.name \\ scheduler.name | none | cosine |" in md
    # a cell whose only finished trial was pruned shows where it stopped, not a blank
    assert re.search(r"\| sgd \| 0\.6117 ± [0-9.]+ \| pruned at epoch 1: 0\.3000 \|", md)
    assert "| fANOVA |" in md or "fANOVA" in md
    for name in ("leaderboard", "grouped", "marginals", "importance", "loss", "dice", "lr", "prediction-grid",
                 "predictions", "worst"):
        assert (study_report / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert f"](figures/{name}.png)" in md


def test_study_report_html_is_self_contained(study_report):
    html = (study_report / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(list((study_report / "figures").glob("*.png")))
    assert 'src="figures/' not in html and "http://" not in html and "https://" not in html


def test_trials_csv_has_every_trial_with_its_interval(study_report):
    with open(study_report / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["state"] for r in rows] == ["complete", "complete", "complete", "pruned", "failed"]
    assert float(rows[0]["ci95_low"]) < 0.81 < float(rows[0]["ci95_high"])
    with open(study_report / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 9  # 3 completed trials x 3 seeds


def test_report_renders_in_chromium_with_no_errors(study_report):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium installed (.ci/run installs the Debian package chromium)")
    shot = study_report / "report.png"
    result = render(study_report / "report.html", shot, binary=binary)
    assert result["errors"] == []
    n_figures = len(list((study_report / "figures").glob("*.png")))
    assert n_figures == 10 and len(result["images"]) == n_figures
    assert all(done and width > 0 for done, width in result["images"])
    assert shot.stat().st_size > 10_000
