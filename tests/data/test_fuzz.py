"""Fuzzed data files: truncated, corrupted, missing, mis-sized, mislabelled images and volumes.

Whatever is done to the files, `segtune train` either trains or stops with exit code 2 and a
one-line error before training; never a traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segtune.cli import main

from tests.conftest import tiny_tree
from tests.data.writers import AFFINE, write_folder, write_nnunet

FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _truncate(path: Path, fraction: float, rng) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _flip_bytes(path: Path, fraction: float, rng) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * fraction)
    for i in range(start, min(len(data), start + 8)):
        data[i] = rng.integers(0, 256)
    path.write_bytes(bytes(data))


def _delete(path: Path, fraction: float, rng) -> None:
    path.unlink()


def _garbage(path: Path, fraction: float, rng) -> None:
    path.write_bytes(rng.integers(0, 256, int(200 * fraction), dtype=np.uint8).tobytes())


def _image(path: Path, fraction: float, rng) -> None:
    """Another picture in the file's place: another size, mode, label range or dimension."""
    side = 4 + int(fraction * 24)
    kind = rng.integers(0, 5)
    if path.name.endswith(".nii.gz"):
        shape = [(side, side, 6), (side,) * 2, (8, 8, 6, 2), (8, 8, 6), (8, 8, 6)][kind]
        array = rng.integers(0, 1 + int(fraction * 300), shape).astype([np.uint8, np.float32, np.int16, np.float64, np.int32][kind])
        if kind == 3:
            array = array + 0.5  # fractional labels
        nib.save(nib.Nifti1Image(array, AFFINE if kind != 4 else np.diag([2.0, 1, 1, 1])), str(path))
        return
    array = rng.integers(0, 1 + int(fraction * 255), (side, side, 3) if kind == 1 else (side, side))
    mode = ["L", "RGB", "I;16", "1", "P"][kind]
    Image.fromarray(array.astype(np.uint8)).convert(mode).save(path)


CORRUPTIONS = [_truncate, _flip_bytes, _delete, _garbage, _image]
DAMAGE = st.lists(st.tuples(st.integers(0, 100), st.sampled_from(CORRUPTIONS), st.floats(0, 0.999)),
                  min_size=1, max_size=3)


def _damage_and_train(root: Path, data: dict, damage, tmp: Path, capsys) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".json")
    rng = np.random.default_rng(len(damage))
    for index, corrupt, fraction in damage:
        path = files[index % len(files)]
        if path.exists():
            corrupt(path, fraction, rng)
    config = tmp / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(data=data, train={"epochs": 1, "batch_size": 4, "patience": 0})))
    capsys.readouterr()
    code = main(["train", str(config), "--quiet", "--out", str(tmp / "run")])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in err
        assert not (tmp / "run" / "last.pt").exists()  # the error came before training


@pytest.fixture(scope="module")
def clean_trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    return write_folder(root / "folder", n=8), write_nnunet(root / "nnunet", n_cases=5)


@pytest.mark.parametrize("which", [0, 1])
def test_the_undamaged_datasets_train(clean_trees, tmp_path, capsys, which):
    # the control: with no damage both trees train, so an exit code of 2 below is the damage's doing
    data = ({"source": "folder", "path": str(clean_trees[0]), "classes": ["background", "a", "b"]} if which == 0
            else {"source": "nifti", "path": str(clean_trees[1])})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(data=data, train={"epochs": 1, "batch_size": 4, "patience": 0})))
    assert main(["train", str(config), "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "summary.json").exists()


@FUZZ
@given(damage=DAMAGE)
def test_damaged_image_folders_train_or_fail_cleanly(clean_trees, tmp_path_factory, capsys, damage):
    tmp = tmp_path_factory.mktemp("fuzz")
    root = Path(shutil.copytree(clean_trees[0], tmp / "folder"))
    _damage_and_train(root, {"source": "folder", "path": str(root), "classes": ["background", "a", "b"]},
                      damage, tmp, capsys)


@FUZZ
@given(damage=DAMAGE)
def test_damaged_nifti_datasets_train_or_fail_cleanly(clean_trees, tmp_path_factory, capsys, damage):
    tmp = tmp_path_factory.mktemp("fuzz")
    root = Path(shutil.copytree(clean_trees[1], tmp / "nnunet"))
    _damage_and_train(root, {"source": "nifti", "path": str(root)}, damage, tmp, capsys)
