"""Prediction figures from checkpoints: validation image, ground truth and each run's prediction.

Every run is drawn on the same fixed validation images (evenly spaced, with some foreground
where there are enough), so the columns of a panel compare like with like.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segtune.errors import DataError
from segtune.report.data import read_run
from segtune.report.document import Block, Text, figure_block
from segtune.report.figures import prediction_panel


def _data_key(config: dict[str, Any]) -> str:
    return json.dumps({"data": config.get("data"), "seed": config.get("seed")}, sort_keys=True)


def _fixed_indices(masks: np.ndarray, n_images: int) -> list[int]:
    """Evenly spaced validation images, among those with some foreground when there are enough."""
    candidates = [i for i in range(len(masks)) if masks[i].any()]
    if len(candidates) < n_images:
        candidates = list(range(len(masks)))
    picks = np.linspace(0, len(candidates) - 1, min(n_images, len(candidates))).round().astype(int)
    return [candidates[k] for k in sorted(set(picks.tolist()))]


def _checkpoints_by_data(run_dirs: dict[str, Path]) -> tuple[list[dict[str, tuple[dict, dict]]], list[Block]]:
    """The readable ``best.pt`` of each run, grouped by data setting as ``{title: (config, checkpoint)}``;
    a damaged one leaves its run out, with a warning and a line in the report, and spoils nothing else."""
    from segtune.training.checkpoint import load_checkpoint

    groups: dict[str, dict[str, tuple[dict, dict]]] = {}
    notes: list[Block] = []
    for title, run_dir in run_dirs.items():
        if not ((run_dir / "best.pt").is_file() and (run_dir / "config.yaml").is_file()):
            continue
        try:
            checkpoint = load_checkpoint(run_dir / "best.pt")
        except DataError as err:
            print(f"warning: {err}", file=sys.stderr)
            notes.append(Text(f"No predictions of {title}: {err}."))
            continue
        config = read_run(run_dir)["config"]
        groups.setdefault(_data_key(config), {})[title] = (config, checkpoint)
    return list(groups.values()), notes


def prediction_blocks(run_dirs: dict[str, Path], *, n_images: int = 4, name: str = "predictions") -> list[Block]:
    """Panels of validation image / ground truth / prediction of each run (its ``best.pt``).

    Runs on the same data share one panel (one column each); runs on different data get one
    panel per data setting.

    Args:
        run_dirs: column title -> run directory holding ``config.yaml`` and ``best.pt``.
        n_images: validation images per panel, the same fixed ones for every run.
        name: the figure name (file stem).

    Returns:
        A line per damaged checkpoint, then one figure per data setting; [] where no run has
        a ``best.pt``.
    """
    from segtune.config import build_config
    from segtune.training.checkpoint import model_from_checkpoint
    from segtune.training.evaluate import predict_labels
    from segtune.training.runtime import load_data

    groups, blocks = _checkpoints_by_data(run_dirs)
    for g, group in enumerate(groups):
        data = load_data(build_config(next(iter(group.values()))[0]))
        masks = data.val.masks.numpy()
        index = _fixed_indices(masks, n_images)
        images = data.val.images[index]
        predictions = {title: predict_labels(model_from_checkpoint(ckpt), images).numpy()
                       for title, (_, ckpt) in group.items()}
        fig = prediction_panel(images.numpy(), masks[index], predictions, class_names=data.class_names)
        blocks.append(figure_block(fig, f"{name}{g or ''}", f"Validation images {index}: image, ground truth and "
                                                            f"the prediction of {', '.join(group)} (best.pt)."))
    return blocks


__all__ = ["prediction_blocks"]
