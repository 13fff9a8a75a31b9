"""The ``nifti`` dataset: 3D volumes of an nnU-Net raw or MSD dataset, cut into 2D slices.

The layout (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``) is read by
:mod:`segtune.data.nifti_layout`. Cases, never slices, are split into train / val / test (by
:mod:`segtune.data.splits`; labelled ``imagesTs`` cases are the test split), so no case is in
two splits. The slices of a case stay together and in order; ``SegData.info["cases"]`` lists
``[case_id, n_slices]`` per split, so that predictions can be put back together into volumes,
and ``SegData.info["split"]`` says where each split came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from segtune.data.base import SOURCES, ImageSize, SegData, Split
from segtune.data.nifti_layout import HELD_OUT_TEST, NIFTI_ENDINGS, Case, Layout, read_layout, strip_ending
from segtune.data.splits import TEST_FRACTION, VAL_FRACTION, choose_split
from segtune.errors import DataError

__all__ = [  # NIFTI_ENDINGS and strip_ending are the layout's, named here for the readers of volumes
    "NIFTI_ENDINGS", "from_slices", "load_nifti", "nifti", "read_array", "read_case", "read_image_volume",
    "resize_slices", "strip_ending", "to_slices",
]


def load_nifti(path: Path):
    """``nibabel.load`` with a DataError naming the file."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any nibabel failure means an unusable file
        raise DataError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err}); replace the file") from None


def read_array(path: Path, dtype: type = np.float32) -> np.ndarray:
    """The voxel array of a NIfTI file (scaling applied), with errors naming the file."""
    img = load_nifti(path)
    try:
        return np.asarray(img.dataobj, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - truncated archives raise zlib / EOF / value errors
        raise DataError(f"{path}: cannot read its voxels ({type(err).__name__}: {err}); the file is "
                        f"truncated or corrupt: replace it") from None


def read_image_volume(files: tuple[Path, ...], n_channels: int) -> np.ndarray:
    """The image of a case as float32 ``(C, X, Y, Z)``: one file per channel, or one 4D file.

    Raises:
        DataError: wrong number of dimensions or channels, or channel files of different shapes.
    """
    arrays = []
    for path in files:
        a = read_array(path)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim == 4 and len(files) == 1:
            arrays += [a[..., c] for c in range(a.shape[3])]
            continue
        if a.ndim == 4 and a.shape[3] == 1:
            a = a[..., 0]
        if a.ndim != 3:
            raise DataError(f"{path}: a {a.ndim}D array of shape {a.shape}; expected a 3D volume per channel file")
        arrays.append(a)
    if len(arrays) != n_channels:
        raise DataError(f"{files[0]}: holds {len(arrays)} channel(s) but dataset.json declares {n_channels}; "
                        f"fix 'modality' / 'channel_names' or the file")
    if any(a.shape != arrays[0].shape for a in arrays):
        raise DataError(f"{files[0]}: its channel files have different shapes "
                        f"{[a.shape for a in arrays]}; they must match voxel for voxel")
    return np.stack(arrays)


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """``(C, X, Y, Z)`` to slices ``(n, C, H, W)`` along spatial ``axis`` (0, 1 or 2)."""
    return np.ascontiguousarray(np.moveaxis(volume, axis + 1, 0))


def from_slices(labels: np.ndarray, axis: int) -> np.ndarray:
    """Slices ``(n, H, W)`` back to a volume ``(X, Y, Z)``; the inverse of :func:`to_slices` for labels."""
    return np.ascontiguousarray(np.moveaxis(labels, 0, axis))


def resize_slices(images: torch.Tensor, masks: torch.Tensor | None, size: tuple[int, int]):
    """Images ``(n, C, H, W)`` bilinear and masks ``(n, H, W)`` nearest to ``size``."""
    if tuple(images.shape[2:]) == tuple(size):
        return images, masks
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    if masks is not None:
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return images, masks


def read_case(case: Case, layout: Layout, axis: int, size: tuple[int, int] | None) -> Split:
    """The slices of one case, checked against its label and the declared classes."""
    image = read_image_volume(case.images, layout.n_channels)
    label = read_array(case.label, np.float32)
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.shape != image.shape[1:]:
        raise DataError(f"{case.label}: label shape {label.shape} differs from its image {image.shape[1:]} "
                        f"({case.images[0].name}); they must match voxel for voxel")
    if not np.allclose(load_nifti(case.images[0]).affine, load_nifti(case.label).affine, atol=1e-3):
        raise DataError(f"{case.label}: its affine (voxel spacing, origin or orientation) differs from its "
                        f"image {case.images[0].name}; resample the label onto the image's grid")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(layout.class_names)) | (values != np.round(values))]
    if bad.size:
        raise DataError(f"{case.label}: label {bad[0]:g} is not one of the {len(layout.class_names)} classes in "
                        f"dataset.json ({', '.join(layout.class_names)}); add it to 'labels' or fix the file")
    images = torch.from_numpy(to_slices(image, axis))
    masks = torch.from_numpy(to_slices(label[None], axis)[:, 0].astype(np.int64))
    if size is not None:
        images, masks = resize_slices(images, masks, size)
    return Split(images, masks)


def _slice_spacing(case: Case, axis: int, read: Split) -> list[float]:
    """The header's voxel spacing (mm) of a case as ``[between slices, rows, columns]`` of its slices
    as read (a resize on reading scales the in-plane spacing)."""
    header = load_nifti(case.images[0]).header
    zooms = ([float(z) for z in header.get_zooms()] + [1.0] * 3)[:3]  # a 2D file: 1 mm between "slices"
    shape = (list(header.get_data_shape()) + [1] * 3)[:3]
    rest = [a for a in range(3) if a != axis]
    h, w = read.images.shape[2:]
    return [zooms[axis], zooms[rest[0]] * shape[rest[0]] / h, zooms[rest[1]] * shape[rest[1]] / w]


def _concat(parts: list[Split]) -> Split:
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.masks for p in parts]))


@SOURCES.register("nifti")
def nifti(
    seed: int,
    /,
    *,
    path: str = "",
    layout: Literal["auto", "nnunet", "msd"] = "auto",  # auto: MSD if dataset.json has 'training'
    axis: Literal[0, 1, 2] = 2,  # the voxel axis cut into slices; 2 is axial for RAS-stored volumes
    size: ImageSize | None = None,  # resize slices on reading (H, W); needed for mixed in-plane sizes
    splits: str | None = None,  # JSON splits or folds file (relative to path); None: found in path, else random
    fold: Annotated[int, Field(ge=0)] = 0,  # the fold of a splits_final.json (nnU-Net's list of folds)
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = VAL_FRACTION,
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = TEST_FRACTION,  # 0: test on the val split;
    # not used, and only its default allowed, where imagesTs/labelsTs is the test split
    split_seed: int = 0,  # fixed, so every run of a study sees the same cases in each split
) -> SegData:
    """3D NIfTI volumes (nnU-Net raw or MSD layout) as 2D slices, split by case."""
    if not path:
        raise DataError("data.path is required for a nifti dataset: the folder that holds dataset.json")
    root = Path(path).expanduser()
    found = read_layout(root, layout)
    every = found.cases + found.test_cases
    slices = {case.case_id: read_case(case, found, axis, size) for case in every}
    first = found.cases[0].case_id
    for case in every:
        if slices[case.case_id].images.shape[2:] != slices[first].images.shape[2:]:
            h, w = slices[case.case_id].images.shape[2:]
            raise DataError(f"{case.images[0]}: slices are {h}x{w} along axis {axis}, but {first}'s are "
                            f"{tuple(slices[first].images.shape[2:])}; set data.size: [H, W] to resize on reading")
    ids = [c.case_id for c in found.cases]
    chosen = choose_split(root, ids, splits=splits, fold=fold, val_fraction=val_fraction, test_fraction=test_fraction,
                          split_seed=split_seed, held_out_test=HELD_OUT_TEST if found.test_cases else None)
    cases = {name: [ids[i] for i in index] for name, index in chosen.parts.items()}
    if found.test_cases:
        cases["test"] = [c.case_id for c in found.test_cases]
    data = {name: _concat([slices[c] for c in listed]) for name, listed in cases.items()}
    info = {"source": "nifti", "path": str(root), "layout": found.kind, "axis": axis,
            "cases": {name: [[c, len(slices[c])] for c in listed] for name, listed in cases.items()},
            "spacing": {case.case_id: _slice_spacing(case, axis, slices[case.case_id]) for case in every},
            "split": chosen.info(found.notes)}
    return SegData(class_names=found.class_names, info=info, **data)
