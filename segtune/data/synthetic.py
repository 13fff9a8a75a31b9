"""The ``synthetic`` dataset: deterministic random shapes with texture and noise.

Each image holds a few ellipses and rectangles; each shape's class sets its mean intensity
and texture (a sinusoidal pattern), and Gaussian noise and a smooth bias field are added, so
that telling classes apart needs more than a threshold. Used by tests and benchmarks.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from segtune.data.base import SOURCES, SegData, Split

__all__ = ["make_shapes", "synthetic"]


def make_shapes(n: int, size: int, n_classes: int, channels: int, noise: float,
                generator: torch.Generator) -> Split:
    """``n`` images ``(n, channels, size, size)`` and label maps with classes ``0..n_classes-1``."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    images = torch.zeros(n, channels, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    for i in range(n):
        canvas = torch.full((size, size), 0.2)
        n_shapes = int(torch.randint(1, 4, (1,), generator=generator))
        for _ in range(n_shapes):
            cls = int(torch.randint(1, n_classes, (1,), generator=generator))
            cy, cx = (torch.rand(2, generator=generator) * 0.6 + 0.2) * size
            ry, rx = (torch.rand(2, generator=generator) * 0.15 + 0.08) * size
            if torch.rand(1, generator=generator) < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:
                inside = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
            freq = 0.3 + 0.25 * cls
            texture = 0.15 * torch.sin(freq * (xx + yy))
            canvas = torch.where(inside, 0.2 + 0.6 * cls / max(n_classes - 1, 1) + texture, canvas)
            masks[i][inside] = cls
        bias = 0.1 * torch.sin(xx / size * 3.0 + float(torch.rand(1, generator=generator)) * 6.0)
        for c in range(channels):
            images[i, c] = canvas + bias + noise * torch.randn(size, size, generator=generator)
    return Split(images, masks)


@SOURCES.register("synthetic")
def synthetic(
    seed: int,
    /,
    *,
    n_train: Annotated[int, Field(ge=1)] = 64,
    n_val: Annotated[int, Field(ge=1)] = 16,
    n_test: Annotated[int, Field(ge=1)] = 16,
    size: Annotated[int, Field(ge=8, le=1024)] = 64,
    n_classes: Annotated[int, Field(ge=2, le=16)] = 3,  # including background
    channels: Literal[1, 3] = 1,
    noise: Annotated[float, Field(ge=0.0)] = 0.1,
    data_seed: int = 0,  # fixed, independent of the run seed: the data stay the same across runs
) -> SegData:
    """Random ellipses and rectangles with class-specific intensity and texture, plus noise."""
    generator = torch.Generator().manual_seed(data_seed)
    splits = {name: make_shapes(n, size, n_classes, channels, noise, generator)
              for name, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    names = ["background"] + [f"class_{k}" for k in range(1, n_classes)]
    return SegData(class_names=names, info={"source": "synthetic"}, **splits)
