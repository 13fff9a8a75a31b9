"""Surface metrics of one case, in millimetres, with MONAI's implementations.

Per foreground class of a case (a volume ``(n, H, W)`` of ``n`` slices, or one 2D image):

- ``hd95``: the 95th percentile Hausdorff distance (as ``monai.metrics.compute_hausdorff_distance``,
  symmetric), in mm;
- ``nsd``: the normalised surface Dice at a tolerance in mm (as ``compute_surface_dice``): the share of
  both surfaces within the tolerance of the other, 0 to 1;
- ``asd``: the average symmetric surface distance (as ``compute_average_surface_distance``), in mm;

all three from one call of MONAI's ``get_edge_surface_distance`` per class (its edges and distance
transform, the costly part, which the three MONAI functions would each compute again);
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


def _surface_distances(pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI's distances (mm) from each edge voxel of ``pred`` to the edge of ``target``, and back."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():  # a deprecated default inside MONAI's own call of get_mask_edges
        warnings.simplefilter("ignore", FutureWarning)
        _, (to_target, to_pred), _ = get_edge_surface_distance(pred.float(), target.float(), spacing=list(spacing),
                                                                symmetric=True, warn_empty=False)
    return to_target, to_pred


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
    image = pred.shape[0] == 1
    planes = tuple(spacing[1:]) if image else tuple(spacing)
    if image:
        pred, target = pred[0], target[0]
    worst = math.sqrt(sum((s * d) ** 2 for s, d in zip(planes, pred.shape)))
    out: dict[str, dict[str, float | None]] = {m: {} for m in ("hd95", "nsd", "asd", "vd", "avd")}
    for c, name in enumerate(class_names[1:], start=1):
        n_pred, n_true = int((pred == c).sum()), int((target == c).sum())
        if n_pred == 0 and n_true == 0:
            for metric in out:
                out[metric][name] = None
            continue
        if n_pred and n_true:
            # one edge extraction and distance transform per class serves all three metrics, each
            # computed as MONAI's compute_hausdorff_distance / _average_surface_distance / _surface_dice do
            to_target, to_pred = _surface_distances(pred == c, target == c, planes)
            q = settings.percentile / 100
            hd = max(float(torch.quantile(d.double(), q)) if d.numel() else 0.0 for d in (to_target, to_pred))
            both = torch.cat([to_target, to_pred]).double()
            out["hd95"][name] = _finite(hd, worst)
            out["asd"][name] = _finite(float(both.mean()), worst) if both.numel() else 0.0
            out["nsd"][name] = float((both <= settings.tolerance_mm).double().mean()) if both.numel() else 1.0
        else:
            out["hd95"][name], out["asd"][name], out["nsd"][name] = worst, worst, 0.0
        vd = None if n_true == 0 else 100.0 * (n_pred - n_true) / n_true  # voxels of one size: their ratio
        out["vd"][name], out["avd"][name] = vd, None if vd is None else abs(vd)
    return out
