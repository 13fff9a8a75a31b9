"""Surface metrics of one case, in millimetres, with MONAI's implementations.

Per foreground class of a case (a volume ``(n, H, W)`` of ``n`` slices, or one 2D image):

- ``hd95``: the 95th percentile Hausdorff distance (``monai.metrics.compute_hausdorff_distance``,
  symmetric), in mm;
- ``nsd``: the normalised surface Dice at a tolerance in mm (``compute_surface_dice``): the share of
  both surfaces within the tolerance of the other, 0 to 1;
- ``asd``: the average symmetric surface distance (``compute_average_surface_distance``), in mm;
- ``vd``: the volume difference ``(V_pred - V_true) / V_true`` in %, signed (``avd`` is its absolute value).

Distances use the case's spacing ``(between slices, rows, columns)`` in mm: a 2 mm grid gives
twice the distances of a 1 mm one. Where a class is in neither the prediction nor the truth the
case says nothing of it (``None``, left out of every mean). Where it is in only one of them the
distances have no finite value (MONAI gives inf or nan): segtune scores them as the diagonal of the
case's extent in mm, the largest distance the case allows, and ``nsd`` as 0, so that a missed
structure counts as the worst, not as nothing; ``vd`` is ``None`` where the truth is empty.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DISTANCE_METRICS", "MINIMISED", "DistanceSettings", "case_distances"]

DISTANCE_METRICS = ("hd95", "nsd", "asd", "avd")  # the per-class keys whose means a summary holds
MINIMISED = ("hd95", "asd", "avd")  # lower is better: an objective on their mean is minimised


@dataclass(frozen=True)
class DistanceSettings:
    """How the surface metrics of a run's final evaluation are taken.

    Attributes:
        tolerance_mm: the tolerance of the normalised surface Dice, in mm.
        percentile: the percentile of the Hausdorff distance (95: HD95).
    """

    tolerance_mm: float = 1.0
    percentile: float = 95.0


def _one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n, H, W)`` labels to MONAI's ``(1, K, n, H, W)`` one-hot, or ``(1, K, H, W)`` for one image."""
    hot = F.one_hot(labels.long(), n_classes).movedim(-1, 0)[None].float()
    return hot[:, :, 0] if labels.shape[0] == 1 else hot


def _finite(value: float, worst: float) -> float:
    return value if math.isfinite(value) else worst


def case_distances(pred: torch.Tensor, target: torch.Tensor, class_names: Sequence[str],
                   spacing: Sequence[float], settings: DistanceSettings = DistanceSettings()
                   ) -> dict[str, dict[str, float | None]]:
    """HD, NSD, ASD and volume difference of each foreground class of one case.

    Args:
        pred: predicted labels ``(n, H, W)``, the slices of the case in order (``n == 1``: an image).
        target: true labels, the same shape.
        class_names: the names of labels ``0..K-1`` (background first).
        spacing: ``(between slices, rows, columns)`` in mm.
        settings: the tolerance and percentile.

    Returns:
        ``{metric: {class_name: value or None}}`` for ``hd95``, ``nsd``, ``asd``, ``vd`` and ``avd``.

    Example:
        >>> t = torch.zeros(1, 8, 8, dtype=torch.long); t[0, 2:6, 2:6] = 1
        >>> p = torch.zeros_like(t); p[0, 2:6, 3:7] = 1
        >>> case_distances(p, t, ["bg", "fg"], (1.0, 2.0, 2.0))["hd95"]["fg"]
        2.0
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    k = len(class_names)
    planes = spacing[1:] if pred.shape[0] == 1 else spacing
    y_pred, y = _one_hot(pred, k), _one_hot(target, k)
    with warnings.catch_warnings():  # MONAI warns of the empty classes handled below
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=settings.percentile,
                                        spacing=list(planes))[0].tolist()
        asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                               spacing=list(planes))[0].tolist()
        nsd = compute_surface_dice(y_pred, y, [settings.tolerance_mm] * k, include_background=True,
                                   spacing=list(planes))[0].tolist()
    worst = math.sqrt(sum((s * d) ** 2 for s, d in zip(planes, y.shape[2:])))
    out: dict[str, dict[str, float | None]] = {m: {} for m in ("hd95", "nsd", "asd", "vd", "avd")}
    for c, name in enumerate(class_names[1:], start=1):
        n_pred, n_true = int((pred == c).sum()), int((target == c).sum())
        if n_pred == 0 and n_true == 0:
            for metric in out:
                out[metric][name] = None
            continue
        both = n_pred > 0 and n_true > 0
        out["hd95"][name] = _finite(float(hd[c]), worst) if both else worst
        out["asd"][name] = _finite(float(asd[c]), worst) if both else worst
        out["nsd"][name] = float(nsd[c]) if both else 0.0
        vd = None if n_true == 0 else 100.0 * (n_pred - n_true) / n_true  # voxels of one size: their ratio
        out["vd"][name], out["avd"][name] = vd, None if vd is None else abs(vd)
    return out
