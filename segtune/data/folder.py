"""The ``folder`` dataset: ``images/`` and ``masks/`` matched by file stem.

::

    mydata/
      images/case01.png  case02.png ...   (PNG, JPEG or TIFF; grey or RGB)
      masks/case01.png   case02.png ...   (integer label per pixel: 0 = background, 1, 2, ...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from segtune.data.base import SOURCES, SegData, Split
from segtune.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; a folder dataset needs images/ and masks/ side by side")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def read_image(path: Path, channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as float32 ``(C, H, W)``; ``channels`` 1 converts to grey, 3 to RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if channels == 1 or (channels is None and img.mode in ("L", "I", "I;16", "F", "1", "P")):
                img = img.convert("F") if img.mode in ("I", "I;16", "F") else img.convert("L")
            else:
                img = img.convert("RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read image ({err}); replace or remove the file") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an integer label mask ``(H, W)``; resized with nearest neighbour if ``size`` is set."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"{path}: a mask must be a single-channel label image, found mode "
                                f"{img.mode}; save one integer label per pixel (0 = background)")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.NEAREST)
            return np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read mask ({err}); replace or remove the file") from None


def load_pairs(root: Path, channels: int | None, size: tuple[int, int] | None) -> tuple[list[str], Split]:
    """Read every image/mask pair of ``root`` into one split, with named errors."""
    images, masks = _index(root / "images"), _index(root / "masks")
    if not images:
        raise DataError(f"{root / 'images'}: no images (.png, .jpg, .tif) found")
    only_img, only_mask = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if only_img:
        raise DataError(f"{root}: {len(only_img)} image(s) without a mask in masks/, e.g. "
                        f"{images[only_img[0]].name}; add the mask or remove the image")
    if only_mask:
        raise DataError(f"{root}: {len(only_mask)} mask(s) without an image in images/, e.g. "
                        f"{masks[only_mask[0]].name}; add the image or remove the mask")
    stems = sorted(images)
    if channels is None:
        channels = max(read_image(images[s]).shape[0] for s in stems)
    xs, ys = [], []
    for stem in stems:
        x, y = read_image(images[stem], channels, size), read_mask(masks[stem], size)
        if x.shape[1:] != y.shape:
            raise DataError(f"{masks[stem]}: mask is {y.shape[1]}x{y.shape[0]} but its image is "
                            f"{x.shape[2]}x{x.shape[1]}; they must match pixel for pixel")
        if xs and x.shape != xs[0].shape:
            raise DataError(f"{images[stem]}: size {x.shape[2]}x{x.shape[1]} differs from "
                            f"{images[stems[0]].name} ({xs[0].shape[2]}x{xs[0].shape[1]}); "
                            f"set data.size: [H, W] to resize every file on reading")
        xs.append(x)
        ys.append(y)
    return stems, Split(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)))


@SOURCES.register("folder")
def folder(
    seed: int,
    /,
    *,
    path: str = "",
    classes: list[str] | None = None,  # class names, background first; default from the labels
    channels: Literal[1, 3] | None = None,  # None: RGB if any image is colour, else grey
    size: tuple[int, int] | None = None,  # resize every file on reading (H, W); needed for mixed sizes
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15,
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15,
    split_seed: int = 0,
) -> SegData:
    """Images and integer label masks in ``images/`` and ``masks/``, matched by file stem."""
    if not path:
        raise DataError("data.path is required for a folder dataset: the folder that holds images/ and masks/")
    root = Path(path).expanduser()
    stems, pairs = load_pairs(root, channels, size)
    n_labels = int(pairs.masks.max()) + 1
    if classes is not None and n_labels > len(classes):
        bad = next(s for s, m in zip(stems, pairs.masks) if int(m.max()) >= len(classes))
        raise DataError(f"{root / 'masks'}: {bad} holds label {n_labels - 1} but data.classes names only "
                        f"{len(classes)} classes ({', '.join(classes)}); add names or fix the mask")
    names = classes or ["background"] + [f"class_{k}" for k in range(1, max(n_labels, 2))]
    n = len(stems)
    n_val, n_test = max(1, round(n * val_fraction)), round(n * test_fraction)
    if n - n_val - n_test < 1:
        raise DataError(f"{root}: {n} image(s) are too few for the validation and test shares; add images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    splits = {k: pairs.subset(v.sort().values) for k, v in parts.items()}
    if n_test == 0:
        splits["test"] = splits["val"]
    return SegData(class_names=names, info={"source": "folder", "path": str(root)}, **splits)
