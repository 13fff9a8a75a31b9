"""The built-in sources: demo (MNI ICBM152 2009 from nilearn) and synthetic; shared preparation."""

import torch

from segtune.config import build_config
from segtune.data import SOURCES, prepare
from segtune.data.demo import CLASS_NAMES, COPYRIGHT, demo

from tests.conftest import tiny_tree


def test_demo_dataset_shapes_labels_and_notice():
    data = demo(0)
    assert data.class_names == CLASS_NAMES == ["background", "csf", "grey_matter", "white_matter"]
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1] == 1 and split.images.shape[2] % 16 == 0 and split.images.shape[3] % 16 == 0
        assert set(split.masks.unique().tolist()) == {0, 1, 2, 3}
    assert "McGill University" in COPYRIGHT and data.info["copyright"] == COPYRIGHT


def _runs(index: list[int]) -> int:
    """How many runs of consecutive numbers ``index`` (sorted) holds."""
    return 1 + sum(b != a + 1 for a, b in zip(index, index[1:]))


def test_demo_split_is_contiguous_blocks_and_fixed():
    # axial slices: no slice in two splits, and the same split for every run seed
    a, b = demo(0), demo(123)
    assert torch.equal(a.test.images, b.test.images)
    slices = a.info["slices"]
    n = len(a.train) + len(a.val) + len(a.test)
    assert sorted(slices["train"] + slices["val"] + slices["test"]) == list(range(n))
    assert [len(slices[k]) for k in ("train", "val", "test")] == [len(a.train), len(a.val), len(a.test)]
    # 20 blocks, 4 for validation and 4 for test: each split is at most 4 runs of neighbouring
    # slices (fewer where chosen blocks touch), never interleaved slice by slice
    assert _runs(slices["val"]) <= 4 and _runs(slices["test"]) <= 4
    assert len(a.test) >= n // 10


def test_demo_planes_differ():
    axial, coronal = demo(0, plane="axial"), demo(0, plane="coronal")
    assert axial.train.images.shape[2:] != coronal.train.images.shape[2:]


def test_synthetic_is_deterministic_and_labelled():
    a = SOURCES.build("synthetic", {"n_train": 4, "size": 24, "n_classes": 4}, 0)
    b = SOURCES.build("synthetic", {"n_train": 4, "size": 24, "n_classes": 4}, 99)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.masks, b.train.masks)
    assert a.train.images.shape == (4, 1, 24, 24) and int(a.train.masks.max()) <= 3
    rgb = SOURCES.build("synthetic", {"n_train": 2, "channels": 3}, 0)
    assert rgb.in_channels == 3


def test_prepare_train_fraction_is_seeded_and_nested():
    raw = SOURCES.build("synthetic", {"n_train": 20}, 0)
    half = prepare(raw, train_fraction=0.5, resize=None, normalize="zscore", seed=0)
    again = prepare(raw, train_fraction=0.5, resize=None, normalize="zscore", seed=0)
    assert len(half.train) == 10 and torch.equal(half.train.images, again.train.images)
    assert len(half.val) == len(raw.val)  # only the training split is subsampled


def test_prepare_resize_and_normalisation():
    raw = SOURCES.build("synthetic", {"n_train": 3, "size": 32}, 0)
    out = prepare(raw, train_fraction=1.0, resize=(16, 24), normalize="zscore", seed=0)
    assert out.train.images.shape == (3, 1, 16, 24) and out.train.masks.shape == (3, 16, 24)
    assert out.train.masks.dtype == torch.int64
    assert torch.allclose(out.train.images.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)
    mm = prepare(raw, train_fraction=1.0, resize=None, normalize="minmax", seed=0)
    assert float(mm.train.images.min()) == 0.0 and float(mm.train.images.max()) == 1.0


def test_train_fraction_from_config(tmp_path):
    from segtune.training.runtime import load_data

    cfg = build_config(tiny_tree(), ["data.train_fraction=0.25"])
    assert len(load_data(cfg).train) == 4
