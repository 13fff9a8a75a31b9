"""The in-memory dataset every source produces, and its preprocessing.

Every source returns a :class:`SegData`: three splits of float32 images ``(N, C, H, W)`` and
int64 label maps ``(N, H, W)``, held in memory as tensors so that no epoch re-reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from segtune.errors import ConfigError, DataError
from segtune.registry import Registry

__all__ = [
    "COLOR_CHANNELS", "DATASET_NORMALIZE", "LUMA", "SOURCES", "CaseSpan", "ImageSize", "SegData", "Split", "Stats",
    "convert_channels", "dataset_stats", "drop_empty_slices", "foreground_stats",
    "merge_rare_classes", "normalize_images", "own_pixels", "prepare", "remap_labels", "resize_split",
]

# An image size (H, W) to resize to on reading; 8 pixels is the least any network here can take.
ImageSize = tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]]

SOURCES = Registry("data source")


@dataclass(frozen=True)
class CaseSpan:
    """One case of a split: its id, how many consecutive images (slices) it has, and their spacing.

    ``spacing`` is in mm, ``(between slices, rows, columns)``; a 2D image case has ``n == 1``.
    """

    case_id: str
    n: int
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Split:
    """Images ``(N, C, H, W)`` float32 and label maps ``(N, H, W)`` int64 of one split.

    ``cases`` (set by :func:`prepare` for val and test, and for train while it is whole) says which
    consecutive images make up each case, so that evaluations can score every case on its own.
    """

    images: torch.Tensor
    masks: torch.Tensor
    cases: tuple[CaseSpan, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.masks.ndim != 3:
            raise DataError(f"expected images NCHW and masks NHW, got {tuple(self.images.shape)} "
                            f"and {tuple(self.masks.shape)}")
        if self.images.shape[0] != self.masks.shape[0] or self.images.shape[2:] != self.masks.shape[1:]:
            raise DataError(f"images {tuple(self.images.shape)} and masks {tuple(self.masks.shape)} differ")
        if self.cases is not None and sum(c.n for c in self.cases) != self.images.shape[0]:
            raise DataError(f"the cases of a split count {sum(c.n for c in self.cases)} images, but it has "
                            f"{self.images.shape[0]}")

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


Stats = dict[str, list[float]]  # {"mean": [per channel], "std": [per channel], ...}
# The normalisations with training-set statistics, and the statistics each needs.
DATASET_NORMALIZE = {"zscore_dataset": ("mean", "std"), "ct": ("mean", "std", "lower", "upper")}
COLOR_CHANNELS = {"grey": 1, "rgb": 3}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for RGB to grey


def normalize_images(images: torch.Tensor, how: str, stats: Stats | None = None,
                     own: torch.Tensor | None = None) -> torch.Tensor:
    """Normalise images: per image (``zscore``, ``minmax``), with training-set statistics or not at all.

    Args:
        images: ``(N, C, H, W)`` float tensor.
        how: ``zscore`` (each image to mean 0, std 1), ``zscore_dataset`` (each channel with the
            training set's mean and std from ``stats``), ``ct`` (each channel clipped to
            ``stats["lower"]`` / ``stats["upper"]``, then z-scored with ``stats["mean"]`` / ``["std"]``:
            nnU-Net's CT scheme, statistics of the training foreground from :func:`foreground_stats`),
            ``minmax`` (each image to [0, 1]), ``histogram`` (each channel of each image through its own
            empirical CDF to (0, 1]: histogram equalisation, whatever the scanner's scale) or ``none``.
        stats: for ``zscore_dataset`` and ``ct``: one value per channel of each of their keys.
        own: ``(N, 1, H, W)`` bool, True on each image's own pixels (:func:`own_pixels`): the per-image
            normalisations take their statistics from these alone and apply them to every pixel, so
            that padding around a case does not change the values of its own pixels (the padding
            becomes the normalised pad value); None: every pixel is the image's own.

    Raises:
        DataError: ``zscore_dataset`` or ``ct`` without ``stats``.

    Example:
        >>> normalize_images(torch.tensor([[[[-2000.0, 40.0]]]]), "ct",
        ...                  {"lower": [-100.0], "upper": [200.0], "mean": [50.0], "std": [50.0]})
        tensor([[[[-3.0000, -0.2000]]]])
    """
    if how == "none":
        return images
    dims = (1, 2, 3)
    if how == "zscore":
        if own is None:
            mean, std = images.mean(dims, keepdim=True), images.std(dims, keepdim=True)
        else:
            weight = own.expand_as(images).to(images.dtype)
            n = weight.sum(dims, keepdim=True)
            mean = (images * weight).sum(dims, keepdim=True) / n
            std = ((images - mean).square() * weight).sum(dims, keepdim=True).div((n - 1).clamp_min(1)).sqrt()
        return (images - mean) / std.clamp_min(1e-6)
    if how in DATASET_NORMALIZE:
        if stats is None or not set(DATASET_NORMALIZE[how]) <= set(stats):
            raise DataError(f"data.normalize={how} needs the training set's {', '.join(DATASET_NORMALIZE[how])} "
                            f"(SegData.info['normalize_stats'] of data prepared with data.normalize={how})")
        per_channel = {k: torch.tensor(v, dtype=images.dtype, device=images.device)[None, :, None, None]
                       for k, v in stats.items()}
        if how == "ct":
            images = torch.maximum(torch.minimum(images, per_channel["upper"]), per_channel["lower"])
        return (images - per_channel["mean"]) / per_channel["std"].clamp_min(1e-6)
    if how == "minmax":
        padding = None if own is None else ~own.expand_as(images)
        lo = (images if padding is None else images.masked_fill(padding, torch.inf)).amin(dims, keepdim=True)
        hi = (images if padding is None else images.masked_fill(padding, -torch.inf)).amax(dims, keepdim=True)
        return (images - lo) / (hi - lo).clamp_min(1e-6)
    if how == "histogram":
        return equalize_histogram(images, own)
    raise ValueError(f"unknown normalisation {how!r}")


def equalize_histogram(images: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
    """Each channel of each image ``(N, C, H, W)`` mapped through its own empirical CDF.

    A value becomes the share of the channel's pixels at or below it, so equal values stay equal and
    the output is spread evenly over (0, 1]. With ``own`` (``(N, 1, H, W)`` bool, as in
    :func:`normalize_images`) the CDF is of the image's own pixels alone.

    Example:
        >>> equalize_histogram(torch.tensor([[[[5.0, 1.0], [5.0, 9.0]]]]))
        tensor([[[[0.7500, 0.2500],
                  [0.7500, 1.0000]]]])
    """
    flat = images.reshape(images.shape[0] * images.shape[1], -1)
    if own is None:
        ordered, count = flat.sort(dim=1).values, flat.shape[1]
    else:  # the padding sorted last, past every value: no value counts it
        mine = own.expand_as(images).reshape(flat.shape)
        ordered, count = flat.masked_fill(~mine, torch.inf).sort(dim=1).values, mine.sum(1, keepdim=True)
    below = torch.searchsorted(ordered.contiguous(), flat.contiguous(), right=True)
    return (below.to(images.dtype) / count).reshape(images.shape)


def own_pixels(data: SegData, name: str) -> torch.Tensor | None:
    """``(N, 1, H, W)`` bool of split ``name``: True on the pixels of each image that are its case's own,
    False on the padding a source put around a case to bring it onto a common canvas (the ``box``
    of each case in ``info["native"]``, from the ``nifti`` source with ``spacing``); None where
    every pixel is an image's own. ``info["cases"]`` must list the split's images (a whole split).

    Raises:
        DataError: ``info["cases"]`` does not count the split's images.
    """
    native, split = data.info.get("native"), data.split(name)
    if not native or tuple(split.images.shape[2:]) != tuple(native["canvas"]):
        return None
    own, start = torch.zeros(len(split), 1, *split.images.shape[2:], dtype=torch.bool), 0
    for case_id, n in data.info["cases"][name]:
        top, left, h, w = native["cases"][str(case_id)]["box"]
        own[start:start + n, :, top:top + h, left:left + w] = True
        start += n
    if start != len(split):
        raise DataError(f"the cases of the {name} split count {start} images, but it has {len(split)}; "
                        f"its padding cannot be told from its cases' own pixels")
    return None if bool(own.all()) else own


def dataset_stats(images: torch.Tensor) -> Stats:
    """Mean and std of each channel over all images ``(N, C, H, W)`` (for ``zscore_dataset``)."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return {"mean": flat.mean(1).tolist(), "std": flat.std(1).tolist()}


def foreground_stats(split: Split) -> Stats:
    """Per channel, over the foreground pixels (label > 0) of ``split``: mean, std and the 0.5 / 99.5
    percentiles as ``lower`` / ``upper`` (for ``ct``; nnU-Net's CT statistics: the mean and std are
    of the unclipped values).

    Raises:
        DataError: the split has no foreground pixel.
    """
    foreground = split.masks > 0
    if not bool(foreground.any()):
        raise DataError("data.normalize=ct takes its statistics from the training split's foreground, but no "
                        "training mask has a label > 0; use data.normalize=zscore")
    stats: Stats = {"mean": [], "std": [], "lower": [], "upper": []}
    for c in range(split.images.shape[1]):
        values = split.images[:, c][foreground].double().numpy()
        lower, upper = np.percentile(values, [0.5, 99.5])
        for key, value in zip(stats, (values.mean(), values.std(), lower, upper)):
            stats[key].append(float(value))
    return stats


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey to RGB (repeat) or RGB to grey (BT.601 luminance) for ``(N, C, H, W)`` images.

    Raises:
        DataError: a channel count other than 1 or 3 to convert from.
    """
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if have == 3 and channels == 1:
        return (images * torch.tensor(LUMA, dtype=images.dtype)[None, :, None, None]).sum(1, keepdim=True)
    raise DataError(f"data.color: cannot convert images with {have} channels to {channels}; "
                    f"use data.color=null to keep them")


def resize_split(split: Split, size: tuple[int, int]) -> Split:
    """Resize images bilinearly and masks with nearest neighbour to ``size`` (H, W)."""
    if tuple(split.images.shape[2:]) == tuple(size):
        return split
    images = F.interpolate(split.images, size=size, mode="bilinear", align_corners=False)
    masks = F.interpolate(split.masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return Split(images, masks)


def remap_labels(data: SegData, mapping: dict[int, int], field: str = "data.label_map") -> SegData:
    """Relabel every mask: label ``c`` becomes ``mapping.get(c, c)``; class names follow.

    The new labels must be ``0..K-1`` without gaps. A new class takes the names of the classes
    mapped onto it, joined by ``+``; class 0 stays ``background``.

    Raises:
        ConfigError: a label the data does not have, or new labels with a gap.
    """
    n = data.n_classes
    unknown = sorted(k for k in mapping if not 0 <= k < n)
    if unknown:
        raise ConfigError(f"{field} maps label {unknown[0]} but the data has labels 0..{n - 1} "
                          f"({', '.join(data.class_names)}); remove it")
    new = [mapping.get(c, c) for c in range(n)]
    k = max(new) + 1
    missing = sorted(set(range(k)) - set(new))
    if missing or min(new) < 0:
        raise ConfigError(f"{field} gives labels {sorted(set(new))}; the new labels must be 0..{k - 1} without "
                          f"gaps (nothing is mapped to {missing[0] if missing else min(new)}); renumber them")
    lut = torch.tensor(new, dtype=torch.long)
    names = ["background"] + ["+".join(data.class_names[c] for c in range(n) if new[c] == j) for j in range(1, k)]
    splits = {s: Split(data.split(s).images, lut[data.split(s).masks]) for s in ("train", "val", "test")}
    return replace(data, class_names=names, **splits)


def merge_rare_classes(data: SegData, min_fraction: float) -> SegData:
    """Merge the foreground classes covering less than ``min_fraction`` of the training pixels into background.

    Raises:
        DataError: every foreground class is rarer than that.
    """
    counts = torch.bincount(data.train.masks.flatten(), minlength=data.n_classes).double()
    share = counts / counts.sum()
    rare = [c for c in range(1, data.n_classes) if share[c] < min_fraction]
    if not rare:
        return data
    if len(rare) == data.n_classes - 1:
        raise DataError(f"data.min_class_fraction={min_fraction}: every foreground class is rarer than that "
                        f"(largest {float(share[1:].max()):.4f}); lower it")
    kept = [c for c in range(data.n_classes) if c not in rare]
    mapping = {c: 0 for c in rare} | {c: kept.index(c) for c in kept}
    merged = remap_labels(data, mapping, field="data.min_class_fraction")
    return replace(merged, info={**merged.info, "merged_classes": [data.class_names[c] for c in rare]})


def drop_empty_slices(split: Split, min_foreground: float) -> Split:
    """Keep the images whose mask has at least ``min_foreground`` of its pixels labelled > 0."""
    keep = (split.masks > 0).flatten(1).float().mean(1) >= min_foreground
    return split.subset(keep.nonzero()[:, 0])


OWN_AT_ONCE = 64  # images normalised on their own pixels together (a few temporaries of their size)


def _per_image(images: torch.Tensor, normalize: str, own: torch.Tensor | None) -> torch.Tensor:
    """A per-image normalisation of ``images``, on the pixels ``own`` marks (a few images at a time)."""
    if own is None:
        return normalize_images(images, normalize)
    return torch.cat([normalize_images(x, normalize, own=o) for x, o in zip(images.split(OWN_AT_ONCE),
                                                                            own.split(OWN_AT_ONCE))])


def _training_stats(train: Split, normalize: str) -> Stats:
    return dataset_stats(train.images) if normalize == "zscore_dataset" else foreground_stats(train)


def prepare(data: SegData, *, train_fraction: float, resize: tuple[int, int] | None, normalize: str, seed: int,
            color: str | None = None,
            label_map: dict[int, int] | None = None, min_class_fraction: float = 0.0,
            min_foreground_fraction: float = 0.0, normalize_stats: Stats | None = None,
            val_from: str = "fixed") -> SegData:
    """Apply the source-independent steps to every split, in this order.

    1. ``color``: ``grey`` (1 channel, BT.601 luminance) or ``rgb`` (3 channels, grey repeated);
       ``None`` keeps the source's channels.
    2. ``resize``: to ``(H, W)``, images bilinear, masks nearest.
    3. ``label_map``: relabel, e.g. ``{3: 1}``; see :func:`remap_labels`.
    4. ``min_class_fraction``: merge rarer foreground classes (by training pixels) into background.
    5. ``min_foreground_fraction``: drop training images whose foreground share is below it
       (near-empty slices, as DeepNAT / QuickNAT preprocessing does); val and test keep them.
    6. ``train_fraction``: keep this share of the training split, drawn with ``seed``; the same
       seed gives the same subset and a smaller fraction is a subset of a larger one. With
       ``val_from="rest"`` the training images left out become the val split (the fixed val
       split is not used); at a fraction of 1 nothing is left out and the fixed val split stays.
    7. ``normalize``: see :func:`normalize_images`; ``zscore_dataset`` uses the mean and std of
       the final training split, ``ct`` the statistics of its foreground (:func:`foreground_stats`),
       stored in ``info["normalize_stats"]``, or ``normalize_stats`` when given (a trained model
       evaluated on other data keeps its training set's statistics). The per-image ones
       (``zscore``, ``minmax``, ``histogram``) each image alone; a split whose cases are padded onto
       a common canvas (:func:`own_pixels`) right after step 2, while it is still whole (steps 3 to
       6 keep every pixel's value): each case is normalised on its own pixels alone, as ``predict``
       normalises it without padding, and its padding by the same transform.

    Raises:
        DataError: a step leaves a split empty, or cannot be applied to these images.
        ConfigError: an invalid label map.
    """
    splits = {}
    for name in ("train", "val", "test"):
        split = data.split(name)
        images = split.images.float()
        if color is not None:
            images = convert_channels(images, COLOR_CHANNELS[color])
        split = Split(images, split.masks.long())
        splits[name] = resize_split(split, resize) if resize is not None else split
    data = replace(data, **splits)
    # a padded split is normalised now, while whole (own_pixels needs every case); the others once
    # subset, as per image the result is the same and the work and memory are those of the images kept
    per_image = normalize not in DATASET_NORMALIZE and normalize != "none"
    own = {name: own_pixels(data, name) for name in ("train", "val", "test")} if per_image else {}
    early = {name for name, o in own.items() if o is not None}
    data = replace(data, **{name: Split(_per_image(data.split(name).images, normalize, own[name]),
                                        data.split(name).masks) for name in early})
    if label_map:
        data = remap_labels(data, label_map)
    if min_class_fraction > 0:
        data = merge_rare_classes(data, min_class_fraction)
    train = data.train
    if min_foreground_fraction > 0:
        train = drop_empty_slices(train, min_foreground_fraction)
        if len(train) == 0:
            raise DataError(f"data.min_foreground_fraction={min_foreground_fraction} drops every training image; "
                            f"lower it")
    if train_fraction < 1.0:
        n = len(train)
        keep = max(1, round(n * train_fraction))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        if val_from == "rest" and keep < n:
            rest = order[keep:].sort().values  # named by these indices, so that two runs pair the same images
            data = replace(data, val=train.subset(rest), info={**data.info, "val_from_rest": rest.tolist()})
            early = {name for name in early if name != "val"} | ({"val"} if "train" in early else set())
        train = train.subset(order[:keep].sort().values)
    data = replace(data, train=train)
    for name in ("train", "val", "test"):
        if len(data.split(name)) == 0:
            raise DataError(f"the {name} split is empty; use more data or smaller validation/test shares")
    if normalize not in DATASET_NORMALIZE:
        return replace(data, **{name: Split(_per_image(data.split(name).images, normalize, None), data.split(name).masks)
                                for name in ("train", "val", "test") if per_image and name not in early})
    stats = normalize_stats or _training_stats(data.train, normalize)
    splits = {name: Split(normalize_images(data.split(name).images, normalize, stats), data.split(name).masks)
              for name in ("train", "val", "test")}
    return replace(data, info={**data.info, "normalize_stats": stats}, **splits)
