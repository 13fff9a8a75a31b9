"""Volumes read with data.spacing: evaluate scores, and predict writes, on each input's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_tree
from tests.data.writers import write_two_spacings

from segtune.config import build_config
from segtune.data import Split
from segtune.training import predict
from segtune.training.loop import train
from segtune.training.metrics import dice_per_class
from segtune.training.predict import evaluate_run, native_grid, native_labels, predict_files, run_config
from segtune.training.runtime import load_data


@pytest.fixture(scope="module")
def spacing_run(tmp_path_factory):
    """A run that learnt something (15 epochs) on two cases of 1 mm and 2 x 1 mm in plane, read at 1 mm
    (case_001 upsampled)."""
    tmp = tmp_path_factory.mktemp("spacing")
    root = write_two_spacings(tmp / "data")
    config = build_config(tiny_tree(data={"source": "nifti", "path": str(root), "spacing": 1.0},
                                    train={"epochs": 15, "batch_size": 4, "patience": 0, "device": "cpu"},
                                    optimizer={"name": "adam", "lr": 0.03}))
    return train(config, out_dir=tmp / "run", verbose=False).run_dir, root


def _truth(root, case):
    return np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.int64)


def test_a_perfect_prediction_scores_dice_1_on_the_original_grid(spacing_run, monkeypatch):
    run, root = spacing_run
    data = load_data(run_config(run, ["data.train_fraction=1.0", "data.min_foreground_fraction=0"]))
    slices = torch.cat([data.train.images, data.val.images])
    masks = torch.cat([data.train.masks, data.val.masks])

    def perfect(model, images, **options):  # the one-hot truth of each slice as read (at 1 mm)
        index = [next(k for k in range(len(slices)) if torch.equal(slices[k], image)) for image in images]
        return F.one_hot(masks[index], 3).movedim(-1, 1).float()

    monkeypatch.setattr(predict, "predict_probabilities", perfect)
    metrics, names = evaluate_run(run, split="all")
    assert metrics["grid"] == "original"
    assert metrics["per_case"] == {c: {n: 1.0 for n in names} for c in ("case_000", "case_001")}
    metrics, _ = evaluate_run(run, split="val")  # case_001: its 2 x 1 mm spacing in the surface metrics' spans
    assert metrics["dice_per_class"] == {n: 1.0 for n in names}
    assert metrics["case_metrics"]["case_001"]["dice_mean"] == 1.0


def test_native_grid_scores_against_the_label_files_at_their_own_size(spacing_run):
    run, root = spacing_run
    data = load_data(run_config(run))
    split = Split(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.masks, data.val.masks]))
    uniform = lambda x: torch.full((len(x), 3, *x.shape[2:]), 1 / 3)  # noqa: E731 - ties: class 0 everywhere
    pred, truth = native_grid(uniform, split, [["case_000", 4], ["case_001", 4]], data.info, 3)
    assert pred.shape == truth.masks.shape == (8, 20, 20)
    # case_001 is 10 x 20 on its own grid: its labels as in the file, the rest filled with 3 (no class)
    assert np.array_equal(truth.masks[4:, :10].numpy(), np.moveaxis(_truth(root, "case_001"), 2, 0))
    assert bool((truth.masks[4:, 10:] == 3).all()) and bool((pred[4:, 10:] == 3).all())
    assert bool((pred[:, :10] == 0).all()) and bool((pred[:4] == 0).all())


def test_predict_writes_each_volume_on_its_own_grid_and_evaluate_agrees(spacing_run, tmp_path):
    run, root = spacing_run
    written = predict_files(run, [root / "imagesTr"], tmp_path / "pred")
    metrics, names = evaluate_run(run, split="all")
    # a model that finds the square: scored on the 1 mm grid it was read at, case_001's Dice would differ
    assert metrics["grid"] == "original" and metrics["per_case"]["case_001"]["square"] > 0.5
    for path, shape in zip(written, ((20, 20, 4), (10, 20, 4))):
        case = path.name.removesuffix(".nii.gz")
        out, source = nib.load(path), nib.load(root / "imagesTr" / f"{case}_0000.nii.gz")
        assert out.shape == source.shape == shape
        assert np.allclose(out.affine, source.affine) and out.header.get_zooms() == source.header.get_zooms()
        labels = np.asarray(out.dataobj).astype(np.int64)
        assert set(np.unique(labels)) <= {0, 1, 2}
        dice = dice_per_class(torch.from_numpy(labels), torch.from_numpy(_truth(root, case)), 3).tolist()
        assert [metrics["per_case"][case][n] for n in names] == pytest.approx(dice)


def test_labels_the_files_do_not_hold_are_scored_on_the_grid_the_model_sees(spacing_run):
    run, _ = spacing_run
    metrics, names = evaluate_run(run, split="val", overrides=["data.label_map={2: 1}"])  # bar merged into square
    assert metrics["grid"] == "as read" and names == ["background", "square+bar"]
    assert evaluate_run(run, split="val")[0]["grid"] == "original"


def test_a_case_padded_onto_the_canvas_is_predicted_alone_as_predict_does():
    seen = []

    def probabilities_of(x):
        seen.append(tuple(x.shape))
        return F.one_hot((x[:, 0] > 0).long(), 3).movedim(-1, 1).float()

    images = torch.zeros(4, 1, 10, 10)
    images[:, :, 2:8, 2:8] = -1.0  # a 6 x 6 case (2 mm) centred on the canvas, padded with 0
    images[:, :, 2:5, 2:5] = 1.0  # its class-1 corner
    entry = {"size": [12, 12], "box": [2, 2, 6, 6]}  # natively 12 x 12 at 1 mm
    labels = native_labels(probabilities_of, images, (10, 10), entry)
    assert seen == [(4, 1, 6, 6)]  # the case's box alone, not the canvas
    assert labels.shape == (4, 12, 12) and int(labels.sum()) == 4 * 36 and bool((labels[:, :6, :6] == 1).all())
    # after a data.resize to 20 x 20 the whole slices are predicted and brought back to the canvas first
    seen.clear()
    labels = native_labels(probabilities_of, F.interpolate(images, size=(20, 20)), (10, 10), entry)
    assert seen == [(4, 1, 20, 20)] and bool((labels[:, :6, :6] == 1).all()) and int(labels.sum()) == 4 * 36
