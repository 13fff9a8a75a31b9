"""The folder source: images/ + masks/ by stem, mask encodings, class names, splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data import SOURCES
from segtune.errors import DataError
from tests.data.writers import write_folder


def load(root: Path, **options):
    return SOURCES.build("folder", {"path": str(root), **options}, 0)


def test_integer_masks_load_into_three_splits(tmp_path):
    data = load(write_folder(tmp_path, n=8))
    # 8 images: 1 val, 1 test, 6 train; labels 0..2 give three generic class names
    assert (len(data.train), len(data.val), len(data.test)) == (6, 1, 1)
    assert data.train.images.shape == (6, 1, 16, 16)
    assert data.class_names == ["background", "class_1", "class_2"]
    assert set(data.train.masks.unique().tolist()) == {0, 1, 2}


def test_binary_0_255_masks_read_as_0_1(tmp_path):
    root = write_folder(tmp_path, labels=2)
    for f in (root / "masks").iterdir():
        Image.fromarray((np.asarray(Image.open(f)) * 255).astype(np.uint8)).save(f)
    data = load(root)
    assert data.train.masks.unique().tolist() == [0, 1]
    assert data.class_names == ["background", "class_1"]


def test_palette_png_index_is_the_label(tmp_path):
    root = write_folder(tmp_path, labels=3)
    for f in (root / "masks").iterdir():
        img = Image.open(f).convert("P")
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
        img.save(f)
        assert Image.open(f).mode == "P"
    assert set(load(root).train.masks.unique().tolist()) == {0, 1, 2}


def test_rgb_images_give_three_channels(tmp_path):
    assert load(write_folder(tmp_path, mode="RGB")).in_channels == 3


def test_class_names_from_list_and_from_classes_txt(tmp_path):
    root = write_folder(tmp_path)
    assert load(root, classes=["bg", "a", "b"]).class_names == ["bg", "a", "b"]
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    assert load(root).class_names == ["background", "cat", "dog"]


def test_splits_file_sets_the_splits(tmp_path):
    root = write_folder(tmp_path)
    (root / "splits.json").write_text(json.dumps(
        {"train": ["case0", "case1", "case2"], "val": ["case3.png"], "test": ["case4", "case5"]}))
    data = load(root, splits="splits.json")
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    assert data.info["stems"]["test"] == ["case4", "case5"]


def test_same_split_seed_gives_same_split(tmp_path):
    root = write_folder(tmp_path, n=10)
    a, b = load(root, split_seed=3), load(root, split_seed=3)
    assert a.info["stems"] == b.info["stems"]


def _break_image_without_mask(root):
    (root / "masks" / "case2.png").unlink()


def _break_mask_without_image(root):
    (root / "images" / "case2.png").unlink()


def _break_size_mismatch(root):
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(root / "masks" / "case2.png")


def _break_label_outside_classes(root):
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "masks" / "case2.png")


def _break_truncated(root):
    data = (root / "images" / "case2.png").read_bytes()
    (root / "images" / "case2.png").write_bytes(data[: len(data) // 2])


def _break_not_an_image(root):
    (root / "masks" / "case2.png").write_text("hello")


def _break_3d_stack(root):
    frames = [Image.fromarray(np.zeros((16, 16), np.uint8)) for _ in range(3)]
    frames[0].save(root / "images" / "case2.tif", save_all=True, append_images=frames[1:])
    (root / "images" / "case2.png").unlink()


def _break_volume_in_folder(root):
    (root / "images" / "scan.nii.gz").write_bytes(b"")


def _break_empty(root):
    for f in (root / "images").iterdir():
        f.unlink()


def _break_colour_mask(root):
    Image.fromarray(np.dstack([np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8),
                               np.zeros((16, 16), np.uint8)])).save(root / "masks" / "case2.png")


@pytest.mark.parametrize("break_it, message", [
    (_break_image_without_mask, r"case2\.png: image without a mask.*add masks/case2\.png"),
    (_break_mask_without_image, r"case2\.png: mask without an image"),
    (_break_size_mismatch, r"case2\.png: mask is 16x8 but its image is 16x16"),
    (_break_label_outside_classes, r"case2\.png: label 7 is not one of the 3 declared classes"),
    (_break_truncated, r"case2\.png: cannot read image .*truncated"),
    (_break_not_an_image, r"case2\.png: cannot read mask"),
    (_break_3d_stack, r"case2\.tif: a stack of 3 frames \(3D\)"),
    (_break_volume_in_folder, r"scan\.nii\.gz: a 3D volume where 2D images are expected; use data.source=nifti"),
    (_break_empty, r"no images .* the dataset is empty"),
    (_break_colour_mask, r"case2\.png: a colour \(RGB\) mask"),
])
def test_bad_input_names_the_file_and_the_fix(tmp_path, break_it, message):
    root = write_folder(tmp_path)
    break_it(root)
    with pytest.raises(DataError, match=message):
        load(root, classes=["background", "a", "b"])


def test_a_mask_of_another_size_is_caught_when_both_are_resized(tmp_path):
    # data.size resizes image and mask alike; the mismatch of the stored files must still show
    root = write_folder(tmp_path)
    _break_size_mismatch(root)
    with pytest.raises(DataError, match=r"case2\.png: mask is 16x8 but its image is 16x16"):
        load(root, size=[32, 32])


@pytest.mark.parametrize("splits, message", [
    ({"train": ["case0"], "val": ["nope"]}, r"val lists 'nope', which is not in the dataset"),
    ({"train": ["case0", "case1"], "val": ["case1"]}, r"'case1' is in both train and val"),
    ({"train": ["case0"], "val": ["case1"]}, r"4 case\(s\) in no split, e\.g\. 'case2'"),
    ({"train": [f"case{i}" for i in range(6)], "val": []}, r"the val split is empty"),
])
def test_bad_splits_file(tmp_path, splits, message):
    root = write_folder(tmp_path)
    (root / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(DataError, match=message):
        load(root, splits="splits.json")


def test_too_few_images_for_the_split(tmp_path):
    with pytest.raises(DataError, match=r"1 item\(s\) are too few"):
        load(write_folder(tmp_path, n=1))


def test_missing_path_is_explained():
    with pytest.raises(DataError, match="data.path is required"):
        SOURCES.build("folder", {}, 0)
