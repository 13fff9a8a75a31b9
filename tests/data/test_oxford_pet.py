"""The oxford_pet source on a fabricated miniature Oxford-IIIT Pet tree (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data import SOURCES
from segtune.errors import DataError
from tests.data.writers import trimap, write_pets

def load(root: Path, **options):
    return SOURCES.build("oxford_pet", {"path": str(root), "size": [16, 16], **options}, 0)


def test_official_lists_give_the_splits(tmp_path):
    data = load(write_pets(tmp_path))
    # trainval (6) -> 5 train + 1 val; test.txt (2, comment skipped) -> test
    assert (len(data.train), len(data.val), len(data.test)) == (5, 1, 2)
    assert data.train.images.shape == (5, 3, 16, 16)
    assert data.class_names == ["background", "pet"]


def test_foreground_with_or_without_border(tmp_path):
    root = write_pets(tmp_path)
    with_border = load(root, size=[16, 20]).test.masks[0]
    pet_only = load(root, size=[16, 20], foreground="pet").test.masks[0]
    t = trimap(16, 20)
    assert np.array_equal(with_border.numpy(), np.isin(t, [1, 3]).astype(np.int64))
    assert np.array_equal(pet_only.numpy(), (t == 1).astype(np.int64))


def test_n_max_limits_each_list(tmp_path):
    data = load(write_pets(tmp_path), n_max=3)
    assert (len(data.train) + len(data.val), len(data.test)) == (3, 2)


@pytest.mark.parametrize("break_it, message", [
    (lambda r: (r / "images" / "beagle_2.jpg").unlink(), r"beagle_2\.jpg: image not found, but beagle_2 is in"),
    (lambda r: (r / "annotations" / "trimaps" / "boxer_1.png").unlink(), r"boxer_1\.png: trimap not found"),
    (lambda r: (r / "annotations" / "test.txt").unlink(), r"test\.txt: list file not found"),
    (lambda r: (r / "annotations" / "test.txt").write_text("\n"), r"test\.txt: lists no images"),
    (lambda r: Image.fromarray(np.full((16, 20), 5, np.uint8)).save(r / "annotations" / "trimaps" / "beagle_1.png"),
     r"beagle_1\.png: trimap value 5 found"),
    (lambda r: (r / "images" / "Bengal_1.jpg").write_bytes(b"\xff\xd8\xff"), r"Bengal_1\.jpg: cannot read image"),
    # both are resized to data.size on reading; the stored sizes must still agree
    (lambda r: Image.fromarray(trimap(10, 20)).save(r / "annotations" / "trimaps" / "beagle_1.png"),
     r"beagle_1\.png: trimap is 20x10 but its image is 20x1[68]"),
])
def test_bad_input(tmp_path, break_it, message):
    root = write_pets(tmp_path)
    break_it(root)
    with pytest.raises(DataError, match=message):
        load(root)


def test_missing_folder_says_how_to_download(tmp_path):
    with pytest.raises(DataError, match="segtune download oxford-pet"):
        load(tmp_path / "nope")
