"""Prediction figures from checkpoints: validation image, ground truth and each run's prediction.

Every run is drawn on the same validation images (evenly spaced, with some foreground where
there are enough, or the ones asked for), so the columns of a panel compare like with like.
:func:`grid_blocks` lays runs out by (row, column), the image and its ground truth once per row;
:func:`prediction_blocks` puts runs side by side; :func:`worst_case_blocks` shows the images one
run segments worst.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from segtune.errors import ConfigError, DataError
from segtune.report.data import data_key, read_run, run_data
from segtune.report.document import Block, Text, figure_block
from segtune.report.figures import PanelRow, prediction_grid


def _fixed_indices(masks: np.ndarray, n_images: int) -> list[int]:
    """Evenly spaced validation images, among those with some foreground when there are enough."""
    candidates = [i for i in range(len(masks)) if masks[i].any()]
    if len(candidates) < n_images:
        candidates = list(range(len(masks)))
    picks = np.linspace(0, len(candidates) - 1, min(n_images, len(candidates))).round().astype(int)
    return [candidates[k] for k in sorted(set(picks.tolist()))]


def _title(key: Any) -> str:
    """A run's name in a sentence: a column title, or a (row, column) cell's both."""
    return " ".join(k for k in key if k) if isinstance(key, tuple) else str(key)


def _checkpoints_by_data(run_dirs: Mapping[Any, Path]) -> tuple[list[dict[Any, tuple[dict, dict]]], list[Block]]:
    """The readable ``best.pt`` of each run, grouped by data setting as ``{title: (config, checkpoint)}``;
    a damaged one leaves its run out, with a warning and a line in the report, and spoils nothing else."""
    from segtune.training.checkpoint import load_checkpoint

    groups: dict[str, dict[Any, tuple[dict, dict]]] = {}
    notes: list[Block] = []
    for title, run_dir in run_dirs.items():
        if not ((run_dir / "best.pt").is_file() and (run_dir / "config.yaml").is_file()):
            continue
        try:
            checkpoint = load_checkpoint(run_dir / "best.pt")
        except DataError as err:
            print(f"warning: {err}", file=sys.stderr)
            notes.append(Text(f"No predictions of {_title(title)}: {err}."))
            continue
        config = read_run(run_dir)["config"]
        groups.setdefault(data_key(config), {})[title] = (config, checkpoint)
    return list(groups.values()), notes


def _indices(masks: np.ndarray, n_images: int, images: Sequence[int] | None) -> list[int]:
    if images is None:
        return _fixed_indices(masks, n_images)
    bad = [i for i in images if not 0 <= i < len(masks)]
    if bad:
        raise ConfigError(f"report --images: image {bad[0]} does not exist; the validation split holds "
                          f"{len(masks)} images, numbered 0 to {len(masks) - 1}")
    return list(images)


def _predict(checkpoint: dict, images: Any) -> np.ndarray:
    from segtune.training.checkpoint import model_from_checkpoint
    from segtune.training.evaluate import predict_labels

    patch = checkpoint["meta"].get("patch_size")  # a patch-trained run predicts by sliding windows, as `predict`
    return predict_labels(model_from_checkpoint(checkpoint), images,
                          patch_size=tuple(patch) if patch else None).numpy()


def _group_data(group: dict[Any, tuple[dict, dict]]) -> Any:
    return run_data(next(iter(group.values()))[0])


def grid_blocks(cells: Mapping[tuple[str, str], Path], *, n_images: int = 4, images: Sequence[int] | None = None,
                name: str = "predictions", what: str = "") -> list[Block]:
    """Panels of predictions laid out by (row, column): per row and image, the image and its
    ground truth once, then the prediction of each column's run (its ``best.pt``).

    Runs on the same data share one panel; runs on different data get one panel per data setting.

    Args:
        cells: (row label, column title) -> run directory holding ``config.yaml`` and ``best.pt``;
            a row label "" leaves the rows unnamed (one row per image).
        n_images: validation images per row, the same fixed ones for every run.
        images: the validation images to show (indices) instead of ``n_images`` chosen ones.
        name: the figure name (file stem).
        what: what the columns are, for the caption (default: their titles).

    Returns:
        A line per damaged checkpoint, then one figure per data setting; [] where no run has a ``best.pt``.

    Raises:
        ConfigError: an image index outside the validation split.
    """
    groups, blocks = _checkpoints_by_data(cells)
    for g, group in enumerate(groups):
        data = _group_data(group)
        masks = data.val.masks.numpy()
        index = _indices(masks, n_images, images)
        shown = data.val.images[index]
        predicted = {cell: _predict(ckpt, shown) for cell, (_, ckpt) in group.items()}
        row_labels = list(dict.fromkeys(r for r, _ in group))
        columns = list(dict.fromkeys(c for _, c in group))
        rows = [PanelRow(f"{r}\nimage {i}".strip(), shown[k].numpy(), masks[i],
                         {c: p[k] for (rr, c), p in predicted.items() if rr == r})
                for r in row_labels for k, i in enumerate(index)]
        fig = prediction_grid(rows, columns, class_names=data.class_names)
        blocks.append(figure_block(fig, f"{name}{g or ''}", f"Validation images {index}: image, ground truth and "
                                                            f"the prediction of {what or ', '.join(columns)} (best.pt)."))
    return blocks


def prediction_blocks(run_dirs: dict[str, Path], *, n_images: int = 4, images: Sequence[int] | None = None,
                      name: str = "predictions") -> list[Block]:
    """Panels of validation image / ground truth / prediction of each run (its ``best.pt``): one
    column per run (:func:`grid_blocks` with unnamed rows).

    Args:
        run_dirs: column title -> run directory holding ``config.yaml`` and ``best.pt``.
        n_images: validation images per panel, the same fixed ones for every run.
        images: the validation images to show instead (indices).
        name: the figure name (file stem).
    """
    return grid_blocks({("", title): d for title, d in run_dirs.items()}, n_images=n_images, images=images, name=name)


def image_dice(truth: np.ndarray, prediction: np.ndarray, n_classes: int) -> float:
    """The mean Dice over the foreground classes present in ``truth`` or ``prediction`` of one image;
    1.0 where neither holds any foreground (nothing to miss).

    Example:
        >>> image_dice(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]), 2)
        0.8
    """
    scores = []
    for c in range(1, n_classes):
        t, p = truth == c, prediction == c
        if t.any() or p.any():
            scores.append(2 * float((t & p).sum()) / float(t.sum() + p.sum()))
    return float(np.mean(scores)) if scores else 1.0


def worst_case_blocks(title: str, run_dir: Path, *, n_images: int = 4) -> list[Block]:
    """The validation images ``run_dir``'s ``best.pt`` segments worst (lowest per-image Dice), with their Dice.

    Returns:
        One figure named ``worst``; [] where the run has no readable ``best.pt``.
    """
    groups, blocks = _checkpoints_by_data({title: run_dir})
    for group in groups:
        data = _group_data(group)
        (_, checkpoint), = group.values()
        masks = data.val.masks.numpy()
        predicted = _predict(checkpoint, data.val.images)
        dice = [image_dice(masks[i], predicted[i], len(data.class_names)) for i in range(len(masks))]
        worst = sorted(range(len(masks)), key=lambda i: dice[i])[:n_images]
        rows = [PanelRow(f"image {i}", data.val.images[i].numpy(), masks[i], {"prediction": predicted[i]},
                         {"prediction": f"Dice {dice[i]:.3f}"}) for i in worst]
        fig = prediction_grid(rows, ["prediction"], class_names=data.class_names)
        blocks.append(figure_block(fig, "worst", f"The {len(worst)} validation images {title} segments worst "
                                                 f"(lowest mean foreground Dice per image, of {len(masks)}), "
                                                 f"with the Dice of each."))
    return blocks


__all__ = ["grid_blocks", "image_dice", "prediction_blocks", "worst_case_blocks"]
