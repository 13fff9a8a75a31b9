"""The shipped demo config normalises a whole template slice (as ``segtune predict`` reads a
volume) the way its training slices were normalised (cropped in-plane to the head)."""

import numpy as np
import torch

from segtune.config import load_config
from segtune.data import normalize_images
from segtune.data.demo import load_volume
from segtune.study.demo import demo_config_path
from segtune.training.runtime import load_data


def _whole_and_cropped(normalize: str):
    """The demo's training slices as trained on, and the same slices of the whole template
    normalised as predict does (the run's normalisation and statistics), cut to the same box."""
    config = load_config(demo_config_path(), ["data.spacing=2", f"data.normalize={normalize}"])
    data = load_data(config)
    t1, labels = load_volume(2)
    whole = torch.from_numpy(np.moveaxis(t1, 2, 0)[:, None].copy())[data.info["slices"]["train"]]
    whole = normalize_images(whole, normalize, data.info.get("normalize_stats"))
    rows, cols = np.nonzero((labels > 0).any(2))  # the head's box in the axial plane, as the demo crops
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    top, left = (-h % 16) // 2, (-w % 16) // 2  # the demo pads the box to a multiple of 16, centred
    trained = data.train.images[:, :, top : top + h, left : left + w]
    return trained, whole[:, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def test_the_demo_config_gives_a_whole_template_slice_the_values_its_training_slices_had():
    assert load_config(demo_config_path()).data.normalize == "zscore_dataset"
    trained, whole = _whole_and_cropped("zscore_dataset")
    assert trained.shape == whole.shape and torch.allclose(trained, whole, atol=1e-5)


def test_per_slice_z_scores_would_shift_the_whole_slices_intensities():
    # the air around the head lowers a whole slice's mean: the same white matter reads brighter
    trained, whole = _whole_and_cropped("zscore")
    brain = trained > 0.5
    assert float((whole[brain] - trained[brain]).mean()) > 0.2
