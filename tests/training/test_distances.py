"""Surface metrics of a case: MONAI's values at the case's spacing, and segtune's rules for empty classes."""

from __future__ import annotations

import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

from segtune.data import CaseSpan
from segtune.training.distances import DistanceSettings, case_distances
from segtune.training.metrics import case_means, per_case_metrics

NAMES = ["background", "a", "b"]


def volume() -> tuple[torch.Tensor, torch.Tensor]:
    """A 6x12x12 truth with a cube of class 1, and a prediction shifted and grown by a voxel."""
    target = torch.zeros(6, 12, 12, dtype=torch.long)
    target[1:4, 2:7, 2:7] = 1
    pred = torch.zeros_like(target)
    pred[1:5, 3:9, 2:7] = 1
    return pred, target


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 3).movedim(-1, 0)[None].float()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_hd95_surface_dice_and_asd_are_monai_s_at_the_spacing():
    pred, target = volume()
    spacing = (3.0, 1.0, 0.5)
    got = case_distances(pred, target, NAMES, spacing, DistanceSettings(tolerance_mm=1.5))
    hd = compute_hausdorff_distance(one_hot(pred), one_hot(target), percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(one_hot(pred), one_hot(target), [1.5, 1.5], spacing=list(spacing))
    assert got["hd95"]["a"] == pytest.approx(float(hd[0, 0]))
    assert got["nsd"]["a"] == pytest.approx(float(nsd[0, 0]))
    asd = compute_average_surface_distance(one_hot(pred), one_hot(target), symmetric=True, spacing=list(spacing))
    assert got["asd"]["a"] == pytest.approx(float(asd[0, 0]))
    assert 0.0 < got["nsd"]["a"] < 1.0 and got["hd95"]["a"] > 1.0


def test_a_2_mm_grid_doubles_the_distances_of_a_1_mm_one():
    pred, target = volume()
    one, two = (case_distances(pred, target, NAMES, (s, s, s)) for s in (1.0, 2.0))
    for metric in ("hd95", "asd"):
        assert two[metric]["a"] == pytest.approx(2 * one[metric]["a"])
    assert one["vd"]["a"] == two["vd"]["a"] == pytest.approx(100 * (120 - 75) / 75)  # volumes: 4x6x5 vs 3x5x5


def test_empty_classes_count_as_nothing_or_the_worst():
    pred, target = volume()
    got = case_distances(pred, target, NAMES, (1.0, 1.0, 1.0))
    # class b is in neither: no value; a class missed entirely scores the case's diagonal and nsd 0
    assert got["hd95"]["b"] is None and got["nsd"]["b"] is None
    missed = case_distances(torch.zeros_like(target), target, NAMES, (1.0, 1.0, 1.0))
    assert missed["hd95"]["a"] == pytest.approx((6 ** 2 + 12 ** 2 + 12 ** 2) ** 0.5)
    assert missed["nsd"]["a"] == 0.0 and missed["vd"]["a"] == -100.0


def test_per_case_metrics_score_each_case_and_their_means():
    pred, target = volume()
    perfect = per_case_metrics(torch.cat([target, pred]), torch.cat([target, target]),
                               [CaseSpan("same", 6), CaseSpan("shifted", 6)], NAMES, DistanceSettings())
    assert perfect["same"]["dice_per_class"]["a"] == 1.0 and perfect["same"]["hd95_mean"] == 0.0
    assert perfect["shifted"]["dice_per_class"]["a"] == pytest.approx(2 * 60 / (75 + 120))
    means = case_means(perfect, NAMES)
    assert means["hd95_mean"] == pytest.approx(perfect["shifted"]["hd95_mean"] / 2)
    assert means["hd95_per_class"]["b"] is None  # in no case: no mean


def test_a_run_summary_keeps_every_case_of_val_and_test(tmp_path):
    from segtune.config import Config
    from segtune.training.loop import train

    config = Config.model_validate({"plan": "off", "data": {"source": "synthetic", "n_train": 8, "n_val": 3,
                                                            "n_test": 2, "size": 16},
                                    "model": {"name": "unet", "depth": 2, "base": 4},
                                    "train": {"epochs": 1, "batch_size": 8, "num_threads": 1}})
    summary = train(config, out_dir=tmp_path / "run", verbose=False).summary
    assert list(summary["val"]["per_case"]) == ["val_0000", "val_0001", "val_0002"]
    assert len(summary["test"]["per_case"]) == 2
    case = summary["test"]["per_case"]["test_0000"]
    assert set(case) >= {"dice_mean", "dice_per_class", "hd95_per_class", "nsd_mean", "avd_mean"}
    assert summary["test"]["case_dice_mean"] == pytest.approx(
        sum(c["dice_mean"] for c in summary["test"]["per_case"].values()) / 2)
