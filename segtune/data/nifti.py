"""The ``nifti`` dataset: 3D volumes of an nnU-Net raw or MSD dataset, cut into 2D slices.

The layout (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``) is read by
:mod:`segtune.data.nifti_layout`. Cases, never slices, are split into train / val / test (by
:mod:`segtune.data.splits`; labelled ``imagesTs`` cases are the test split), so no case is in
two splits. The slices of a case stay together and in order; ``SegData.info["cases"]`` lists
``[case_id, n_slices]`` per split, so that predictions can be put back together into volumes,
and ``SegData.info["split"]`` says where each split came from. With ``spacing`` every case is
resampled in plane to that spacing on reading (nnU-Net's target spacing, the slicing axis kept
native) and ``SegData.info["native"]`` says how to put its slices back onto its own grid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PlainValidator

from segtune.data.base import SOURCES, ImageSize, SegData, Split
from segtune.data.nifti_layout import HELD_OUT_TEST, NIFTI_ENDINGS, Case, Layout, read_layout, strip_ending
from segtune.data.splits import TEST_FRACTION, VAL_FRACTION, choose_split
from segtune.errors import DataError

__all__ = [  # NIFTI_ENDINGS and strip_ending are the layout's, named here for the readers of volumes
    "NIFTI_ENDINGS", "SLICES_AT_ONCE", "InPlaneSpacing", "from_slices", "in_plane_spacing", "load_nifti", "nifti",
    "read_array", "read_case", "read_image_volume", "resample_size", "resample_slices", "resize_probabilities",
    "resize_slices", "strip_ending", "to_slices",
]


MAX_SPACING = 1000.0  # mm: a finite target; a case resampled to fewer than 2 pixels a side is refused on reading
MAX_SIDE = 4096  # pixels: the largest side a resampled slice may have (a 4096 x 4096 float slice is 64 MiB)


def _in_plane(value: object) -> float | tuple[float, float]:
    """A target in-plane spacing: a number of mm > 0 for rows and columns, or ``[rows, columns]``."""
    pair = list(value) if isinstance(value, (list, tuple)) else None
    numbers = pair if pair is not None else [value]
    if (len(numbers) in ((1,) if pair is None else (2,))
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < MAX_SPACING for v in numbers)):
        return float(value) if pair is None else (float(pair[0]), float(pair[1]))
    raise ValueError(f"expected a spacing in mm, > 0 and < {MAX_SPACING:g}: one number for rows and columns (e.g. "
                     f"0.8), or [rows, columns] (e.g. [0.8, 0.8]); null keeps each file's own")


SLICES_AT_ONCE = 16  # slices whose one-hot labels or probabilities are resampled together (memory: K floats a pixel)

# A target in-plane spacing in mm: one value for rows and columns, or [rows, columns].
InPlaneSpacing = Annotated[float | tuple[float, float], PlainValidator(_in_plane)]


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


def _zooms_and_shape(path: Path) -> tuple[list[float], list[int]]:
    """The header's voxel spacing (mm) and shape of the first three axes (a 2D file: 1 mm, 1 voxel)."""
    header = load_nifti(path).header
    return ([float(z) for z in header.get_zooms()] + [1.0] * 3)[:3], (list(header.get_data_shape()) + [1] * 3)[:3]


def in_plane_spacing(path: Path, axis: int) -> tuple[float, float]:
    """The header's voxel spacing (mm) of the rows and columns of the slices cut along ``axis``."""
    zooms, _ = _zooms_and_shape(path)
    rows, cols = (a for a in range(3) if a != axis)
    return zooms[rows], zooms[cols]


def resample_size(size: tuple[int, int], spacing: tuple[float, float], target: float | tuple[float, float]
                  ) -> tuple[int, int]:
    """The in-plane size ``(H, W)`` of slices of ``size`` at ``spacing`` mm once resampled to ``target`` mm.

    Example:
        >>> resample_size((10, 12), (2.0, 1.0), 1.0)
        (20, 12)
    """
    target = (target, target) if isinstance(target, (int, float)) else target
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(size, spacing, target))


def resize_probabilities(probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class probabilities (or one-hot labels) ``(n, K, H, W)`` linearly resampled to ``size``."""
    if tuple(probabilities.shape[2:]) == tuple(size):
        return probabilities
    return F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)


def resample_slices(images: torch.Tensor, masks: torch.Tensor | None, size: tuple[int, int], n_classes: int):
    """Slices resampled in plane to ``size``, as nnU-Net resamples: images ``(n, C, H, W)`` by cubic
    interpolation, masks ``(n, H, W)`` one-hot, each class linearly, then the most likely class (so
    that a thin structure is not lost to nearest neighbour and every value is still a label)."""
    if tuple(images.shape[2:]) == tuple(size):
        return images, masks
    images = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
    if masks is not None:  # a few slices at a time: one float per class and pixel
        masks = torch.cat([resize_probabilities(F.one_hot(m, n_classes).movedim(-1, 1).float(), size).argmax(1)
                           for m in masks.split(SLICES_AT_ONCE)])
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


def _slice_spacing(case: Case, axis: int, read: tuple[int, int]) -> list[float]:
    """The header's voxel spacing (mm) of a case as ``[between slices, rows, columns]`` of its slices
    as read at ``read`` ``(H, W)`` (a resize or resampling on reading scales the in-plane spacing)."""
    zooms, shape = _zooms_and_shape(case.images[0])
    rest = [a for a in range(3) if a != axis]
    return [zooms[axis], zooms[rest[0]] * shape[rest[0]] / read[0], zooms[rest[1]] * shape[rest[1]] / read[1]]


def _resampled(case: Case, read: Split, axis: int, spacing: float | tuple[float, float], n_classes: int
               ) -> tuple[Split, tuple[int, int]]:
    """A case's slices resampled in plane to ``spacing`` mm (the slicing axis keeps its own), and their size."""
    own = in_plane_spacing(case.images[0], axis)
    size = resample_size(tuple(read.images.shape[2:]), own, spacing)
    if min(size) < 2 or max(size) > MAX_SIDE:
        raise DataError(f"{case.images[0]}: resampled to data.spacing={spacing} mm its slices would be "
                        f"{size[0]}x{size[1]} pixels (at least 2 and at most {MAX_SIDE} a side); set data.spacing "
                        f"nearer the files' own {own} mm, or null")
    return Split(*resample_slices(read.images, read.masks, size, n_classes)), size


def _pad_to(read: Split, size: tuple[int, int]) -> tuple[Split, list[int]]:
    """Slices centred on a canvas of ``size``: images padded with each channel's least value (air),
    masks with background; returns the padded split and the ``[top, left]`` of the case on it.

    The case's ``box`` in ``info["native"]`` tells its pixels from the padding, so that a per-image
    normalisation takes its statistics from the case's own (:func:`~segtune.data.base.own_pixels`),
    as ``predict`` normalises the case alone."""
    h, w = read.images.shape[2:]
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    pad = (left, size[1] - w - left, top, size[0] - h - top)
    if not any(pad):
        return read, [0, 0]
    low = read.images.amin((0, 2, 3))[None, :, None, None]
    images = F.pad(read.images - low, pad) + low
    return Split(images, F.pad(read.masks, pad)), [top, left]


def _check_options(options: dict) -> None:
    if options["spacing"] is not None and options["size"] is not None:
        raise ValueError(f"spacing={options['spacing']} and size={options['size']} are both set: a resize "
                         f"after resampling would change the spacing again and distort shapes; set data.size: null "
                         f"(cases of different sizes are padded to a common one) or data.spacing: null")


def _concat(parts: list[Split]) -> Split:
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.masks for p in parts]))


@SOURCES.register("nifti", check=_check_options)
def nifti(
    seed: int,
    /,
    *,
    path: str = "",
    layout: Literal["auto", "nnunet", "msd"] = "auto",  # auto: MSD if dataset.json has 'training'
    axis: Literal[0, 1, 2] = 2,  # the voxel axis cut into slices; 2 is axial for RAS-stored volumes
    size: ImageSize | None = None,  # resize slices on reading (H, W); needed for mixed in-plane sizes
    # resample each case in plane to this spacing in mm (one value, or [rows, columns]) on reading, the slicing
    # axis kept native; cases of different sizes then are padded to a common one; None keeps each file's own
    spacing: InPlaneSpacing | None = None,
    splits: str | None = None,  # JSON splits or folds file (relative to path); None: found in path, else random
    fold: Annotated[int, Field(ge=0)] = 0,  # the fold of a splits_final.json (nnU-Net's list of folds)
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = VAL_FRACTION,
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = TEST_FRACTION,  # 0: test on the val split;
    # not used, and only its default allowed, where imagesTs/labelsTs is the test split
    split_seed: int = 0,  # fixed, so every run of a study sees the same cases in each split
) -> SegData:
    """3D NIfTI volumes (nnU-Net raw or MSD layout) as 2D slices, split by case.

    With ``spacing``, ``info["native"]`` says how each case's slices lie on the grid it was read
    at: ``canvas`` (the common ``[H, W]`` of the slices) and per case (``cases``) its native
    ``size`` (``[H, W]``), ``spacing`` (``[between slices, rows, columns]`` in mm), ``box``
    (``[top, left, H, W]`` of its resampled slices on the canvas) and ``label`` (its label file), so
    that predictions can be put back onto each case's own grid (:mod:`segtune.training.predict`).
    """
    if not path:
        raise DataError("data.path is required for a nifti dataset: the folder that holds dataset.json")
    root = Path(path).expanduser()
    found = read_layout(root, layout)
    every = found.cases + found.test_cases
    slices = {case.case_id: read_case(case, found, axis, size) for case in every}
    native: dict[str, dict] = {}
    if spacing is not None:
        for case in every:
            read = slices[case.case_id]
            slices[case.case_id], resampled = _resampled(case, read, axis, spacing, len(found.class_names))
            native[case.case_id] = {"size": list(read.images.shape[2:]),
                                    "spacing": _slice_spacing(case, axis, tuple(read.images.shape[2:])),
                                    "resampled": list(resampled), "label": str(case.label)}
        canvas = tuple(max(entry["resampled"][i] for entry in native.values()) for i in (0, 1))
        for case in every:
            slices[case.case_id], corner = _pad_to(slices[case.case_id], canvas)
            native[case.case_id]["box"] = corner + native[case.case_id].pop("resampled")
        native = {"canvas": list(canvas), "cases": native}
    first = found.cases[0].case_id
    for case in every:
        if slices[case.case_id].images.shape[2:] != slices[first].images.shape[2:]:
            h, w = slices[case.case_id].images.shape[2:]
            raise DataError(f"{case.images[0]}: slices are {h}x{w} along axis {axis}, but {first}'s are "
                            f"{tuple(slices[first].images.shape[2:])}; set data.size: [H, W] to resize on reading, "
                            f"or data.spacing to resample and pad them to a common size")
    ids = [c.case_id for c in found.cases]
    chosen = choose_split(root, ids, splits=splits, fold=fold, val_fraction=val_fraction, test_fraction=test_fraction,
                          split_seed=split_seed, held_out_test=HELD_OUT_TEST if found.test_cases else None)
    cases = {name: [ids[i] for i in index] for name, index in chosen.parts.items()}
    if found.test_cases:
        cases["test"] = [c.case_id for c in found.test_cases]
    data = {name: _concat([slices[c] for c in listed]) for name, listed in cases.items()}
    content = {c: tuple(native["cases"][c]["box"][2:]) if native else tuple(slices[c].images.shape[2:])
               for c in slices}
    info = {"source": "nifti", "path": str(root), "layout": found.kind, "axis": axis,
            "cases": {name: [[c, len(slices[c])] for c in listed] for name, listed in cases.items()},
            "spacing": {case.case_id: _slice_spacing(case, axis, content[case.case_id]) for case in every},
            "split": chosen.info(found.notes)}
    if native:
        info["native"] = native
    return SegData(class_names=found.class_names, info=info, **data)
