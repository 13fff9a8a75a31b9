"""The ``folder`` dataset: ``images/`` and ``masks/`` matched by file stem.

::

    mydata/
      images/case01.png  case02.jpg ...   (PNG, JPEG or TIFF; grey or RGB)
      masks/case01.png   case02.png ...   (one label per pixel, see below)
      classes.txt                         (optional: one class name per line, background first)
      splits.json                         (optional: {"train": [stems], "val": [...], "test": [...]})
      splits_final.json                   (optional: nnU-Net's folds [{"train": [...], "val": [...]}, ...])

A mask may hold integer labels (0 = background, 1, 2, ...), be a 0/255 binary mask (read as
0/1), or be a palette PNG (the palette index is the label, as in PASCAL VOC). Every problem
with a file is reported as a :class:`~segtune.errors.DataError` naming the file and the fix,
before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from segtune.data.base import SOURCES, ImageSize, SegData, Split
from segtune.data.splits import TEST_FRACTION, VAL_FRACTION, choose_split
from segtune.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES", "VOLUME_SUFFIXES", "binary_255_to_01", "check_labels", "check_same_size", "class_names",
    "find_pairs", "folder", "read_image", "read_mask", "read_pairs",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".nrrd")


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; a folder dataset needs images/ and masks/ side by side")
    volumes = [p for p in sorted(folder.iterdir()) if p.name.lower().endswith(VOLUME_SUFFIXES)]
    if volumes:
        raise DataError(f"{volumes[0]}: a 3D volume where 2D images are expected; use data.source=nifti "
                        f"for volumes, or save each slice as a PNG")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _open_2d(path: Path, what: str, size: tuple[int, int] | None, resample: int):
    """Open ``path`` with Pillow, load it fully, refuse stacks, resize to ``size`` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                raise DataError(f"{path}: a stack of {img.n_frames} frames (3D) where a 2D {what} is "
                                f"expected; save each slice as its own file, or use data.source=nifti")
            if size is not None:
                img = img.resize((size[1], size[0]), resample)
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read {what} ({err}); the file is unreadable or truncated: "
                        f"replace or remove it") from None


def check_same_size(image: Path, mask: Path, what: str = "mask") -> None:
    """Compare the stored sizes of an image and its mask (read from the file headers), so that a
    mismatch is caught even when both are resized on reading.

    Raises:
        DataError: the sizes differ.
    """
    from PIL import Image

    with Image.open(image) as a, Image.open(mask) as b:
        (wa, ha), (wb, hb) = a.size, b.size
    if (wa, ha) != (wb, hb):
        raise DataError(f"{mask}: {what} is {wb}x{hb} but its image is {wa}x{ha}; they must match pixel for pixel")


def read_image(path: Path, channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 2D image.

    Args:
        path: PNG, JPEG, TIFF or BMP file.
        channels: 1 converts to grey, 3 to RGB, None keeps grey images grey and the rest RGB.
        size: ``(H, W)`` to resize to (bilinear), or None.

    Returns:
        float32 array ``(C, H, W)``.

    Raises:
        DataError: unreadable or truncated file, or a multi-frame (3D) file.
    """
    from PIL import Image

    img = _open_2d(Path(path), "image", size, Image.BILINEAR)
    if channels == 1 or (channels is None and img.mode in ("L", "I", "I;16", "F", "1", "P")):
        img = img.convert("F") if img.mode in ("I", "I;16", "F") else img.convert("L")
    else:
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.float32)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label mask: integer labels, palette indices, or a grey mask saved as RGB.

    Args:
        path: a single-channel or palette image file.
        size: ``(H, W)`` to resize to (nearest neighbour), or None.

    Returns:
        int64 array ``(H, W)``.

    Raises:
        DataError: unreadable, multi-frame, or a colour mask whose channels differ.
    """
    from PIL import Image

    img = _open_2d(Path(path), "mask", size, Image.NEAREST)
    array = np.asarray(img)
    if img.mode in ("RGB", "RGBA"):
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise DataError(f"{path}: a colour ({img.mode}) mask; save one integer label per pixel as a "
                            f"grey or palette PNG (0 = background, 1, 2, ...)")
        array = array[..., 0]
    elif array.ndim != 2:
        raise DataError(f"{path}: a mask must be a single-channel label image, found mode {img.mode}; "
                        f"save one integer label per pixel (0 = background)")
    return array.astype(np.int64)


def find_pairs(root: Path) -> tuple[list[str], dict[str, Path], dict[str, Path]]:
    """Stems with both an image and a mask, checking that every file has its partner.

    Raises:
        DataError: no images, an image without a mask or a mask without an image.
    """
    images, masks = _index(root / "images"), _index(root / "masks")
    if not images:
        raise DataError(f"{root / 'images'}: no images (.png, .jpg, .tif) found; the dataset is empty")
    only_img, only_mask = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if only_img:
        raise DataError(f"{images[only_img[0]]}: image without a mask ({len(only_img)} in all); add "
                        f"masks/{only_img[0]}.png or remove the image")
    if only_mask:
        raise DataError(f"{masks[only_mask[0]]}: mask without an image ({len(only_mask)} in all); add "
                        f"the image to images/ or remove the mask")
    return sorted(images), images, masks


def read_pairs(stems: list[str], images: dict[str, Path], masks: dict[str, Path], channels: int | None,
               size: tuple[int, int] | None) -> Split:
    """Read the image/mask pairs of ``stems`` into one split, checking sizes.

    Raises:
        DataError: a mask whose size differs from its image, or images of mixed sizes.
    """
    if channels is None:
        channels = max(read_image(images[s]).shape[0] for s in stems)
    xs, ys = [], []
    for stem in stems:
        x, y = read_image(images[stem], channels, size), read_mask(masks[stem], size)
        check_same_size(images[stem], masks[stem])
        if xs and x.shape != xs[0].shape:
            raise DataError(f"{images[stem]}: size {x.shape[2]}x{x.shape[1]} differs from "
                            f"{images[stems[0]].name} ({xs[0].shape[2]}x{xs[0].shape[1]}); "
                            f"set data.size: [H, W] to resize every file on reading")
        xs.append(x)
        ys.append(y)
    return Split(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)))


def binary_255_to_01(masks: torch.Tensor) -> torch.Tensor:
    """Masks ``(N, H, W)`` whose only values are 0 and 255 become 0/1; others are returned as they are."""
    values = masks.unique()
    if 255 in values and bool(torch.isin(values, torch.tensor([0, 255])).all()):
        return (masks == 255).long()
    return masks


def class_names(root: Path, classes: list[str] | str | None, n_labels: int) -> list[str]:
    """The class names: a list, a text file (one per line), ``classes.txt`` in ``root``, or generic."""
    if classes is None and (root / "classes.txt").is_file():
        classes = "classes.txt"
    if isinstance(classes, str):
        file = Path(classes) if Path(classes).is_absolute() else root / classes
        if not file.is_file():
            raise DataError(f"{file}: class-name file not found; give one name per line, background first")
        classes = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if classes is not None:
        if len(classes) < 2:
            raise DataError(f"{root}: data.classes names {len(classes)} class(es); name the background "
                            f"and at least one foreground class")
        return list(classes)
    return ["background"] + [f"class_{k}" for k in range(1, max(n_labels, 2))]


def check_labels(masks: torch.Tensor, names: list[str], files: list[Path]) -> None:
    """Raise a DataError naming the first mask that holds a label outside ``0..len(names)-1``."""
    bad = (masks >= len(names)) | (masks < 0)
    if bool(bad.any()):
        i = int(bad.flatten(1).any(1).nonzero()[0])
        label = int(masks[i][bad[i]][0])
        hint = " (255 often marks 'ignore'; map it to a class)" if label == 255 else ""
        raise DataError(f"{files[i]}: label {label} is not one of the {len(names)} declared classes "
                        f"({', '.join(names)}){hint}; add a class name or fix the mask")


@SOURCES.register("folder")
def folder(
    seed: int,
    /,
    *,
    path: str = "",
    classes: list[str] | str | None = None,  # names (background first), or a text file; default classes.txt
    channels: Literal[1, 3] | None = None,  # None: RGB if any image is colour, else grey
    size: ImageSize | None = None,  # resize every file on reading (H, W); needed for mixed sizes
    splits: str | None = None,  # JSON splits or folds file (relative to path); None: found in path, else random
    fold: Annotated[int, Field(ge=0)] = 0,  # the fold of a splits_final.json (nnU-Net's list of folds)
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = VAL_FRACTION,
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = TEST_FRACTION,  # 0: test on the val split
    split_seed: int = 0,  # fixed, so every run of a study sees the same split
) -> SegData:
    """Images and label masks in ``images/`` and ``masks/``, matched by file stem."""
    if not path:
        raise DataError("data.path is required for a folder dataset: the folder that holds images/ and masks/")
    root = Path(path).expanduser()
    stems, image_files, mask_files = find_pairs(root)
    pairs = read_pairs(stems, image_files, mask_files, channels, size)
    masks = binary_255_to_01(pairs.masks)
    names = class_names(root, classes, int(masks.max()) + 1)
    check_labels(masks, names, [mask_files[s] for s in stems])
    pairs = Split(pairs.images, masks)
    chosen = choose_split(root, stems, splits=splits, fold=fold, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed)
    data = {k: pairs.subset(torch.tensor(v, dtype=torch.long)) for k, v in chosen.parts.items()}
    info = {"source": "folder", "path": str(root), "stems": {k: [stems[i] for i in v] for k, v in chosen.parts.items()},
            "split": chosen.info()}
    return SegData(class_names=names, info=info, **data)
