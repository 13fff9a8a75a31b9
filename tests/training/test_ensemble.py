"""The ensemble of a cross-validated trial's fold models on the test split they all hold out."""

from __future__ import annotations

import pytest
import torch

from segtune.cli import main
from segtune.config import Config
from segtune.errors import DataError
from segtune.training.ensemble import evaluate_ensemble
from segtune.training.evaluate import predict_probabilities
from segtune.training.loop import train

DATA = {"source": "synthetic", "n_train": 12, "n_val": 4, "n_test": 4, "size": 16, "folds": 2}


def fold_run(tmp_path, fold, **data):
    config = Config.model_validate({"name": "cv", "plan": "off", "data": {**DATA, "fold": fold, **data},
                                    "model": {"name": "unet", "depth": 2, "base": 4},
                                    "train": {"epochs": 2, "batch_size": 8, "num_threads": 1}})
    return train(config, out_dir=tmp_path / f"fold{fold}-{len(data)}", verbose=False).run_dir


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    return [fold_run(root, k) for k in range(2)]


def test_the_ensemble_of_a_run_with_itself_is_the_run(folds):
    result = evaluate_ensemble([folds[0], folds[0]])
    alone = result["runs"][str(folds[0])]
    assert result["ensemble"]["dice_per_class"] == alone["dice_per_class"]
    assert result["ensemble"]["per_case"] == alone["per_case"]
    assert result["grid"] == "as read"  # the grid the models see, not each case's own


def test_the_ensemble_scores_every_test_case_next_to_each_fold(folds, capsys):
    result = evaluate_ensemble(folds)
    cases = set(result["ensemble"]["per_case"])
    assert len(cases) == 4 and all(set(m["per_case"]) == cases for m in result["runs"].values())
    assert "hd95_mean" in result["ensemble"] and set(result["mean_of_runs"]) >= {"dice_mean", "case_dice_mean"}
    assert main(["evaluate", *map(str, folds)]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2 (mean softmax)" in out and "mean of the runs" in out


def test_probabilities_sum_to_one_for_every_pixel(folds):
    from segtune.training.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(folds[0] / "best.pt"))
    probs = predict_probabilities(model, torch.randn(3, 1, 16, 16))
    assert probs.shape == (3, 3, 16, 16) and torch.allclose(probs.sum(1), torch.ones(3, 16, 16), atol=1e-5)


def test_runs_on_other_test_cases_are_no_ensemble(folds, tmp_path):
    other = fold_run(tmp_path, 0, data_seed=5)
    with pytest.raises(DataError, match="holds other images than"):
        evaluate_ensemble([folds[0], other])
    with pytest.raises(DataError, match="needs two or more run directories"):
        evaluate_ensemble([folds[0]])
