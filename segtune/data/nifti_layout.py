"""The layout of a NIfTI dataset: ``dataset.json`` read and matched against its files (nnU-Net raw or MSD).

nnU-Net raw (v2; v1's ``modality`` and ``{"0": "background"}`` labels are read too)::

    Dataset001_Heart/
      dataset.json     {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "heart": 1},
                        "numTraining": 20, "file_ending": ".nii.gz"}
      imagesTr/heart_001_0000.nii.gz  (one file per input channel: _0000, _0001, ...)
      labelsTr/heart_001.nii.gz
      imagesTs/heart_021_0000.nii.gz  (optional: with labelsTs/, the test split)
      labelsTs/heart_021.nii.gz

Medical Segmentation Decathlon::

    Task02_Heart/
      dataset.json     {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
                        "numTraining": 20, "training": [{"image": "./imagesTr/la_003.nii.gz",
                                                         "label": "./labelsTr/la_003.nii.gz"}, ...]}
      imagesTr/la_003.nii.gz   (3D, or 4D with the channels last)
      labelsTr/la_003.nii.gz
      imagesTs/la_001.nii.gz   (the "test" list; used only where labelsTs/la_001.nii.gz exists)

A labelled ``imagesTs`` (beside ``labelsTs``) is the test split; without ``labelsTs`` its cases
are not used, and :attr:`Layout.notes` says so. Voxels are read by :mod:`segtune.data.nifti`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtune.data.splits import read_json
from segtune.errors import DataError

__all__ = ["HELD_OUT_TEST", "NIFTI_ENDINGS", "Case", "Layout", "label_names", "read_dataset_json", "read_layout",
           "strip_ending"]

NIFTI_ENDINGS = (".nii.gz", ".nii")
HELD_OUT_TEST = "imagesTs/labelsTs"  # a raw dataset's own labelled test cases
_TEST_FIX = "or remove labelsTs/ to cut the test split from imagesTr"


@dataclass(frozen=True)
class Case:
    """One labelled volume: its id, its image file(s) (one per channel, or one 4D file) and label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclass(frozen=True)
class Layout:
    """What ``dataset.json`` and the files say: the layout, the cases, class names, channel count.

    ``test_cases`` are the labelled cases of ``imagesTs`` / ``labelsTs`` (empty without ``labelsTs``);
    ``notes`` say what was found and not used.
    """

    kind: str
    cases: list[Case]
    class_names: list[str]
    n_channels: int
    test_cases: list[Case] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def _nnunet_pairs(images_dir: Path, labels_dir: Path, n_channels: int, ending: str, fix: str) -> list[Case]:
    """The cases of a labels folder and its images folder, each label with one file per channel."""
    cases = []
    for label in sorted(p for p in labels_dir.iterdir() if p.name.endswith(ending)):
        case_id = label.name[: -len(ending)]
        images = tuple(images_dir / f"{case_id}_{c:04d}{ending}" for c in range(n_channels))
        for image in images:
            if not image.is_file():
                raise DataError(f"{image}: not found, but {label.name} is in {labels_dir.name}/ and dataset.json "
                                f"declares {n_channels} channel(s); add the file or remove the label")
        cases.append(Case(case_id, images, label))
    known = {strip_ending(p.name) for c in cases for p in c.images}
    extra = sorted(p for p in images_dir.iterdir() if p.name.endswith(ending) and strip_ending(p.name) not in known)
    if extra:
        raise DataError(f"{extra[0]}: image without a label in {labels_dir.name}/ ({len(extra)} in all), or a "
                        f"channel beyond the {n_channels} that dataset.json declares; {fix}")
    return cases


def _nnunet_cases(root: Path, tree: dict[str, Any], file: Path) -> tuple[list[Case], int]:
    channels = tree.get("channel_names", tree.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{file}: no 'channel_names' (or 'modality'); add e.g. {{\"0\": \"CT\"}}")
    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; the nnU-Net raw layout needs imagesTr/ and labelsTr/")
    cases = _nnunet_pairs(images_dir, labels_dir, len(channels), tree.get("file_ending", ".nii.gz"),
                          "add the label or fix channel_names")
    _check_count(tree, len(cases), file, f"labelled cases are in {labels_dir}")
    return cases, len(channels)


def _unlabelled_note(n_cases: int) -> list[str]:
    return [f"imagesTs/ holds {n_cases} case(s) but there is no labelsTs/: they are not used, and the test "
            f"split comes from imagesTr"] if n_cases else []


def _nnunet_test(root: Path, tree: dict[str, Any], file: Path, n_channels: int) -> tuple[list[Case], list[str]]:
    images_dir, labels_dir = root / "imagesTs", root / "labelsTs"
    ending = tree.get("file_ending", ".nii.gz")
    if not labels_dir.is_dir():
        images = images_dir.iterdir() if images_dir.is_dir() else []
        return [], _unlabelled_note(len({p.name[: -len(ending)].rsplit("_", 1)[0] for p in images
                                         if p.name.endswith(ending)}))
    if not images_dir.is_dir():
        raise DataError(f"{labels_dir}: test labels without imagesTs/; add the test images, {_TEST_FIX}")
    return _nnunet_pairs(images_dir, labels_dir, n_channels, ending, f"add its label to labelsTs/, {_TEST_FIX}"), []


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


def _msd_test_images(root: Path, tree: dict[str, Any], file: Path) -> list[Path]:
    listed = tree.get("test")
    if listed is None:
        folder = root / "imagesTs"
        return sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_ENDINGS)) if folder.is_dir() else []
    if not isinstance(listed, list):
        raise DataError(f"{file}: 'test' must be a list of image paths, found {type(listed).__name__}")
    return [root / (entry["image"] if isinstance(entry, dict) and "image" in entry else str(entry)) for entry in listed]


def _msd_test(root: Path, tree: dict[str, Any], file: Path, n_channels: int) -> tuple[list[Case], list[str]]:
    images, labels_dir = _msd_test_images(root, tree, file), root / "labelsTs"
    if not labels_dir.is_dir():
        return [], _unlabelled_note(len(images))
    cases = []
    for image in images:
        label = labels_dir / image.name
        if not image.is_file():
            raise DataError(f"{file}: its test list names {image}, which does not exist; add the file or remove "
                            f"the entry")
        if not label.is_file():
            raise DataError(f"{image}: test image without a label in labelsTs/; add labelsTs/{image.name}, "
                            f"{_TEST_FIX}")
        cases.append(Case(strip_ending(image.name), (image,), label))
    extra = sorted({p.name for p in labels_dir.iterdir() if p.name.endswith(NIFTI_ENDINGS)} - {i.name for i in images})
    if extra:
        raise DataError(f"{labels_dir / extra[0]}: a test label whose image is not in dataset.json's test list "
                        f"(or imagesTs/); add the image or remove the label")
    return cases, []


def _check_no_case_twice(root: Path, cases: list[Case], test_cases: list[Case]) -> None:
    both = sorted({c.case_id for c in cases} & {c.case_id for c in test_cases})
    if both:
        raise DataError(f"{root / 'imagesTs'}: case {both[0]!r} is in imagesTr/ too ({len(both)} in all); a case "
                        f"may be in one split: rename or remove one of them")


def read_layout(root: Path, layout: str = "auto") -> Layout:
    """Read ``dataset.json`` and match it against the files, the labelled test cases too.

    Args:
        root: the dataset folder.
        layout: ``auto`` (MSD when ``dataset.json`` has a ``training`` list, else nnU-Net),
            ``nnunet`` or ``msd``.

    Raises:
        DataError: any disagreement between ``dataset.json`` and the files, naming both; an
            ``imagesTs`` case without its label beside ``labelsTs``; a case in both imagesTr and imagesTs.
    """
    tree = read_dataset_json(root)
    file = root / "dataset.json"
    kind = ("msd" if "training" in tree else "nnunet") if layout == "auto" else layout
    if kind == "msd" and "training" not in tree:
        raise DataError(f"{file}: no 'training' list, so this is not the MSD layout; use data.layout=nnunet")
    cases, n_channels = (_msd_cases if kind == "msd" else _nnunet_cases)(root, tree, file)
    if not cases:
        raise DataError(f"{root}: no labelled cases found; the dataset is empty")
    test_cases, notes = (_msd_test if kind == "msd" else _nnunet_test)(root, tree, file, n_channels)
    _check_no_case_twice(root, cases, test_cases)
    return Layout(kind, cases, label_names(tree.get("labels"), file), n_channels, test_cases, notes)
