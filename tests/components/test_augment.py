"""Batched augmentations: reproducible by seed, masks stay aligned integer labels, flips are exact."""

from __future__ import annotations

import math

import pytest
import torch

from segtune.components import augment
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


def test_rotation_turns_pixels_not_the_grid_a_disc_stays_a_disc_on_a_non_square_image():
    # affine_grid's coordinates are relative to each side; rotated there, a disc on a 40 x 64 image came
    # out as an ellipse (at 90 degrees its height and width swapped by the side ratio, 1.6)
    h, w, radius = 40, 64, 12
    yy, xx = torch.meshgrid(torch.arange(h) - h / 2 + 0.5, torch.arange(w) - w / 2 + 0.5, indexing="ij")
    masks = ((xx ** 2 + yy ** 2) < radius ** 2).long().expand(32, h, w).contiguous()
    _, y = augment.random_affine(masks[:, None].float(), masks, torch.Generator().manual_seed(0),
                                 degrees=90, translate=0)
    for rotated in y:
        rows, cols = torch.nonzero(rotated, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert abs(height - 2 * radius) <= 1 and abs(width - 2 * radius) <= 1, (height, width)
        assert abs(int(rotated.sum()) - int(masks[0].sum())) <= 0.03 * int(masks[0].sum())


def test_a_quarter_turn_is_rot90_on_a_square_image_and_keeps_the_frame_on_a_non_square_one(monkeypatch):
    # the angle is drawn as (u * 2 - 1) * degrees: u = 1 turns by +degrees; the shift's u = 0.5 is none
    draws = iter([torch.ones(2), torch.full((2, 2), 0.5)] * 2)
    monkeypatch.setattr(augment.torch, "rand", lambda *a, **k: next(draws))
    _, masks = _batch(n=2, size=24)
    _, y = augment.random_affine(masks[:, None].float(), masks, torch.Generator(), degrees=90, translate=0.1)
    assert any(torch.equal(y, torch.rot90(masks, k, (1, 2))) for k in (1, -1))
    wide = torch.zeros(2, 20, 40, dtype=torch.long)
    wide[:, 8:12, 5:35] = 1  # a horizontal bar 30 long, 4 high: turned upright it is cut by the frame
    _, y = augment.random_affine(wide[:, None].float(), wide, torch.Generator(), degrees=90, translate=0.1)
    rows, cols = torch.nonzero(y[0], as_tuple=True)
    assert int(cols.max() - cols.min() + 1) == 4 and int(rows.max() - rows.min() + 1) == 20


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


# nnU-Net's intensity augmentation (flip's and combine's `intensity`)

def _only(monkeypatch, name: str) -> None:
    """Every intensity transform off except ``name``, which always applies at strength 1."""
    for key, (_, span) in list(augment.INTENSITY.items()):
        monkeypatch.setitem(augment.INTENSITY, key, (1.0 if key == name else 0.0, span))


def _images(n: int = 32, c: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(1)) * 2 + 0.5


def test_intensity_is_reproducible_by_seed_and_leaves_masks_alone():
    images, masks = _batch()
    aug = AUGMENTATIONS.build("combine", {"intensity": 3.0})
    x1, y1 = aug(images, masks, torch.Generator().manual_seed(3))
    x2, y2 = aug(images, masks, torch.Generator().manual_seed(3))
    x3, _ = aug(images, masks, torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    # the spatial draws come first: the masks are those of combine without intensity, the images are not
    x0, y0 = AUGMENTATIONS.build("combine", {})(images, masks, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y0) and not torch.allclose(x1, x0)


def test_intensity_zero_is_the_identity_and_the_default():
    images, masks = _batch()
    still = AUGMENTATIONS.build("flip", {"horizontal": False, "intensity": 0.0})
    x, y = still(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(x, images) and torch.equal(y, masks)
    assert AUGMENTATIONS.defaults("flip")["intensity"] == 0.0 == AUGMENTATIONS.defaults("combine")["intensity"]
    assert torch.equal(augment.random_intensity(images, torch.Generator().manual_seed(0), strength=0.0), images)


def test_intensity_strength_multiplies_each_probability():
    images = _images(n=4000, c=1, size=2)
    for strength in (1.0, 2.0, 6.0):
        out = augment.random_intensity(images, torch.Generator().manual_seed(0), strength=strength)
        changed = (out != images).flatten(1).any(1).float().mean().item()
        # at least one of the six applies: 1 - prod(1 - p_i * strength)
        expected = 1 - math.prod(1 - min(1.0, p * strength) for p, _ in augment.INTENSITY.values())
        assert abs(changed - expected) < 0.03, (strength, changed, expected)


def test_brightness_scales_each_channel_by_a_factor_in_range(monkeypatch):
    _only(monkeypatch, "brightness")
    images = _images()
    out = augment.random_intensity(images, torch.Generator().manual_seed(0), strength=1.0)
    factor = out / images
    per_channel = factor.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-5)
    assert per_channel.min() >= 0.75 - 1e-5 and per_channel.max() <= 1.25 + 1e-5
    assert (per_channel[..., 0] < 1).any() and (per_channel[..., 0] > 1).any()


def test_contrast_keeps_mean_and_range(monkeypatch):
    _only(monkeypatch, "contrast")
    images = _images()
    out = augment.random_intensity(images, torch.Generator().manual_seed(0), strength=1.0)
    assert (out.amin((-2, -1)) >= images.amin((-2, -1)) - 1e-5).all()
    assert (out.amax((-2, -1)) <= images.amax((-2, -1)) + 1e-5).all()
    ratio = out.std((-2, -1)) / images.std((-2, -1))
    assert ratio.max() <= 1.25 + 1e-4 and ratio.min() >= 0.6 and not torch.allclose(ratio, torch.ones_like(ratio))


@pytest.mark.parametrize("name", ["gamma", "gamma_inverted"])
def test_gamma_keeps_order_mean_and_std(monkeypatch, name):
    _only(monkeypatch, name)
    images = _images()
    out = augment.random_intensity(images, torch.Generator().manual_seed(0), strength=1.0)
    assert torch.allclose(out.mean((-2, -1)), images.mean((-2, -1)), atol=1e-4)
    assert torch.allclose(out.std((-2, -1)), images.std((-2, -1)), atol=1e-4)
    flat_in, flat_out = images.flatten(2), out.flatten(2)
    assert torch.equal(flat_in.argsort(-1), flat_out.argsort(-1))  # monotone: the pixels keep their order
    assert (flat_out - flat_in).abs().max() > 0.05  # and the shape of the histogram changed


def test_gamma_maps_the_range_onto_itself_before_restoring_stats():
    images = torch.linspace(0, 4, 64).reshape(1, 1, 8, 8)
    gamma = torch.tensor([[2.0]])
    raw = ((images - 0) / 4) ** 2 * 4
    out = augment._gamma(images, gamma, invert=False)
    expected = (raw - raw.mean()) / raw.std() * images.std() + images.mean()
    assert torch.allclose(out, expected, atol=1e-4)


def test_noise_is_zero_mean_with_std_at_most_root_of_the_variance(monkeypatch):
    _only(monkeypatch, "noise")
    images = _images(n=64, size=32)
    added = augment.random_intensity(images, torch.Generator().manual_seed(0), strength=1.0) - images
    std = added.flatten(1).std(1)
    assert std.max() <= math.sqrt(0.1) * 1.1 and std.min() > 0
    assert added.mean().abs() < 0.01


def test_blur_keeps_a_constant_image_and_smooths_noise(monkeypatch):
    _only(monkeypatch, "blur")
    flat = torch.full((4, 1, 16, 16), 3.0)
    assert torch.allclose(augment.random_intensity(flat, torch.Generator().manual_seed(0), strength=1.0), flat)
    noisy = _images(n=8)
    out = augment.random_intensity(noisy, torch.Generator().manual_seed(0), strength=1.0)
    assert (out.std((-2, -1)) < 0.8 * noisy.std((-2, -1))).all()
    sigma = torch.tensor([0.5])
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1.0
    blurred = augment._blur(point, sigma)
    assert abs(blurred.sum().item() - 1.0) < 1e-5 and blurred[0, 0, 4, 4] < 1.0
    assert torch.allclose(blurred[0, 0], blurred[0, 0].T, atol=1e-6)


def test_intensity_out_of_range_is_refused_with_the_option_named():
    with pytest.raises(Exception, match="intensity"):
        AUGMENTATIONS.validate("flip", {"intensity": -0.5})
    with pytest.raises(Exception, match="intensity"):
        AUGMENTATIONS.validate("combine", {"intensity": 7})
