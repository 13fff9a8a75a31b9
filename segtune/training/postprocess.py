"""Post-processing chosen on validation: keep the largest connected component of a class.

As nnU-Net does (Isensee et al. 2021), each foreground class is tested on its own: its
largest connected component is kept (the rest becomes background) where that raises the
class's Dice, averaged over the validation cases, and left as predicted otherwise. Components
are connected through faces, edges and corners (8-neighbours in 2D, 26 in 3D, scikit-image's
default that nnU-Net uses). A volume is one unit (its slices stacked back, in 3D); a 2D image is
its own unit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segtune.errors import DataError
from segtune.training.metrics import dice_per_class

__all__ = ["POSTPROCESSING_FILE", "apply_postprocessing", "case_units", "choose_postprocessing",
           "keep_largest_component", "mean_case_dice", "postprocess_split", "read_postprocessing",
           "write_postprocessing"]

POSTPROCESSING_FILE = "postprocessing.json"


def keep_largest_component(labels: np.ndarray, label: int) -> np.ndarray:
    """A copy of ``labels`` where only the largest connected component of ``label`` is kept.

    Args:
        labels: integer labels of one image ``(H, W)`` or one volume ``(X, Y, Z)``.
        label: the class to clean; its other components become background (0).

    Returns:
        The cleaned labels, same shape and dtype.

    Example:
        >>> keep_largest_component(np.array([1, 1, 0, 1, 2]), 1).tolist()
        [1, 1, 0, 0, 2]
    """
    labels = np.array(labels, copy=True)
    mask = labels == label
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, n = ndimage.label(mask, structure=structure)
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        labels[mask & (components != 1 + int(sizes.argmax()))] = 0
    return labels


def apply_postprocessing(labels: np.ndarray, choice: dict[str, bool], class_names: Sequence[str]) -> np.ndarray:
    """``labels`` of one image or volume with the largest component kept for each chosen class.

    Args:
        labels: integer labels ``(H, W)`` or ``(X, Y, Z)``.
        choice: ``{class_name: keep_largest}``, as :func:`choose_postprocessing` returns.
        class_names: the names of labels ``0..K-1``.

    Raises:
        DataError: ``choice`` names a class the model does not have.
    """
    unknown = sorted(set(choice) - set(class_names))
    if unknown:
        raise DataError(f"post-processing names class(es) {unknown} that are not among {list(class_names)}; "
                        f"choose it again with `segtune evaluate RUN --postprocess`")
    for name, keep in choice.items():
        if keep:
            labels = keep_largest_component(labels, list(class_names).index(name))
    return labels


def case_units(labels: torch.Tensor, cases: list[list[Any]] | None) -> list[np.ndarray]:
    """Slices ``(N, H, W)`` as the units post-processing works on: one ``(n, H, W)`` volume per
    ``[case_id, n_slices]`` of ``cases``, or each image ``(H, W)`` on its own when ``cases`` is None."""
    array = labels.numpy()
    if cases is None:
        return list(array)
    starts = np.cumsum([0] + [n for _, n in cases])
    return [array[a:b] for a, b in zip(starts[:-1], starts[1:])]


def postprocess_split(labels: torch.Tensor, cases: list[list[Any]] | None, choice: dict[str, bool],
                      class_names: Sequence[str]) -> torch.Tensor:
    """:func:`apply_postprocessing` on every case (or image) of slices ``(N, H, W)``; same shape back."""
    units = [apply_postprocessing(u, choice, class_names) for u in case_units(labels, cases)]
    stacked = np.concatenate(units) if cases is not None else np.stack(units)
    return torch.from_numpy(stacked)


def mean_case_dice(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-class Dice ``(n_classes,)`` averaged over cases (1.0 for a class absent from both)."""
    return np.mean([dice_per_class(torch.from_numpy(np.asarray(p)), torch.from_numpy(np.asarray(t)),
                                   n_classes).numpy() for p, t in zip(preds, targets)], axis=0)


def choose_postprocessing(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                          class_names: Sequence[str]) -> dict[str, bool]:
    """For each foreground class, whether keeping its largest component raises its mean Dice.

    Args:
        preds: predicted labels per validation case: volumes ``(X, Y, Z)`` or images ``(H, W)``.
        targets: the true labels, in the same order and shapes.
        class_names: the names of labels ``0..K-1``; class 0 (background) is never cleaned.

    Returns:
        ``{class_name: keep_largest}`` for the foreground classes: True only where the Dice of
        that class, averaged over the cases, is strictly higher with its largest component kept.

    Raises:
        DataError: no cases, or predictions and targets that do not pair up.
    """
    if not preds or len(preds) != len(targets):
        raise DataError(f"choosing post-processing needs predictions for the validation cases "
                        f"({len(preds)} predictions, {len(targets)} targets)")
    n = len(class_names)
    before = mean_case_dice(preds, targets, n)
    choice = {}
    for label, name in enumerate(class_names[1:], start=1):
        cleaned = [keep_largest_component(p, label) for p in preds]
        choice[name] = bool(mean_case_dice(cleaned, targets, n)[label] > before[label])
    return choice


def write_postprocessing(folder: Path, choice: dict[str, bool], *, checkpoint: str, class_names: Sequence[str],
                         val_dice: dict[str, dict[str, float]]) -> Path:
    """Save ``choice`` (and the validation Dice it was chosen on) to ``folder/postprocessing.json``.

    Args:
        folder: the run directory.
        choice: ``{class_name: keep_largest}``.
        checkpoint: the checkpoint it was chosen for (``best`` or ``last``).
        class_names: the names of labels ``0..K-1``, so the file can be applied on its own.
        val_dice: ``{"without": {class: dice}, "with": {class: dice}}``, means over the val cases.
    """
    path = Path(folder) / POSTPROCESSING_FILE
    tree = {"keep_largest_component": choice, "class_names": list(class_names), "chosen_on": "val",
            "checkpoint": checkpoint, "val_case_mean_dice": val_dice}
    path.write_text(json.dumps(tree, indent=2) + "\n")
    return path


def read_postprocessing(folder: Path) -> dict[str, Any] | None:
    """The saved ``postprocessing.json`` of a run (None if there is none).

    Raises:
        DataError: the file is not valid JSON or lacks ``keep_largest_component`` or ``class_names``.
    """
    path = Path(folder) / POSTPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error}); delete it and run `segtune evaluate RUN "
                        f"--postprocess` to choose it again") from None
    if not (isinstance(tree, dict) and isinstance(tree.get("keep_largest_component"), dict)
            and isinstance(tree.get("class_names"), list)):
        raise DataError(f"{path}: no 'keep_largest_component' mapping and 'class_names' list; delete it and run "
                        f"`segtune evaluate RUN --postprocess` to choose it again")
    return tree
