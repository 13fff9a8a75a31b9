"""The ``nifti`` dataset: 3D volumes cut into 2D slices, from the nnU-Net raw or the MSD layout.

nnU-Net raw (v2; v1's ``modality`` and ``{"0": "background"}`` labels are read too)::

    Dataset001_Heart/
      dataset.json     {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "heart": 1},
                        "numTraining": 20, "file_ending": ".nii.gz"}
      imagesTr/heart_001_0000.nii.gz  (one file per input channel: _0000, _0001, ...)
      labelsTr/heart_001.nii.gz

Medical Segmentation Decathlon::

    Task02_Heart/
      dataset.json     {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
                        "numTraining": 20, "training": [{"image": "./imagesTr/la_003.nii.gz",
                                                         "label": "./labelsTr/la_003.nii.gz"}, ...]}
      imagesTr/la_003.nii.gz   (3D, or 4D with the channels last)
      labelsTr/la_003.nii.gz

Cases, never slices, are split into train / val / test, so no case is in two splits. The slices
of a case stay together and in order; ``SegData.info["cases"]`` lists ``[case_id, n_slices]``
per split, so that predictions can be put back together into volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from segtune.data.base import SOURCES, ImageSize, SegData, Split
from segtune.data.folder import random_split, read_json, read_splits_file
from segtune.errors import DataError

__all__ = [
    "NIFTI_ENDINGS", "Case", "Layout", "from_slices", "label_names", "load_nifti", "nifti", "read_array", "read_case",
    "read_dataset_json", "read_image_volume", "read_layout", "resize_slices", "strip_ending", "to_slices",
]

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    """One labelled volume: its id, its image file(s) (one per channel, or one 4D file) and label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclass(frozen=True)
class Layout:
    """What ``dataset.json`` and the files say: the layout, the cases, class names, channel count."""

    kind: str
    cases: list[Case]
    class_names: list[str]
    n_channels: int


def strip_ending(name: str) -> str:
    """``case_0000.nii.gz`` -> ``case_0000``."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def read_dataset_json(root: Path) -> dict[str, Any]:
    """The ``dataset.json`` of ``root`` as a dict.

    Raises:
        DataError: no folder, no file, or invalid JSON.
    """
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; give data.path the folder that holds dataset.json")
    file = root / "dataset.json"
    tree = read_json(file, "not found; a nifti dataset needs dataset.json beside imagesTr/ and labelsTr/ "
                           "(nnU-Net raw or Medical Segmentation Decathlon layout)")
    if not isinstance(tree, dict):
        raise DataError(f"{file}: expected a JSON object, found {type(tree).__name__}")
    return tree


def label_names(labels: Any, file: Path) -> list[str]:
    """Class names ordered by label value, from ``{"name": value}`` (nnU-Net v2) or ``{"value": "name"}``.

    Raises:
        DataError: missing labels, region-based labels, or values that are not ``0..K-1``.
    """
    if not isinstance(labels, dict) or len(labels) < 2:
        raise DataError(f"{file}: 'labels' must map at least background and one class, found {labels!r}")
    if all(str(k).isdigit() for k in labels):
        by_value = {int(k): str(v) for k, v in labels.items()}
    elif all(isinstance(v, int) for v in labels.values()):
        by_value = {v: str(k) for k, v in labels.items()}
    else:
        raise DataError(f"{file}: 'labels' {labels!r} is neither {{'name': value}} nor {{'value': 'name'}}; "
                        f"region-based labels (lists of values) are not supported")
    if sorted(by_value) != list(range(len(by_value))):
        raise DataError(f"{file}: label values {sorted(by_value)} must be 0, 1, ..., {len(by_value) - 1}; "
                        f"renumber the labels in dataset.json and in the label files")
    return [by_value[k] for k in range(len(by_value))]


def _check_count(tree: dict[str, Any], n_found: int, file: Path, what: str) -> None:
    declared = tree.get("numTraining")
    if declared is not None and declared != n_found:
        raise DataError(f"{file}: numTraining is {declared} but {n_found} {what}; "
                        f"correct numTraining or add the missing cases")


def _nnunet_cases(root: Path, tree: dict[str, Any], file: Path) -> tuple[list[Case], int]:
    channels = tree.get("channel_names", tree.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{file}: no 'channel_names' (or 'modality'); add e.g. {{\"0\": \"CT\"}}")
    n_channels = len(channels)
    ending = tree.get("file_ending", ".nii.gz")
    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; the nnU-Net raw layout needs imagesTr/ and labelsTr/")
    label_files = sorted(p for p in labels_dir.iterdir() if p.name.endswith(ending))
    cases = []
    for label in label_files:
        case_id = label.name[: -len(ending)]
        images = tuple(images_dir / f"{case_id}_{c:04d}{ending}" for c in range(n_channels))
        for image in images:
            if not image.is_file():
                raise DataError(f"{image}: not found, but {label.name} is in labelsTr/ and dataset.json "
                                f"declares {n_channels} channel(s); add the file or remove the label")
        cases.append(Case(case_id, images, label))
    known = {strip_ending(p.name) for c in cases for p in c.images}
    extra = sorted(p for p in images_dir.iterdir() if p.name.endswith(ending) and strip_ending(p.name) not in known)
    if extra:
        raise DataError(f"{extra[0]}: image without a label in labelsTr/ ({len(extra)} in all), or a channel "
                        f"beyond the {n_channels} that dataset.json declares; add the label or fix channel_names")
    _check_count(tree, len(cases), file, f"labelled cases are in {labels_dir}")
    return cases, n_channels


def _msd_cases(root: Path, tree: dict[str, Any], file: Path) -> tuple[list[Case], int]:
    modality = tree.get("modality", tree.get("channel_names"))
    if not isinstance(modality, dict) or not modality:
        raise DataError(f"{file}: no 'modality'; add e.g. {{\"0\": \"MRI\"}}")
    entries = tree["training"]
    if not isinstance(entries, list):
        raise DataError(f"{file}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}")
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{file}: training entry {entry!r} needs 'image' and 'label' paths")
        image, label = root / entry["image"], root / entry["label"]
        for path in (image, label):
            if not path.is_file():
                raise DataError(f"{file}: lists {entry['image' if path == image else 'label']}, "
                                f"but {path} does not exist; add the file or remove the entry")
        cases.append(Case(strip_ending(image.name), (image,), label))
    _check_count(tree, len(cases), file, "cases are listed in 'training'")
    return cases, len(modality)


def read_layout(root: Path, layout: str = "auto") -> Layout:
    """Read ``dataset.json`` and match it against the files.

    Args:
        root: the dataset folder.
        layout: ``auto`` (MSD when ``dataset.json`` has a ``training`` list, else nnU-Net),
            ``nnunet`` or ``msd``.

    Raises:
        DataError: any disagreement between ``dataset.json`` and the files, naming both.
    """
    tree = read_dataset_json(root)
    file = root / "dataset.json"
    kind = ("msd" if "training" in tree else "nnunet") if layout == "auto" else layout
    if kind == "msd" and "training" not in tree:
        raise DataError(f"{file}: no 'training' list, so this is not the MSD layout; use data.layout=nnunet")
    cases, n_channels = (_msd_cases if kind == "msd" else _nnunet_cases)(root, tree, file)
    if not cases:
        raise DataError(f"{root}: no labelled cases found; the dataset is empty")
    return Layout(kind, cases, label_names(tree.get("labels"), file), n_channels)


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
    splits: str | None = None,  # JSON file of case ids per split (relative to path); None: random by case
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15,
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15,  # 0: test on the val split
    split_seed: int = 0,  # fixed, so every run of a study sees the same cases in each split
) -> SegData:
    """3D NIfTI volumes (nnU-Net raw or MSD layout) as 2D slices, split by case."""
    if not path:
        raise DataError("data.path is required for a nifti dataset: the folder that holds dataset.json")
    root = Path(path).expanduser()
    found = read_layout(root, layout)
    slices = {case.case_id: read_case(case, found, axis, size) for case in found.cases}
    first = found.cases[0].case_id
    for case in found.cases:
        if slices[case.case_id].images.shape[2:] != slices[first].images.shape[2:]:
            h, w = slices[case.case_id].images.shape[2:]
            raise DataError(f"{case.images[0]}: slices are {h}x{w} along axis {axis}, but {first}'s are "
                            f"{tuple(slices[first].images.shape[2:])}; set data.size: [H, W] to resize on reading")
    ids = [c.case_id for c in found.cases]
    if splits:
        parts = read_splits_file(Path(splits) if Path(splits).is_absolute() else root / splits, ids)
    else:
        parts = random_split(len(ids), val_fraction, test_fraction, split_seed, root)
    if not parts["test"]:
        parts["test"] = parts["val"]
    data = {name: _concat([slices[ids[i]] for i in index]) for name, index in parts.items()}
    info = {"source": "nifti", "path": str(root), "layout": found.kind, "axis": axis,
            "cases": {name: [[ids[i], len(slices[ids[i]])] for i in index] for name, index in parts.items()}}
    return SegData(class_names=found.class_names, info=info, **data)
