"""A study whose trials start from pre-trained encoders: their reconstruction errors side by side."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from segtune.report import write_report
from tests.report.conftest import SPACE


def _pretraining_run(folder, mse: float) -> None:
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"encoder": str(folder / "encoder.pt"), "model": "unet",
                                                     "best_epoch": 2, "epochs_run": 3,
                                                     "val": {"mse": mse, "mae": mse / 2}}))
    Figure(figsize=(2, 1)).savefig(folder / "reconstructions.png")


@pytest.mark.slow
def test_the_report_tables_each_encoders_reconstruction_error_and_names_varied_base_values(tmp_path, make_study):
    study = make_study(tmp_path, n_trials=2)
    # the study also varied the loss: the header must not name the base loss as if it were fixed
    spec = study.user_attrs["spec"]
    study.set_user_attr("spec", {**spec, "space": {**SPACE, "loss.name": ["dice_ce", "focal"]}})
    for number, mse in ((0, 0.02), (1, 0.05)):
        for seed in range(3):
            _pretraining_run(tmp_path / "trials" / f"{number:04d}-seed{seed}" / "pretrain", mse)
    md = (write_report(tmp_path).parent / "report.md").read_text()
    assert "**Loss:** varied (base dice_ce)." in md and "**Model:** unet." in md
    assert "## Pre-training" in md
    # one row per pre-training run: its errors and the objective of the trial fine-tuned from it
    assert "| 0000-seed0/pretrain | none | 3 | 2 | 0.0200 | 0.0100 | 0 | 0.8100 ± 0.0248 |" in md
    assert "| 0001-seed0/pretrain | cosine | 3 | 2 | 0.0500 | 0.0250 | 1 |" in md
    assert "](figures/reconstructions.png)" in md
