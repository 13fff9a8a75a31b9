"""A case padded onto the common canvas (data.spacing) is normalised on its own pixels alone, in
training, evaluate and predict alike."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from tests.conftest import tiny_tree

from segtune.config import build_config
from segtune.data import normalize_images
from segtune.data import base
from segtune.data.base import own_pixels
from segtune.training import predict
from segtune.training.loop import train
from segtune.training.predict import evaluate_run, predict_files, run_config
from segtune.training.runtime import load_data

BOX = (slice(None), slice(None), slice(4, 16), slice(4, 16))  # case_001 (12 x 12 at 1 mm) on the 20 x 20 canvas


def write_padded(root):
    """case_000: 20 x 20 voxels of 1 mm (train); case_001: 6 x 6 of 2 mm (val), 12 x 12 at 1 mm, so it
    is padded by 4 pixels a side onto case_000's canvas; 4 slices each, a class-1 square in both."""
    for i, (rows, step) in enumerate(((20, 1.0), (6, 2.0))):
        label = np.zeros((rows, rows, 4), np.uint8)
        label[rows // 4:rows // 2 + 1, rows // 4:rows // 2 + 1] = 1
        image = (label * 40.0 + 100.0 + np.random.default_rng(i).normal(0, 5, label.shape)).astype(np.float32)
        affine = np.diag([step, step, 3.0, 1.0])
        for array, folder, name in ((image, "imagesTr", f"case_{i:03d}_0000"), (label, "labelsTr", f"case_{i:03d}")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(root / folder / f"{name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "square": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    (root / "splits.json").write_text(json.dumps({"train": ["case_000"], "val": ["case_001"]}))
    return root


def _config(root, normalize="zscore", **train):
    return build_config(tiny_tree(data={"source": "nifti", "path": str(root), "spacing": 1.0, "normalize": normalize},
                                  train={"epochs": 1, "batch_size": 4, "patience": 0, "device": "cpu", **train}))


@pytest.mark.parametrize("normalize", ["zscore", "minmax", "histogram"])
def test_a_padded_case_is_normalised_on_its_own_pixels(tmp_path, normalize, monkeypatch):
    monkeypatch.setattr(base, "OWN_AT_ONCE", 3)  # the 4 slices of each split in two goes
    data = load_data(_config(write_padded(tmp_path), normalize))
    own = own_pixels(data, "val")
    assert own is not None and int(own.sum()) == 4 * 144 and bool(own[BOX].all())
    raw = load_data(_config(tmp_path, "none"))  # the same slices as read, not normalised
    assert torch.allclose(data.val.images[BOX], normalize_images(raw.val.images[BOX].contiguous(), normalize),
                          atol=1e-5)
    padding = data.val.images[~own.expand_as(data.val.images)].view(4, -1)  # the case's least value, normalised
    assert bool((padding == padding[:, :1]).all())
    assert bool((padding[:, 0] <= data.val.images[BOX].amin((1, 2, 3))).all())
    if normalize == "zscore":  # each slice: mean 0, std 1 over its own pixels (the padding counted would shift both)
        own_values = data.val.images[BOX].flatten(1)
        assert own_values.mean(1).abs().max() < 1e-5 and (own_values.std(1) - 1).abs().max() < 1e-5
    assert own_pixels(data, "train") is None  # case_000 fills the canvas


def test_training_evaluate_and_predict_feed_a_padded_case_the_same_values(tmp_path, monkeypatch):
    root = write_padded(tmp_path / "data")
    run = train(_config(root), out_dir=tmp_path / "run", verbose=False).run_dir
    trained = load_data(run_config(run)).val.images[BOX]  # case_001 as training and evaluate read it
    seen = []

    def record(model, images, **options):
        seen.append(images.clone())
        return torch.full((len(images), 2, *images.shape[2:]), 0.5)

    monkeypatch.setattr(predict, "predict_probabilities", record)
    predict_files(run, [root / "imagesTr" / "case_001_0000.nii.gz"], tmp_path / "pred")
    evaluate_run(run, split="val")  # on the original grid: the case's box cut from the normalised canvas
    assert [tuple(x.shape) for x in seen] == [(4, 1, 12, 12)] * 2
    assert torch.allclose(seen[0], trained, atol=1e-5)  # predict: the case alone, no padding
    assert torch.allclose(seen[1], trained, atol=1e-5)
    assert trained.flatten(1).mean(1).abs().max() < 1e-5  # z-scored on its own pixels
