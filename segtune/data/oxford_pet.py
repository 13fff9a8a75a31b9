"""The ``oxford_pet`` dataset: the Oxford-IIIT Pet layout, trimaps mapped to binary foreground.

::

    oxford-iiit-pet/                      (``segtune download oxford-pet DIR`` writes this)
      images/Abyssinian_1.jpg ...
      annotations/trimaps/Abyssinian_1.png ...   (1 = pet, 2 = background, 3 = border)
      annotations/trainval.txt                   ("Abyssinian_1 1 1 1" per line: name class species breed)
      annotations/test.txt

The official ``trainval`` list is split into train and val by ``val_fraction`` (seeded); the
official ``test`` list is the test split. Images vary in size, so every file is resized to
``size`` on reading.

Parkhi, Vedaldi, Zisserman, Jawahar, 'Cats and Dogs', CVPR 2012; images and annotations under
CC BY-SA 4.0, copyright with their owners.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from segtune.data.base import SOURCES, ImageSize, SegData, Split
from segtune.data.folder import check_same_size, read_image, read_mask
from segtune.data.splits import random_split
from segtune.errors import DataError

__all__ = ["oxford_pet", "read_list", "read_pets", "trimap_to_labels"]

TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3


def read_list(file: Path) -> list[str]:
    """Image names (first column) of an official list file, skipping ``#`` comments.

    Raises:
        DataError: the file is missing or lists no images.
    """
    if not file.is_file():
        raise DataError(f"{file}: list file not found; the Oxford-IIIT Pet layout needs "
                        f"annotations/trainval.txt and annotations/test.txt (segtune download oxford-pet DIR)")
    names = [line.split()[0] for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise DataError(f"{file}: lists no images; the split would be empty")
    return names


def trimap_to_labels(trimap: np.ndarray, foreground: str, path: Path) -> np.ndarray:
    """Trimap values 1/2/3 to 0/1 labels: pet (and border, if ``foreground`` says so) is 1.

    Raises:
        DataError: a value other than 1, 2 or 3.
    """
    bad = np.setdiff1d(np.unique(trimap), [TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER])
    if bad.size:
        raise DataError(f"{path}: trimap value {int(bad[0])} found; trimaps hold 1 (pet), 2 (background) and "
                        f"3 (border) only: replace the file with the original annotation")
    fg = [TRIMAP_PET, TRIMAP_BORDER] if foreground == "pet_and_border" else [TRIMAP_PET]
    return np.isin(trimap, fg).astype(np.int64)


def read_pets(root: Path, names: list[str], foreground: str, size: tuple[int, int]) -> Split:
    """Images ``(N, 3, H, W)`` and binary masks ``(N, H, W)`` of ``names``, resized to ``size``."""
    xs, ys = [], []
    for name in names:
        image, trimap = root / "images" / f"{name}.jpg", root / "annotations" / "trimaps" / f"{name}.png"
        for path, what in ((image, "image"), (trimap, "trimap")):
            if not path.is_file():
                raise DataError(f"{path}: {what} not found, but {name} is in the official lists; "
                                f"restore the file (segtune download oxford-pet DIR) or remove it from the list")
        xs.append(read_image(image, 3, size))
        ys.append(trimap_to_labels(read_mask(trimap, size), foreground, trimap))
        check_same_size(image, trimap, "trimap")
    return Split(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)))


@SOURCES.register("oxford_pet")
def oxford_pet(
    seed: int,
    /,
    *,
    path: str = "",
    foreground: Literal["pet_and_border", "pet"] = "pet_and_border",  # what the trimap's class 1 covers
    size: ImageSize = (128, 128),  # H, W on reading
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15,  # share of trainval held out
    n_max: Annotated[int, Field(ge=0)] = 0,  # use at most this many images per list (0 = all): quick trials
    split_seed: int = 0,  # fixed, so every run of a study sees the same validation images
) -> SegData:
    """Oxford-IIIT Pet: pet versus background from the trimaps, official trainval / test lists."""
    if not path:
        raise DataError("data.path is required for oxford_pet: the folder holding images/ and annotations/")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; fetch the data with: segtune download oxford-pet {root}")
    trainval = read_list(root / "annotations" / "trainval.txt")
    test = read_list(root / "annotations" / "test.txt")
    if n_max:
        trainval, test = trainval[:n_max], test[:n_max]
    parts = random_split(len(trainval), val_fraction, 0.0, split_seed, root / "annotations" / "trainval.txt")
    splits = {name: read_pets(root, [trainval[i] for i in parts[name]], foreground, size) for name in ("train", "val")}
    splits["test"] = read_pets(root, test, foreground, size)
    info = {"source": "oxford_pet", "path": str(root), "foreground": foreground}
    return SegData(class_names=["background", "pet"], info=info, **splits)
