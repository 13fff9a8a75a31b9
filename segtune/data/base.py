"""The in-memory dataset every source produces, and its preprocessing.

Every source returns a :class:`SegData`: three splits of float32 images ``(N, C, H, W)`` and
int64 label maps ``(N, H, W)``, held in memory as tensors so that no epoch re-reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from segtune.errors import DataError
from segtune.registry import Registry

SOURCES = Registry("data source")


@dataclass(frozen=True)
class Split:
    """Images ``(N, C, H, W)`` float32 and label maps ``(N, H, W)`` int64 of one split."""

    images: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.masks.ndim != 3:
            raise DataError(f"expected images NCHW and masks NHW, got {tuple(self.images.shape)} "
                            f"and {tuple(self.masks.shape)}")
        if self.images.shape[0] != self.masks.shape[0] or self.images.shape[2:] != self.masks.shape[1:]:
            raise DataError(f"images {tuple(self.images.shape)} and masks {tuple(self.masks.shape)} differ")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.masks[index])


@dataclass(frozen=True)
class SegData:
    """A dataset ready to train on: train / val / test splits and the class names."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


def normalize_images(images: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise each image on its own: ``zscore`` (mean 0, std 1), ``minmax`` ([0, 1]) or ``none``.

    Args:
        images: ``(N, C, H, W)`` float tensor.
    """
    if how == "none":
        return images
    dims = (1, 2, 3)
    if how == "zscore":
        mean = images.mean(dims, keepdim=True)
        std = images.std(dims, keepdim=True)
        return (images - mean) / std.clamp_min(1e-6)
    if how == "minmax":
        lo = images.amin(dims, keepdim=True)
        hi = images.amax(dims, keepdim=True)
        return (images - lo) / (hi - lo).clamp_min(1e-6)
    raise ValueError(f"unknown normalisation {how!r}")


def resize_split(split: Split, size: tuple[int, int]) -> Split:
    """Resize images bilinearly and masks with nearest neighbour to ``size`` (H, W)."""
    if tuple(split.images.shape[2:]) == tuple(size):
        return split
    images = F.interpolate(split.images, size=size, mode="bilinear", align_corners=False)
    masks = F.interpolate(split.masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return Split(images, masks)


def prepare(data: SegData, *, train_fraction: float, resize: tuple[int, int] | None,
            normalize: str, seed: int) -> SegData:
    """Apply the source-independent steps: resize, per-image normalisation, train fraction.

    The train fraction is drawn with ``seed`` from the training split, so the same seed gives
    the same subset and a smaller fraction is a subset of a larger one.
    """
    splits = {}
    for name in ("train", "val", "test"):
        split = data.split(name)
        if resize is not None:
            split = resize_split(split, resize)
        splits[name] = Split(normalize_images(split.images.float(), normalize), split.masks.long())
    if train_fraction < 1.0:
        n = len(splits["train"])
        keep = max(1, round(n * train_fraction))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        splits["train"] = splits["train"].subset(order[:keep].sort().values)
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"the {name} split is empty; use more data or smaller validation/test shares")
    return replace(data, **splits)
