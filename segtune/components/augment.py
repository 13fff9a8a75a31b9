"""Batched data augmentation on tensors, registered by name.

An augmentation is built with no context and called on a whole batch::

    images, masks = aug(images, masks, generator)   # (B, C, H, W) float, (B, H, W) int64

Random draws come from ``generator`` (a CPU generator, also for data on a GPU) only, so a seed
reproduces them. Masks are resampled with nearest neighbour, so labels stay labels; pixels moved
in from outside the image are 0 in the image and background in the mask. Validation and test data
are never augmented. With ``augment.n_aug = n`` an epoch holds every training image once plus
``n`` augmented copies ((1 + n) x the data); with ``n_aug = 0`` every image is augmented on the fly.
"""

from __future__ import annotations

import math
from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from pydantic import Field

from segtune.registry import Registry

__all__ = ["AUGMENTATIONS", "Augmentation", "combine", "flip", "none", "random_affine", "random_flip"]

AUGMENTATIONS = Registry("augmentation")

Augmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def random_flip(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, *,
                horizontal: bool, vertical: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each image (and its mask) left-right and/or up-down with probability 0.5."""
    for enabled, dim in ((horizontal, -1), (vertical, -2)):
        if not enabled:
            continue
        flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
        if flip.any():
            images = torch.where(flip[:, None, None, None], images.flip(dim), images)
            masks = torch.where(flip[:, None, None], masks.flip(dim), masks)
    return images, masks


def random_affine(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, *,
                  degrees: float, translate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by up to ``degrees`` and shift it by up to ``translate`` of its size."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2  # grid coords span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0].round().long()
    return images, masks


@AUGMENTATIONS.register("none")
def none() -> None:
    """No augmentation."""
    return None


@AUGMENTATIONS.register("flip")
def flip(*, horizontal: bool = True, vertical: bool = False) -> Augmentation:
    """Random horizontal and/or vertical flips, each with probability 0.5."""
    return lambda x, y, g: random_flip(x, y, g, horizontal=horizontal, vertical=vertical)


@AUGMENTATIONS.register("combine")
def combine(*, degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 20.0,
            translate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1,
            horizontal: bool = True, vertical: bool = False) -> Augmentation:
    """Small random rotation and translation, then random flips (the 'combine' of the reports)."""

    def apply(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = random_affine(x, y, g, degrees=degrees, translate=translate)
        return random_flip(x, y, g, horizontal=horizontal, vertical=vertical)

    return apply
