"""The ensemble of a cross-validated trial: the mean softmax of its fold models on the held-out test split.

Each fold's model is trained on other cases, but every fold holds out the same test split, so the
models can be averaged there, as nnU-Net does: each run predicts the class probabilities of every
test image (with its own normalisation, as in training), the ensemble takes their mean and its
argmax. The result scores the ensemble next to each single fold, with the same metrics (pooled
Dice and IoU, per-case Dice and the surface metrics).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from segtune.errors import DataError
from segtune.training.evaluate import final_distances, predict_probabilities, score_labels
from segtune.training.predict import _Evaluation  # one run's checkpoint and data, as `evaluate` scores them

__all__ = ["evaluate_ensemble"]

_SHOWN = ("dice_mean", "case_dice_mean", "hd95_mean", "nsd_mean", "asd_mean", "avd_mean")


def _fold_probabilities(run: Path, split: str, checkpoint: str, overrides: Sequence[str]):
    """The probabilities of one run's checkpoint on ``split`` of its data (prepared and predicted as
    ``evaluate`` does for one run), the split and its config."""
    evaluation = _Evaluation(run, checkpoint, list(overrides))
    target = evaluation.data.split(split)
    probs = predict_probabilities(evaluation.model, target.images, **evaluation.options)
    return probs, target, evaluation.data.class_names, evaluation.config


def evaluate_ensemble(runs: Sequence[str | Path], *, split: str = "test", checkpoint: str = "best",
                      overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Score the mean softmax of several runs (the folds of a cross-validated trial) and each run alone.

    Args:
        runs: the run directories, e.g. ``trials/0003-seed0-fold*``; two or more.
        split: the split all of them share, ``test`` (``val`` differs between folds).
        checkpoint: ``best`` or ``last``.
        overrides: ``--set`` style changes to every run's config.

    Returns:
        ``{"ensemble": metrics, "runs": {run: metrics}, "class_names": [...], "mean_of_runs": {metric:
        mean}}``, each metrics dict as a summary's test entry (``per_case`` included).

    Raises:
        DataError: fewer than two runs, a run that is not one, or runs whose split holds other cases.
    """
    if len(runs) < 2:
        raise DataError(f"an ensemble needs two or more run directories, got {len(runs)}; give every fold of "
                        f"the trial, e.g. trials/0003-seed0-fold*")
    folders = [Path(r) for r in runs]
    for folder in folders:
        if not (folder / f"{checkpoint}.pt").is_file():
            raise DataError(f"{folder}: no {checkpoint}.pt; give the run directories of a finished trial")
    total, scores, first = None, {}, None
    for folder in folders:
        probs, target, names, config = _fold_probabilities(folder, split, checkpoint, overrides)
        if first is None:
            first = (target, names, config)
        elif not torch.equal(target.masks, first[0].masks):
            raise DataError(f"{folder}: its {split} split holds other images than {folders[0]}'s; an ensemble "
                            f"needs runs that share it (the folds of one trial share the test split)")
        scores[str(folder)] = score_labels(probs.argmax(1), target, names, final_distances(config))
        total = probs if total is None else total + probs
    target, names, config = first
    ensemble = score_labels((total / len(folders)).argmax(1), target, names, final_distances(config))
    mean_of_runs = {k: statistics.fmean(s[k] for s in scores.values())
                    for k in _SHOWN if all(s.get(k) is not None for s in scores.values())}
    # scored on the grid the models see (resampled with data.spacing), not each case's own grid
    return {"ensemble": ensemble, "runs": scores, "class_names": names, "mean_of_runs": mean_of_runs,
            "grid": "as read"}
