"""The shared preprocessing of every source: fractions, colour, normalisation, label maps, rare classes, empty slices."""

from __future__ import annotations

import pytest
import torch

from segtune.config import build_config
from segtune.data import SOURCES, SegData, Split, prepare
from segtune.errors import ConfigError, DataError

PLAIN = {"train_fraction": 1.0, "resize": None, "normalize": "none", "seed": 0}


def _raw(n_classes: int = 4, channels: int = 1) -> SegData:
    return SOURCES.build("synthetic", {"n_train": 20, "n_val": 4, "n_test": 4, "size": 16,
                                       "n_classes": n_classes, "channels": channels}, 0)


def _counts(data: SegData) -> torch.Tensor:
    return torch.bincount(data.train.masks.flatten(), minlength=data.n_classes)


def test_train_fraction_is_a_seeded_nested_subset():
    raw = _raw()
    small = prepare(raw, **{**PLAIN, "train_fraction": 0.2})
    large = prepare(raw, **{**PLAIN, "train_fraction": 0.6})
    again = prepare(raw, **{**PLAIN, "train_fraction": 0.2})
    assert (len(small.train), len(large.train)) == (4, 12)
    assert torch.equal(small.train.masks, again.train.masks)
    # Every image of the 20 % subset is in the 60 % subset; validation and test are untouched.
    assert all(any(torch.equal(m, n) for n in large.train.masks) for m in small.train.masks)
    assert torch.equal(small.val.masks, raw.val.masks)


def test_color_converts_grey_and_rgb():
    rgb = _raw(channels=3)
    grey = prepare(rgb, **PLAIN, color="grey")
    luma = 0.299 * rgb.train.images[:, 0] + 0.587 * rgb.train.images[:, 1] + 0.114 * rgb.train.images[:, 2]
    torch.testing.assert_close(grey.train.images[:, 0], luma)
    back = prepare(grey, **PLAIN, color="rgb")
    assert back.in_channels == 3 and torch.equal(back.val.images[:, 2], grey.val.images[:, 0])


@pytest.mark.parametrize("how", ["zscore", "minmax", "zscore_dataset"])
def test_normalisation(how):
    data = prepare(_raw(channels=3), **{**PLAIN, "normalize": how})
    x = data.train.images
    if how == "zscore":  # each image: mean 0, std 1
        torch.testing.assert_close(x.mean((1, 2, 3)), torch.zeros(len(x)), atol=1e-5, rtol=0)
        torch.testing.assert_close(x.std((1, 2, 3)), torch.ones(len(x)), atol=1e-4, rtol=0)
    elif how == "minmax":  # each image spans [0, 1]
        assert torch.allclose(x.amin((1, 2, 3)), torch.zeros(len(x))) and torch.allclose(x.amax((1, 2, 3)), torch.ones(len(x)))
    else:  # each channel over the training split: mean 0, std 1; stats kept for prediction
        flat = x.transpose(0, 1).reshape(3, -1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.std(1), torch.ones(3), atol=1e-4, rtol=0)
        assert len(data.info["normalize_stats"]["mean"]) == 3


def test_histogram_equalisation_spreads_each_image_evenly_and_keeps_order():
    """Each channel of each image becomes its own CDF: uniform over (0, 1], in the same order as before."""
    data = prepare(_raw(channels=3), **{**PLAIN, "normalize": "histogram"})
    x, raw = data.train.images, prepare(_raw(channels=3), **{**PLAIN, "normalize": "none"}).train.images
    flat, before = x.flatten(2), raw.flatten(2)
    assert float(flat.amax()) == 1.0 and float(flat.amin()) > 0
    n = flat.shape[2]
    even = torch.arange(1, n + 1, dtype=x.dtype) / n  # distinct values: exactly the ranks' shares
    assert before[0, 0].unique().numel() == n  # the synthetic image has no ties
    torch.testing.assert_close(flat[0, 0].sort().values, even)
    order = before[0, 1].argsort()
    assert bool((flat[0, 1][order].diff() >= 0).all())  # monotone: brighter stays brighter


def _ct_scan() -> SegData:
    """Two training images of 10 pixels: air (-1000) as background, foreground 0..199 HU and one 3000 HU
    streak; the val image holds -2000 and 5000."""
    values = torch.tensor([[-1000.0] * 4 + [0.0, 50.0, 100.0, 150.0, 3000.0, -1000.0],
                           [-1000.0] * 4 + [20.0, 60.0, 120.0, 199.0, 40.0, -1000.0]])
    masks = torch.tensor([[0] * 4 + [1] * 5 + [0], [0] * 4 + [1] * 5 + [0]])
    val = Split(torch.tensor([[-2000.0, 5000.0] * 5]).view(1, 1, 1, 10), torch.zeros(1, 1, 10, dtype=torch.long))
    return SegData(Split(values.view(2, 1, 1, 10), masks.view(2, 1, 10)), val, val, ["background", "organ"])


def test_ct_normalisation_clips_to_the_training_foreground_and_z_scores_with_its_statistics():
    import numpy as np

    data = prepare(_ct_scan(), **{**PLAIN, "normalize": "ct"})
    foreground = np.array([0.0, 50.0, 100.0, 150.0, 3000.0, 20.0, 60.0, 120.0, 199.0, 40.0])
    stats = data.info["normalize_stats"]  # the foreground's, the background's air left out
    lower, upper = np.percentile(foreground, [0.5, 99.5])
    assert stats["mean"] == pytest.approx([foreground.mean()]) and stats["std"] == pytest.approx([foreground.std()])
    assert stats["lower"] == pytest.approx([lower]) and stats["upper"] == pytest.approx([upper])
    assert upper < 3000 and lower > -1000  # the streak and the air are outside the foreground's range
    expected = (np.clip([-1000.0, 0.0, 3000.0], lower, upper) - foreground.mean()) / foreground.std()
    torch.testing.assert_close(data.train.images[0, 0, 0, [0, 4, 8]], torch.tensor(expected, dtype=torch.float32))
    # val and test use the training statistics: -2000 and 5000 become the clipped bounds
    assert data.val.images.min().item() == pytest.approx((lower - foreground.mean()) / foreground.std(), rel=1e-5)
    assert data.val.images.max().item() == pytest.approx((upper - foreground.mean()) / foreground.std(), rel=1e-5)
    # a trained model's statistics given: used instead of this training split's
    given = {"mean": [0.0], "std": [100.0], "lower": [-100.0], "upper": [100.0]}
    again = prepare(_ct_scan(), **{**PLAIN, "normalize": "ct"}, normalize_stats=given)
    assert again.info["normalize_stats"] == given and again.train.images.max().item() == pytest.approx(1.0)


def test_ct_normalisation_needs_foreground_and_its_own_statistics():
    empty = _ct_scan()
    empty = SegData(Split(empty.train.images, torch.zeros_like(empty.train.masks)), empty.val, empty.test,
                    empty.class_names)
    with pytest.raises(DataError, match="no training mask has a label > 0; use data.normalize=zscore"):
        prepare(empty, **{**PLAIN, "normalize": "ct"})
    with pytest.raises(DataError, match="needs the training set's mean, std, lower, upper"):
        prepare(_ct_scan(), **{**PLAIN, "normalize": "ct"}, normalize_stats={"mean": [0.0], "std": [1.0]})


def test_resize_keeps_labels():
    data = prepare(_raw(), **{**PLAIN, "resize": (9, 13)})
    assert data.train.images.shape[2:] == (9, 13) and data.test.masks.shape[1:] == (9, 13)
    assert set(data.train.masks.unique().tolist()) <= {0, 1, 2, 3}


def test_label_map_relabels_and_names_the_merged_classes():
    raw = _raw()
    data = prepare(raw, **PLAIN, label_map={3: 1})
    assert data.class_names == ["background", "class_1+class_3", "class_2"]
    expected = torch.tensor([0, 1, 2, 1])[raw.val.masks]
    assert torch.equal(data.val.masks, expected)


@pytest.mark.parametrize("label_map,message", [({5: 1}, "maps label 5 but the data has labels 0..3"),
                                               ({2: 3}, "without gaps .nothing is mapped to 2")])
def test_bad_label_maps_are_config_errors(label_map, message):
    with pytest.raises(ConfigError, match=message):
        prepare(_raw(), **PLAIN, label_map=label_map)


def test_rare_classes_merge_into_background():
    raw = _raw()
    share = _counts(raw).double() / _counts(raw).sum()
    threshold = float(share[1:].sort().values[1])  # above the rarest foreground class only
    data = prepare(raw, **PLAIN, min_class_fraction=threshold)
    rarest = int(share[1:].argmin()) + 1
    assert data.n_classes == 3 and data.info["merged_classes"] == [raw.class_names[rarest]]
    assert _counts(data)[0] == _counts(raw)[0] + _counts(raw)[rarest]
    with pytest.raises(DataError, match="every foreground class is rarer"):
        prepare(raw, **PLAIN, min_class_fraction=0.99)


def test_near_empty_training_slices_are_dropped():
    masks = torch.zeros(6, 10, 10, dtype=torch.long)
    for i in range(6):
        masks[i, :i] = 1  # foreground share 0, 0.1, ... 0.5
    split = Split(torch.randn(6, 1, 10, 10), masks)
    data = SegData(split, split, split, ["background", "thing"])
    out = prepare(data, **PLAIN, min_foreground_fraction=0.3)
    assert len(out.train) == 3 and len(out.val) == 6  # only training slices are dropped
    with pytest.raises(DataError, match="drops every training image"):
        prepare(data, **PLAIN, min_foreground_fraction=0.99)


def test_data_options_are_validated_in_the_config():
    with pytest.raises(ConfigError, match="data.color"):
        build_config({"data": {"source": "synthetic", "color": "cmyk"}})
    with pytest.raises(ConfigError, match="data.min_class_fraction"):
        build_config({"data": {"source": "synthetic", "min_class_fraction": 1.5}})
    cfg = build_config({"data": {"source": "synthetic"}}, ["data.label_map={3: 1}"])
    assert cfg.data.label_map == {3: 1}


@pytest.mark.parametrize("how", ["zscore", "minmax", "histogram"])
@pytest.mark.parametrize("val_from", ["fixed", "rest"])
def test_per_image_normalisation_of_unpadded_data_normalises_only_the_images_kept(how, val_from, monkeypatch):
    """Each image alone: the same values as normalising the subset kept, and no work on the images dropped."""
    import segtune.data.base as base

    raw, kept = _raw(channels=3), {**PLAIN, "train_fraction": 0.5, "min_foreground_fraction": 0.05, "val_from": val_from}
    plain = prepare(raw, **kept)
    seen = []
    per_image = base._per_image
    monkeypatch.setattr(base, "_per_image", lambda images, *a: seen.append(len(images)) or per_image(images, *a))
    data = prepare(raw, **{**kept, "normalize": how})
    assert len(plain.train) < len(raw.train) and sum(seen) == len(data.train) + len(data.val) + len(data.test)
    for name in ("train", "val", "test"):
        assert torch.equal(data.split(name).images, base.normalize_images(plain.split(name).images, how))
        assert torch.equal(data.split(name).masks, plain.split(name).masks)
    seen.clear()
    assert torch.equal(prepare(raw, **kept).train.images, plain.train.images) and seen == []  # none: nothing to do
