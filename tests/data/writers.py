"""Miniature datasets on disk, one writer per data source layout (folder, nnU-Net / MSD NIfTI, Oxford-IIIT Pet)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = ["AFFINE", "SHAPE", "TEST", "TRAINVAL", "case_volumes", "save", "trimap", "write_folder", "write_msd",
           "write_msd_test", "write_nnunet", "write_nnunet_test", "write_pets", "write_two_spacings"]


def write_folder(root: Path, n: int = 6, size: int = 16, *, labels: int = 3, mode: str = "L") -> Path:
    """``n`` grey images and integer masks with labels ``0..labels-1`` (each mask holds all of them)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        Image.fromarray(image).convert(mode).save(root / "images" / f"case{i}.png")
        mask = (np.arange(size * size).reshape(size, size) * labels // (size * size)).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


SHAPE = (8, 8, 6)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def case_volumes(i: int, n_channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """An 8x8x6 label volume (a class-1 block and a class-2 block) and images ``(*SHAPE, C)`` showing it."""
    label = np.zeros(SHAPE, np.uint8)
    label[1:4, 1:5, 1:5] = 1
    label[5:7, 4:7, 2 + i % 3:] = 2
    rng = np.random.default_rng(i)
    images = np.stack([label * (50.0 + 10 * c) + rng.normal(0, 5, SHAPE) for c in range(n_channels)], -1)
    return images.astype(np.float32), label


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def write_nnunet(root: Path, n_cases: int = 7, n_channels: int = 1) -> Path:
    """A miniature nnU-Net raw dataset: ``imagesTr/case_XXX_000C.nii.gz``, ``labelsTr/case_XXX.nii.gz``."""
    for i in range(n_cases):
        images, label = case_volumes(i, n_channels)
        for c in range(n_channels):
            save(images[..., c], root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz")
        save(label, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"mod{c}" for c in range(n_channels)},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return root


def write_msd(root: Path, n_cases: int = 7, n_channels: int = 2) -> Path:
    """A miniature Medical Segmentation Decathlon task with 4D (channels-last) images."""
    training = []
    for i in range(n_cases):
        images, label = case_volumes(i, n_channels)
        save(images, root / "imagesTr" / f"vol_{i}.nii.gz")
        save(label, root / "labelsTr" / f"vol_{i}.nii.gz")
        training.append({"image": f"./imagesTr/vol_{i}.nii.gz", "label": f"./labelsTr/vol_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "modality": {str(c): f"mod{c}" for c in range(n_channels)},
        "labels": {"0": "background", "1": "edema", "2": "core"},
        "numTraining": n_cases, "training": training, "test": []}))
    return root


def write_nnunet_test(root: Path, ids: range = range(10, 12), n_channels: int = 1, *, labels: bool = True) -> Path:
    """``imagesTs/case_XXX_000C.nii.gz`` and (with ``labels``) ``labelsTs/case_XXX.nii.gz`` for ``ids``."""
    for i in ids:
        images, label = case_volumes(i, n_channels)
        for c in range(n_channels):
            save(images[..., c], root / "imagesTs" / f"case_{i:03d}_{c:04d}.nii.gz")
        if labels:
            save(label, root / "labelsTs" / f"case_{i:03d}.nii.gz")
    return root


def write_msd_test(root: Path, ids: range = range(10, 12), n_channels: int = 2, *, labels: bool = True) -> Path:
    """MSD test images ``imagesTs/vol_X.nii.gz``, listed in dataset.json's ``test``; ``labelsTs/`` with ``labels``."""
    for i in ids:
        images, label = case_volumes(i, n_channels)
        save(images, root / "imagesTs" / f"vol_{i}.nii.gz")
        if labels:
            save(label, root / "labelsTs" / f"vol_{i}.nii.gz")
    tree = json.loads((root / "dataset.json").read_text())
    tree["test"] = [f"./imagesTs/vol_{i}.nii.gz" for i in ids]
    (root / "dataset.json").write_text(json.dumps(tree))
    return root


def write_two_spacings(root: Path) -> Path:
    """Two cases of one 20 x 20 mm field of view: case_000 at 1 mm in plane (20 x 20 voxels), case_001
    at 2 x 1 mm (10 x 20 voxels), 4 axial slices of 3 mm; a class-1 square of 8 x 8 mm in each, a
    class-2 bar of 2 mm rows in case_000."""
    for i, (rows, step) in enumerate(((20, 1.0), (10, 2.0))):
        label = np.zeros((rows, 20, 4), np.uint8)
        label[round(6 / step):round(14 / step), 6:14] = 1
        if i == 0:
            label[16:18, 2:18] = 2
        image = (label * 40.0 + np.random.default_rng(i).normal(0, 2, label.shape)).astype(np.float32)
        affine = np.diag([step, 1.0, 3.0, 1.0])
        for array, folder, name in ((image, "imagesTr", f"case_{i:03d}_0000"), (label, "labelsTr", f"case_{i:03d}")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(root / folder / f"{name}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "square": 1, "bar": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    (root / "splits.json").write_text(json.dumps({"train": ["case_000"], "val": ["case_001"]}))  # tests on val
    return root


TRAINVAL = ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2", "beagle_3", "Bengal_1"]
TEST = ["Bengal_2", "boxer_1"]


def trimap(h: int, w: int) -> np.ndarray:
    """Background (2) with a pet block (1) ringed by a one-pixel border (3)."""
    t = np.full((h, w), 2, np.uint8)
    t[2:h - 2, 2:w - 2] = 3
    t[3:h - 3, 3:w - 3] = 1
    return t


def write_pets(root: Path) -> Path:
    """Images of mixed sizes, trimaps and the two official list files."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    for i, name in enumerate(TRAINVAL + TEST):
        h, w = 16 + 2 * (i % 2), 20
        Image.fromarray(np.full((h, w, 3), 40 * i % 255, np.uint8)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(trimap(h, w)).save(root / "annotations" / "trimaps" / f"{name}.png")
    (root / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in TRAINVAL))
    (root / "annotations" / "test.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n"
                                                   + "".join(f"{n} 2 2 1\n" for n in TEST))
    return root
