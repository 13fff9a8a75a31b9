"""Batched data augmentation on tensors, registered by name.

An augmentation is built with no context and called on a whole batch::

    images, masks = aug(images, masks, generator)   # (B, C, H, W) float, (B, H, W) int64

Random draws come from ``generator`` (a CPU generator, also for data on a GPU) only, so a seed
reproduces them. Masks are resampled with nearest neighbour, so labels stay labels; pixels moved
in from outside the image are 0 in the image and background in the mask. Validation and test data
are never augmented. With ``augment.n_aug = n`` an epoch holds every training image once plus
``n`` augmented copies ((1 + n) x the data); with ``n_aug = 0`` every image is augmented on the fly.

``flip`` and ``combine`` take ``intensity``, the strength of nnU-Net's intensity augmentation
(its ``get_training_transforms``), applied to the images after the spatial ones: Gaussian noise,
Gaussian blur, multiplicative brightness, contrast, and gamma (inverted and plain). ``intensity``
multiplies each transform's probability (1: nnU-Net's, 0.1 to 0.3; capped at 1), its ranges stay
nnU-Net's; 0 (the default) leaves the images as they are.
"""

from __future__ import annotations

import math
from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from pydantic import Field

from segtune.components.transfer import to_device
from segtune.registry import Registry

__all__ = ["AUGMENTATIONS", "INTENSITY", "Augmentation", "combine", "flip", "none", "random_affine", "random_flip",
           "random_intensity"]

AUGMENTATIONS = Registry("augmentation")

Augmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

# nnU-Net's intensity transforms at strength 1: probability per image and range of the random factor
# (nnunetv2 nnUNetTrainer.get_training_transforms; factors of (low, high) around 1 are drawn below 1
# or above it with probability 0.5 each, as its BGContrast). Noise: a variance, its std the root.
INTENSITY = {"noise": (0.1, (0.0, 0.1)), "blur": (0.2, (0.5, 1.0)), "brightness": (0.15, (0.75, 1.25)),
             "contrast": (0.15, (0.75, 1.25)), "gamma_inverted": (0.1, (0.7, 1.5)), "gamma": (0.3, (0.7, 1.5))}
EPS = 1e-7

Intensity = Annotated[float, Field(ge=0.0, le=6.0, description="strength of nnU-Net's intensity augmentation: a "
                                                               "factor on its probabilities, 0 off, 1 nnU-Net's")]


def random_flip(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, *,
                horizontal: bool, vertical: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each image (and its mask) left-right and/or up-down with probability 0.5."""
    for enabled, dim in ((horizontal, -1), (vertical, -2)):
        if not enabled:
            continue
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        if flip.any():  # asked on the host, where it was drawn: no wait for the device
            flip = to_device(flip, images.device)
            images = torch.where(flip[:, None, None, None], images.flip(dim), images)
            masks = torch.where(flip[:, None, None], masks.flip(dim), masks)
    return images, masks


def random_affine(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, *,
                  degrees: float, translate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by up to ``degrees`` about its centre, in pixel space (a disc stays a disc on a
    non-square image), and shift it by up to ``translate`` of its size."""
    n, (h, w) = images.shape[0], images.shape[-2:]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2  # grid coords span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid's coordinates span [-1, 1] on both axes, so x is in units of w / 2 and y of h / 2: a
    # rotation of pixels is S^-1 R S there, S = diag(w, h) / 2 (a plain R shears non-square images)
    theta = torch.stack([torch.stack([cos, -sin * h / w, shift[:, 0]], 1),
                         torch.stack([sin * w / h, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(to_device(theta, images.device, images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0].round().long()
    return images, masks


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _around_one(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Factors in ``(low, high)``: below 1 or above it with probability 0.5 each (nnU-Net's BGContrast)."""
    below = torch.rand(shape, generator=generator) < 0.5
    return torch.where(below, _uniform(shape, low, min(high, 1.0), generator),
                       _uniform(shape, max(low, 1.0), high, generator))


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by a separable Gaussian of its own ``sigma`` (``(B,)``, on the host; radius 3 sigma,
    borders repeated). The kernels are made on the host, so their size is known without asking the device."""
    b, c, h, w = images.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    kernel = to_device(kernel, images.device, images.dtype)
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def _gamma(images: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    """nnU-Net's gamma: each channel mapped onto [0, 1] by its range, raised to ``gamma`` (``(B, C)``),
    mapped back, then given its former mean and std again; ``invert`` does this to the negated image."""
    x = -images if invert else images
    low, high = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    mean, std = x.mean((-2, -1), keepdim=True), x.std((-2, -1), keepdim=True)
    span = high - low + EPS
    x = ((x - low) / span).clamp(0, 1) ** gamma[..., None, None] * span + low
    x = (x - x.mean((-2, -1), keepdim=True)) / (x.std((-2, -1), keepdim=True) + EPS) * std + mean
    return -x if invert else x


def random_intensity(images: torch.Tensor, generator: torch.Generator, *, strength: float) -> torch.Tensor:
    """nnU-Net's intensity augmentation of each image, in its order (:data:`INTENSITY`): each transform
    applied with its probability times ``strength`` (at most 1); factors drawn per image, and for
    brightness, contrast and gamma per channel. Contrast keeps each channel's range (nnU-Net's
    ``preserve_range``), gamma its mean and std. The same number of draws whatever happens, so a seed
    reproduces the whole stream."""
    b, c = images.shape[:2]
    per_channel = (b, c)
    device = images.device

    def chosen(name: str) -> torch.Tensor:  # on the CPU, where the draws are: asking it costs no device sync
        p = min(1.0, INTENSITY[name][0] * strength)
        return torch.rand(b, generator=generator) < p

    def on(mask: torch.Tensor) -> torch.Tensor:
        return to_device(mask, device)[:, None, None, None]

    def draws(name: str, shape: tuple[int, ...], around_one: bool = True) -> torch.Tensor:  # on the host
        low, high = INTENSITY[name][1]
        return _around_one(shape, low, high, generator) if around_one else _uniform(shape, low, high, generator)

    def at(values: torch.Tensor) -> torch.Tensor:
        return to_device(values, device, images.dtype)

    # every transform draws its choice and values on the host whatever happens (the stream stays the same);
    # only a transform some image takes moves them to the device and computes
    mask, var = chosen("noise"), draws("noise", (b,), around_one=False)
    noise_seed = int(torch.randint(2**62, (1,), generator=generator))  # the noise is drawn where the images are
    if mask.any():
        noise = torch.randn(images.shape, generator=torch.Generator(device).manual_seed(noise_seed), device=device,
                            dtype=images.dtype)
        images = torch.where(on(mask), images + noise * at(var.sqrt())[:, None, None, None], images)
    mask, sigma = chosen("blur"), draws("blur", (b,), around_one=False)
    if mask.any():
        images = torch.where(on(mask), _blur(images, sigma), images)
    mask, factor = chosen("brightness"), draws("brightness", per_channel)
    if mask.any():
        images = torch.where(on(mask), images * at(factor)[..., None, None], images)
    mask, factor = chosen("contrast"), draws("contrast", per_channel)
    if mask.any():
        mean = images.mean((-2, -1), keepdim=True)
        low, high = images.amin((-2, -1), keepdim=True), images.amax((-2, -1), keepdim=True)
        contrasted = torch.minimum(torch.maximum((images - mean) * at(factor)[..., None, None] + mean, low), high)
        images = torch.where(on(mask), contrasted, images)
    for name in ("gamma_inverted", "gamma"):
        mask, gamma = chosen(name), draws(name, per_channel)
        if mask.any():
            images = torch.where(on(mask), _gamma(images, at(gamma), invert=name == "gamma_inverted"), images)
    return images


def _with_intensity(spatial: Augmentation, strength: float) -> Augmentation:
    if strength == 0:
        return spatial

    def apply(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = spatial(x, y, g)
        return random_intensity(x, g, strength=strength), y

    return apply


@AUGMENTATIONS.register("none")
def none() -> None:
    """No augmentation."""
    return None


@AUGMENTATIONS.register("flip")
def flip(*, horizontal: bool = True, vertical: bool = False, intensity: Intensity = 0.0) -> Augmentation:
    """Random horizontal and/or vertical flips, each with probability 0.5, then nnU-Net's intensity
    augmentation at strength ``intensity`` (0: none)."""
    return _with_intensity(lambda x, y, g: random_flip(x, y, g, horizontal=horizontal, vertical=vertical), intensity)


@AUGMENTATIONS.register("combine")
def combine(*, degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 20.0,
            translate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1,
            horizontal: bool = True, vertical: bool = False, intensity: Intensity = 0.0) -> Augmentation:
    """Small random rotation and translation, then random flips (the 'combine' of the reports), then
    nnU-Net's intensity augmentation at strength ``intensity`` (0: none)."""

    def apply(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = random_affine(x, y, g, degrees=degrees, translate=translate)
        return random_flip(x, y, g, horizontal=horizontal, vertical=vertical)

    return _with_intensity(apply, intensity)
