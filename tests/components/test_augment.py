"""Batched augmentations: reproducible by seed, masks stay aligned integer labels, flips are exact."""

from __future__ import annotations

import pytest
import torch

from segtune.components.augment import AUGMENTATIONS


def _batch(n: int = 16, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):  # a rectangle of class 1 and one of class 2 at random places
        for label in (1, 2):
            y, x = torch.randint(0, size - 8, (2,), generator=g).tolist()
            masks[i, y:y + 8, x:x + 6] = label
    images = torch.cat([masks[:, None].float(), torch.randn(n, 1, size, size, generator=g)], 1)
    return images, masks


def _run(name: str, options: dict, seed: int):
    aug = AUGMENTATIONS.build(name, options)
    return aug(*_batch(), torch.Generator().manual_seed(seed))


def test_none_is_no_augmentation():
    assert AUGMENTATIONS.build("none", {}) is None


@pytest.mark.parametrize("name", [n for n in AUGMENTATIONS.names() if n != "none"])
def test_same_seed_same_result_other_seed_other_result(name):
    x1, y1 = _run(name, {}, seed=3)
    x2, y2 = _run(name, {}, seed=3)
    x3, y3 = _run(name, {}, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


@pytest.mark.parametrize("name", [n for n in AUGMENTATIONS.names() if n != "none"])
def test_masks_stay_integer_labels_aligned_with_the_image(name):
    images, masks = _batch()
    x, y = _run(name, {}, seed=1)
    assert y.dtype == torch.long and x.shape == images.shape and y.shape == masks.shape
    assert set(y.unique().tolist()) <= set(masks.unique().tolist())
    # Channel 0 of the image is the mask itself: image and mask moved together (bilinear edges aside).
    agree = (x[:, 0].round().long() == y).float().mean()
    assert agree > 0.95


@pytest.mark.parametrize("horizontal,vertical,dim", [(True, False, -1), (False, True, -2)])
def test_flips_are_exact(horizontal, vertical, dim):
    images, masks = _batch()
    x, y = _run("flip", {"horizontal": horizontal, "vertical": vertical}, seed=0)
    flipped = [not torch.equal(y[i], masks[i]) for i in range(len(masks))]
    assert 0 < sum(flipped) < len(masks)  # each image flipped with probability 0.5
    for i, was_flipped in enumerate(flipped):
        want_x, want_y = (images[i].flip(dim), masks[i].flip(dim)) if was_flipped else (images[i], masks[i])
        assert torch.equal(x[i], want_x) and torch.equal(y[i], want_y)


def test_combine_without_rotation_shift_or_flip_is_the_identity():
    images, masks = _batch()
    x, y = _run("combine", {"degrees": 0, "translate": 0, "horizontal": False}, seed=0)
    assert torch.equal(y, masks)
    torch.testing.assert_close(x, images)


def test_combine_rotates_within_its_range():
    # 20 degrees at most: the mask's class-1 area changes little (no pixels lost but at the border).
    images, masks = _batch()
    _, y = _run("combine", {"degrees": 20, "translate": 0, "horizontal": False}, seed=0)
    assert not torch.equal(y, masks)
    ratio = (y == 1).sum() / (masks == 1).sum()
    assert 0.85 < float(ratio) < 1.15


@pytest.mark.parametrize("n_aug, augmenting, n_seen, n_augmented", [
    (2, True, 15, 10),   # each image once as it is plus 2 augmented copies: (1 + n_aug) x the data
    (0, True, 5, 5),     # no copies: every image is augmented on the fly
    (3, False, 20, 0),   # augment.name: none: copies, none augmented
])
def test_an_epoch_sees_1_plus_n_aug_times_the_data(n_aug, augmenting, n_seen, n_augmented):
    from segtune.training.runtime import epoch_order

    index, flags = epoch_order(5, n_aug, augmenting, torch.Generator().manual_seed(0))
    assert len(index) == n_seen and int(flags.sum()) == n_augmented
    assert sorted(index.tolist()) == sorted(list(range(5)) * (1 + n_aug))
    if augmenting and n_aug:  # every image also appears once unaugmented
        assert sorted(index[~flags].tolist()) == list(range(5))
