"""Patch training (random crops, foreground oversampling) and sliding-window prediction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segtune.components.models import build_model
from segtune.training.evaluate import evaluate_split, image_logits
from segtune.config import Config
from segtune.training.patches import PatchSampler, WholeImages, foreground_locations, oversampled, pad_to, window_logits
from segtune.training.runtime import run_samples
from segtune.data import SegData, Split


def ramp_images(n: int, h: int, w: int) -> torch.Tensor:
    """Images ``(n, 1, h, w)`` whose every pixel value is unique and above 0 (1 + its flat index)."""
    return (1 + torch.arange(n * h * w, dtype=torch.float32)).reshape(n, 1, h, w)


def sampler(images, masks, share=0.33, patch=(16, 16), n_classes=3):
    return PatchSampler(images, masks, patch_size=patch, foreground_oversample=share, n_classes=n_classes)


@pytest.mark.parametrize("batch, share, n_forced", [
    (16, 0.33, 5),   # nnU-Net's rule: the last B - round(B * (1 - share)) of the batch
    (2, 0.33, 1),    # a batch of two always holds one foreground crop
    (8, 0.0, 0),
    (8, 1.0, 8),
    (3, 0.5, 1),     # round(1.5) is 2 (to even): two uniform, one forced
])
def test_the_oversampled_share_of_a_batch(batch, share, n_forced):
    forced = oversampled(batch, share)
    assert int(forced.sum()) == n_forced
    assert forced.tolist() == sorted(forced.tolist())  # the last ones


def test_crops_are_windows_of_the_image_and_pad_small_sides_with_zero_and_background():
    # images 12 x 40 and patch 16 x 16: rows padded 2 above and 2 below, columns cropped
    images, masks = ramp_images(4, 12, 40), torch.ones(4, 12, 40, dtype=torch.long)
    s = sampler(images, masks, share=0.0)
    index = torch.tensor([0, 3, 1, 3])
    corners = s.corners(index, torch.Generator().manual_seed(1))
    x, y = s(index, torch.Generator().manual_seed(1))
    assert x.shape == (4, 1, 16, 16) and y.shape == (4, 16, 16) and y.dtype == torch.long
    padded, (rows, cols) = pad_to(images, (16, 16))
    assert (rows, cols) == (slice(2, 14), slice(0, 40))
    for b, (i, (r, c)) in enumerate(zip(index.tolist(), corners.tolist())):
        assert r == 0 and 0 <= c <= 40 - 16
        assert torch.equal(x[b], padded[i, :, r:r + 16, c:c + 16])
    assert (x[:, :, :2] == 0).all() and (x[:, :, 14:] == 0).all() and (x[:, :, 2:14] > 0).all()
    assert (y[:, :2] == 0).all() and (y[:, 14:] == 0).all() and (y[:, 2:14] == 1).all()


def test_every_oversampled_crop_holds_a_pixel_of_a_class_present_and_both_classes_are_chosen():
    # one pixel of class 1 near the top-left corner, one of class 2 near the bottom-right, 64 x 64:
    # no 16 x 16 crop holds both; uniform crops mostly hold neither
    masks = torch.zeros(1, 64, 64, dtype=torch.long)
    masks[0, 3, 5], masks[0, 60, 58] = 1, 2
    images = ramp_images(1, 64, 64)
    generator = torch.Generator().manual_seed(0)
    forced_labels, uniform_hits = [], 0
    for _ in range(40):
        _, y = sampler(images, masks, share=1.0)(torch.zeros(2, dtype=torch.long), generator)
        for crop in y:
            labels = set(crop.unique().tolist()) - {0}
            assert len(labels) == 1  # the pixel of the chosen class is in the crop
            forced_labels += labels
        _, y = sampler(images, masks, share=0.0)(torch.zeros(2, dtype=torch.long), generator)
        uniform_hits += int((y > 0).flatten(1).any(1).sum())
    assert set(forced_labels) == {1, 2}  # a random class of those present, not always the first
    assert uniform_hits < 20  # of 80 uniform crops: foreground is rare without oversampling


def test_an_image_without_foreground_gets_a_uniform_crop():
    masks = torch.zeros(3, 32, 32, dtype=torch.long)
    masks[1, 10, 10] = 2
    x, y = sampler(ramp_images(3, 32, 32), masks, share=1.0)(torch.tensor([0, 2, 1]), torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 16, 16) and (y[:2] == 0).all() and (y[2] == 2).sum() == 1


def test_the_same_seed_gives_the_same_crops_and_another_seed_others():
    masks = (ramp_images(6, 40, 40)[:, 0].long() % 7 == 0).long()
    s = sampler(ramp_images(6, 40, 40), masks, n_classes=2)
    index = torch.arange(6)
    first = s(index, torch.Generator().manual_seed(5))
    again = s(index, torch.Generator().manual_seed(5))
    other = s(index, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_foreground_locations_are_listed_per_image_and_class_and_evenly_thinned():
    masks = torch.zeros(2, 4, 5, dtype=torch.long)
    masks[0].view(-1)[:10] = 1  # 10 pixels of class 1 in image 0: every 4th kept at most 3
    masks[1, 3, 4] = 2
    where = foreground_locations(masks, 3, max_per_class=3)
    assert where.count.tolist() == [[0, 3, 0], [0, 0, 1]]
    first = where.start[0, 1]
    assert where.pixels[first:first + 3].tolist() == [0, 4, 8]
    assert where.pixels[where.start[1, 2]].item() == 3 * 5 + 4


def test_without_a_patch_size_the_samples_are_the_whole_images():
    images, masks = ramp_images(4, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long)
    split = Split(images, masks)
    data = SegData(train=split, val=split, test=split, class_names=["background", "a"])
    samples = run_samples(Config(), data, torch.device("cpu"))  # train.patch_size: None
    assert isinstance(samples, WholeImages)
    x, _ = samples(torch.tensor([2, 0]), torch.Generator())
    assert torch.equal(x, images[[2, 0]])


def tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("unet", {"depth": 2, "base": 4}, 1, 3).eval()


@torch.inference_mode()
def test_a_patch_covering_the_image_predicts_as_one_plain_forward():
    model, images = tiny_unet(), torch.randn(3, 1, 16, 16)
    assert torch.equal(image_logits(model, images, patch_size=(16, 16), batch_size=4),
                       image_logits(model, images, patch_size=None, batch_size=4))
    # an image smaller than the patch is padded with 0 to it: a pointwise network gives the same pixels
    pointwise = nn.Conv2d(1, 2, 1).eval()
    small = torch.randn(2, 1, 10, 13)
    assert torch.allclose(window_logits(pointwise, small, (16, 16), batch_size=4), pointwise(small))


class WindowMean(nn.Module):
    """Each window's mean value everywhere in it: the blend of windows is then known by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True).expand_as(x).clone()


@torch.inference_mode()
def test_windows_are_blended_with_gaussian_weights():
    # a 8 x 12 image whose pixels hold their column: windows 8 x 8 at 0.5 overlap start at columns
    # 0 and 4, means 3.5 and 7.5. Columns 0-3 see one window, 8-11 the other; in 4-7 each window
    # weighs exp(-d^2 / 2) at distance d from its centre (sigma = 0.125 x 8), so the blend leans to
    # the window whose centre is nearer (equal weights would give 5.5 throughout). Rows 3 and 4
    # lie next to the centre, where no weight is raised to the map's floor
    image = torch.arange(12.0).expand(1, 1, 8, 12).contiguous()
    out = window_logits(WindowMean(), image, (8, 8), batch_size=2)[0, 0]
    assert torch.allclose(out[:, :4], torch.tensor(3.5)) and torch.allclose(out[:, 8:], torch.tensor(7.5))
    weight = lambda c: torch.exp(-(torch.tensor(c) - 3.5) ** 2 / 2)  # noqa: E731
    expected = torch.stack([(weight(c) * 3.5 + weight(c - 4.0) * 7.5) / (weight(c) + weight(c - 4.0))
                            for c in (4.0, 5.0, 6.0, 7.0)])
    assert torch.allclose(out[3:5, 4:8], expected.expand(2, 4), atol=1e-3)
    assert torch.allclose(out[:, 4:8] + out[:, 4:8].flip(1), torch.tensor(11.0))  # symmetric in every row


@torch.inference_mode()
def test_a_split_evaluated_by_windows_scores_whole_images_at_their_size():
    # an identity network (logits = the one-hot labels) scores Dice 1 by windows on 24 x 40 images
    masks = torch.randint(0, 3, (4, 24, 40))
    images = nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 10
    result = evaluate_split(nn.Identity(), Split(images, masks), ["bg", "a", "b"], loss_fn=nn.CrossEntropyLoss(),
                            batch_size=4, patch_size=(16, 16))
    assert result["dice_mean"] == pytest.approx(1.0) and result["loss"] < 1e-3
