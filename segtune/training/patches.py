"""Patch training and sliding-window prediction: the training samples of a run and its whole-image logits.

With ``train.patch_size`` set, each training sample is a random crop of that size from its
(in-memory, whole) image, and every evaluation predicts whole images by sliding windows; with
it unset, samples are the whole images and an evaluation is one forward pass.

**Crops** (:class:`PatchSampler`), after nnU-Net's data loader (Isensee et al. 2021):

- An image smaller than the patch on a side is padded to the patch there, half before and half
  after (as MONAI's ``sliding_window_inference`` pads at prediction), the image with 0 and the
  mask with background. 0 because the images are already normalised: it is the mean of a
  z-scored image, what nnU-Net pads with, what the sliding windows pad with at prediction (so
  a border looks the same in training and test) and what the augmentations fill moved-in pixels
  with. The image's minimum would differ per image and from the prediction's padding.
- In each batch of ``B`` samples the last ``B - round(B * (1 - foreground_oversample))`` are
  *foreground crops* (nnU-Net's rule: 5 of 16 at 0.33, 1 of 2): centred (clipped to the image) on
  a random pixel of a random foreground class present in that image, so a structure of 0.1 % of
  the pixels is in about a third of the crops instead of almost none. Per batch, not a coin per
  sample: every batch then holds foreground (at a share above 0 and ``B >= 2``), and which
  images get the forced crops is random anyway, since the epoch's order is shuffled. An image
  without foreground gets a uniform crop.
- The other crops are placed uniformly over the (padded) image.
- The foreground pixels of each class in each image are listed once per run
  (:func:`foreground_locations`), at most :data:`MAX_LOCATIONS` per image and class (evenly
  spaced in raster order beyond that: a 512 x 512 class of half the image keeps every 66th).
- Positions are drawn from the run's generator on the CPU (a few numbers per sample), so a
  seed gives the same crops and a resumed run the same epochs; the crops themselves are
  gathered on the device in one indexing operation. Augmentation applies to the crops.

**Sliding windows** (:func:`window_logits`): MONAI's ``sliding_window_inference`` with
``roi_size=patch_size``, ``overlap=0.5`` and ``mode="gaussian"`` (nnU-Net's choice: a window's
border pixels, which saw the least context, weigh least). An image no larger than the patch is
padded to it and predicted by one plain forward pass. The logits come back at the image's own
size, so Dice and the loss are computed on whole images at their resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from segtune.components.transfer import to_device

__all__ = ["MAX_LOCATIONS", "WINDOW_OVERLAP", "ForegroundLocations", "PatchSampler", "TrainingSamples", "WholeImages",
           "foreground_locations", "oversampled", "pad_to", "window_logits"]

MAX_LOCATIONS = 2000  # foreground pixels listed per image and class (nnU-Net: 10,000 per 3D case)
WINDOW_OVERLAP = 0.5  # of adjacent sliding windows, per side (MONAI's default is 0.25; nnU-Net's step 0.5)


class TrainingSamples(Protocol):
    """The training samples of a run: ``samples(index, generator) -> (images, masks)`` on the device,
    ``(B, C, h, w)`` float and ``(B, h, w)`` int64, for the images ``index`` ``(B,)`` of the split."""

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


def pad_to(images: torch.Tensor, size: tuple[int, int], value: float = 0.0) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """``images`` ``(..., H, W)`` padded with ``value`` to at least ``size``, half before and half after
    (the odd pixel after, as MONAI pads), and the ``(rows, cols)`` slices that cut the original back out.

    Example:
        >>> padded, (rows, cols) = pad_to(torch.ones(1, 1, 3, 8), (6, 6))
        >>> tuple(padded.shape), rows, cols
        ((1, 1, 6, 8), slice(1, 4, None), slice(0, 8, None))
    """
    h, w = images.shape[-2:]
    dh, dw = max(size[0] - h, 0), max(size[1] - w, 0)
    top, left = dh // 2, dw // 2
    if dh or dw:
        images = F.pad(images, (left, dw - left, top, dh - top), value=value)
    return images, (slice(top, top + h), slice(left, left + w))


@dataclass(frozen=True)
class ForegroundLocations:
    """Where each foreground class lies in each image: flat pixel indices ``row * W + col``.

    The pixels of class ``c`` in image ``i`` are ``pixels[start[i, c]:start[i, c] + count[i, c]]``
    (class 0, background, is not listed: its count is 0).
    """

    pixels: torch.Tensor  # (M,) int64, on the CPU
    start: torch.Tensor  # (N, K) int64
    count: torch.Tensor  # (N, K) int64


def foreground_locations(masks: torch.Tensor, n_classes: int, *, max_per_class: int = MAX_LOCATIONS
                         ) -> ForegroundLocations:
    """List the pixels of each foreground class in each mask, at most ``max_per_class`` of each.

    Args:
        masks: ``(N, H, W)`` integer labels ``0..n_classes-1``.
        n_classes: the number of labels, background included.
        max_per_class: beyond this many pixels of a class in an image, every ``k``-th in raster
            order is kept (``k = ceil(count / max_per_class)``): evenly spread, no random draw.

    Returns:
        A :class:`ForegroundLocations` on the CPU.

    Example:
        >>> where = foreground_locations(torch.tensor([[[0, 2], [1, 2]]]), 3)
        >>> where.count.tolist(), where.pixels.tolist()
        ([[0, 1, 2]], [2, 1, 3])
    """
    flat = masks.reshape(masks.shape[0], -1).cpu()
    n = flat.shape[0]
    count = torch.zeros(n, n_classes, dtype=torch.long)
    start = torch.zeros(n, n_classes, dtype=torch.long)
    pieces, offset = [], 0
    for label in range(1, n_classes):
        image, pixel = (flat == label).nonzero(as_tuple=True)  # sorted by image, then pixel
        per_image = torch.bincount(image, minlength=n)
        first = torch.cumsum(per_image, 0) - per_image
        stride = (per_image + max_per_class - 1) // max_per_class
        rank = torch.arange(len(image)) - first[image]
        keep = rank % stride.clamp_min(1)[image] == 0
        image, pixel = image[keep], pixel[keep]
        count[:, label] = torch.bincount(image, minlength=n)
        start[:, label] = offset + torch.cumsum(count[:, label], 0) - count[:, label]
        pieces.append(pixel)
        offset += len(pixel)
    pixels = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    return ForegroundLocations(pixels=pixels, start=start, count=count)


def oversampled(batch_size: int, share: float) -> torch.Tensor:
    """Which samples of a batch are foreground crops: the last ``B - round(B * (1 - share))`` (nnU-Net).

    Example:
        >>> oversampled(6, 0.33).tolist()
        [False, False, False, False, True, True]
    """
    return torch.arange(batch_size) >= round(batch_size * (1 - share))


class WholeImages:
    """The training samples of a run without ``train.patch_size``: the whole images, on the device."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> None:
        self.images, self.masks = images.to(device), masks.to(device)

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = to_device(index, self.images.device)
        return self.images[index], self.masks[index]


class PatchSampler:
    """Random crops of ``patch_size`` from whole images, a share of them centred on foreground.

    Args:
        images: ``(N, C, H, W)`` normalised training images (moved to ``device`` once).
        masks: ``(N, H, W)`` their labels.
        patch_size: ``(h, w)`` of each crop; sides of the images smaller than it are padded.
        foreground_oversample: the share of each batch that are foreground crops (:func:`oversampled`).
        n_classes: the number of labels, background included.
        device: where the images live and the crops are gathered.

    Example:
        >>> sampler = PatchSampler(torch.zeros(4, 1, 32, 48), torch.zeros(4, 32, 48, dtype=torch.long),
        ...                        patch_size=(16, 16), foreground_oversample=0.33, n_classes=2)
        >>> x, y = sampler(torch.tensor([0, 3]), torch.Generator().manual_seed(0))
        >>> tuple(x.shape), tuple(y.shape)
        ((2, 1, 16, 16), (2, 16, 16))
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, *, patch_size: tuple[int, int],
                 foreground_oversample: float, n_classes: int, device: torch.device = torch.device("cpu")) -> None:
        self.patch_size = tuple(patch_size)
        self.share = foreground_oversample
        self.images, _ = pad_to(images.to(device), self.patch_size)
        self.masks, _ = pad_to(masks.to(device), self.patch_size)
        self.locations = foreground_locations(self.masks, n_classes)

    def corners(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The top-left corners ``(B, 2)`` (row, col) of the crops of images ``index``, in the padded images."""
        (h, w), (ph, pw) = self.images.shape[-2:], self.patch_size
        n = len(index)
        corner = torch.stack([torch.randint(0, h - ph + 1, (n,), generator=generator),
                              torch.randint(0, w - pw + 1, (n,), generator=generator)], 1)
        count = self.locations.count[index, 1:]  # the same draws whatever is forced: reproducible
        if count.shape[1] == 0:  # background only: no class to centre on
            return corner
        pick = torch.rand(n, count.shape[1], generator=generator).masked_fill(count == 0, -1.0)
        label = pick.argmax(1, keepdim=True) + 1  # a random class among those present
        nth = (torch.rand(n, generator=generator) * count.gather(1, label - 1)[:, 0]).long()
        forced = oversampled(n, self.share) & (count > 0).any(1)
        if forced.any():
            at = self.locations.start[index].gather(1, label)[:, 0] + nth
            pixel = self.locations.pixels[at[forced]]
            centre = torch.stack([pixel // w - ph // 2, pixel % w - pw // 2], 1)
            corner[forced] = torch.minimum(centre.clamp_min(0), torch.tensor([h - ph, w - pw]))
        return corner

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops ``(B, C, h, w)`` and their masks ``(B, h, w)`` of images ``index`` ``(B,)``, on the device."""
        index = index.cpu()
        corner = to_device(self.corners(index, generator), self.images.device)
        ph, pw = self.patch_size
        rows = (corner[:, :1] + torch.arange(ph, device=corner.device))[:, :, None]  # (B, ph, 1)
        cols = (corner[:, 1:] + torch.arange(pw, device=corner.device))[:, None, :]  # (B, 1, pw)
        image = to_device(index, self.images.device)[:, None, None]
        x = self.images[image, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: (B, ph, pw, C)
        return x.contiguous(), self.masks[image, rows, cols]


def window_logits(predictor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                  patch_size: tuple[int, int], *, batch_size: int) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` of whole images ``(B, C, H, W)`` from windows of ``patch_size``.

    Args:
        predictor: a network's forward, ``(b, C, h, w) -> (b, K, h, w)`` float32 logits.
        images: whole images, on the predictor's device.
        patch_size: ``(h, w)`` of the windows (the training crops').
        batch_size: windows per forward pass.

    Returns:
        MONAI's ``sliding_window_inference(overlap=0.5, mode="gaussian")`` of the images; an image
        no larger than the patch: one forward pass of it padded to the patch, cropped back.
    """
    h, w = images.shape[-2:]
    if h <= patch_size[0] and w <= patch_size[1]:
        padded, (rows, cols) = pad_to(images, patch_size)
        return predictor(padded)[..., rows, cols]
    # imported here: monai.inferers imports matplotlib.pyplot (through monai.utils.jupyter_utils),
    # which a run that never slides a window, and a report's caller, should not pay for
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(images, roi_size=tuple(patch_size), sw_batch_size=batch_size,
                                    predictor=predictor, overlap=WINDOW_OVERLAP, mode="gaussian")
