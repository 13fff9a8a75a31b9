"""The nifti source: nnU-Net raw and MSD layouts, slicing, split by case, channels, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segtune.data import SOURCES
from segtune.errors import ConfigError, DataError
from segtune.registry import RegistryError
from tests.data.writers import (SHAPE, case_volumes, save, write_msd, write_msd_test, write_nnunet,
                                write_nnunet_test, write_two_spacings)

def load(root: Path, **options):
    return SOURCES.build("nifti", {"path": str(root), **options}, 0)


def test_nnunet_layout_slices_axially_and_splits_by_case(tmp_path):
    data = load(write_nnunet(tmp_path))
    assert data.class_names == ["background", "liver", "tumour"]
    assert data.info["layout"] == "nnunet"
    # 7 cases: 1 val, 1 test, 5 train, each 6 axial slices of 8x8
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 6)
    assert data.train.images.shape[1:] == (1, 8, 8)
    cases = {name: [c for c, _ in data.info["cases"][name]] for name in ("train", "val", "test")}
    assert sum(map(len, cases.values())) == 7
    assert not set(cases["train"]) & (set(cases["val"]) | set(cases["test"]))  # no case in two splits
    assert set(cases["val"]).isdisjoint(cases["test"])


def test_slices_keep_the_voxels_of_their_case(tmp_path):
    data = load(write_nnunet(tmp_path), axis=0)
    case_id, n = data.info["cases"]["test"][0]
    _, label = case_volumes(int(case_id.split("_")[1]))
    assert n == SHAPE[0]
    assert data.test.masks.shape == (8, 8, 6)
    assert np.array_equal(data.test.masks[:n].numpy(), label)


def test_nnunet_channels_become_input_channels(tmp_path):
    data = load(write_nnunet(tmp_path, n_channels=2))
    assert data.in_channels == 2
    # channel 1 was written with a larger gain than channel 0
    assert float(data.train.images[:, 1].max()) > float(data.train.images[:, 0].max())


def test_msd_layout_with_4d_images(tmp_path):
    data = load(write_msd(tmp_path), axis=1)
    assert data.info["layout"] == "msd"
    assert data.in_channels == 2
    assert data.class_names == ["background", "edema", "core"]
    assert data.train.images.shape[1:] == (2, 8, 6)


def test_size_resizes_slices(tmp_path):
    data = load(write_nnunet(tmp_path), size=[16, 16])
    assert data.train.images.shape[2:] == (16, 16)
    assert set(data.train.masks.unique().tolist()) == {0, 1, 2}


def test_splits_file_by_case(tmp_path):
    root = write_nnunet(tmp_path, n_cases=4)
    (root / "splits.json").write_text(json.dumps(
        {"train": ["case_000", "case_001"], "val": ["case_002"], "test": ["case_003"]}))
    data = load(root, splits="splits.json")
    assert data.info["cases"]["test"] == [["case_003", 6]]


def _nn_missing_label(root):
    (root / "labelsTr" / "case_002.nii.gz").unlink()


def _nn_missing_channel(root):
    (root / "imagesTr" / "case_002_0000.nii.gz").unlink()


def _nn_num_training(root):
    tree = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**tree, "numTraining": 9}))


def _nn_shape_mismatch(root):
    save(np.zeros((8, 8, 5), np.uint8), root / "labelsTr" / "case_002.nii.gz")


def _nn_affine_mismatch(root):
    nib.save(nib.Nifti1Image(case_volumes(2)[1], np.diag([1.0, 1.0, 1.0, 1.0])), str(root / "labelsTr" / "case_002.nii.gz"))


def _nn_label_outside(root):
    save(np.full(SHAPE, 4, np.uint8), root / "labelsTr" / "case_002.nii.gz")


def _nn_truncated(root):
    data = (root / "imagesTr" / "case_002_0000.nii.gz").read_bytes()
    (root / "imagesTr" / "case_002_0000.nii.gz").write_bytes(data[: len(data) // 2])


def _nn_no_json(root):
    (root / "dataset.json").unlink()


def _nn_bad_json(root):
    (root / "dataset.json").write_text("{not json")


def _nn_labels_not_contiguous(root):
    tree = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**tree, "labels": {"background": 0, "tumour": 2}}))


def _nn_mixed_sizes(root):
    images, label = np.zeros((10, 8, 6), np.float32), np.zeros((10, 8, 6), np.uint8)
    save(images, root / "imagesTr" / "case_002_0000.nii.gz")
    save(label, root / "labelsTr" / "case_002.nii.gz")


def _nn_truncated_label(root):
    data = (root / "labelsTr" / "case_002.nii.gz").read_bytes()
    (root / "labelsTr" / "case_002.nii.gz").write_bytes(data[: len(data) // 2])


def _nn_empty(root):
    for folder in ("imagesTr", "labelsTr"):
        for f in (root / folder).iterdir():
            f.unlink()
    tree = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**tree, "numTraining": 0}))


@pytest.mark.parametrize("break_it, message", [
    (_nn_truncated_label, r"case_002\.nii\.gz: cannot read"),
    (_nn_empty, r"no labelled cases found; the dataset is empty"),
    (_nn_missing_label, r"case_002_0000\.nii\.gz: image without a label in labelsTr/"),
    (_nn_missing_channel, r"case_002_0000\.nii\.gz: not found, but case_002\.nii\.gz is in labelsTr/"),
    (_nn_num_training, r"dataset\.json: numTraining is 9 but 7 labelled cases"),
    (_nn_shape_mismatch, r"case_002\.nii\.gz: label shape \(8, 8, 5\) differs from its image \(8, 8, 6\)"),
    (_nn_affine_mismatch, r"case_002\.nii\.gz: its affine .* differs from its image case_002_0000\.nii\.gz"),
    (_nn_label_outside, r"case_002\.nii\.gz: label 4 is not one of the 3 classes in dataset\.json"),
    (_nn_truncated, r"case_002_0000\.nii\.gz: cannot read"),
    (_nn_no_json, r"dataset\.json: not found"),
    (_nn_bad_json, r"dataset\.json: not valid JSON"),
    (_nn_labels_not_contiguous, r"label values \[0, 2\] must be 0, 1"),
    (_nn_mixed_sizes, r"case_002_0000\.nii\.gz: slices are 10x8 .* set data\.size"),
])
def test_bad_nnunet_input(tmp_path, break_it, message):
    root = write_nnunet(tmp_path)
    break_it(root)
    with pytest.raises(DataError, match=message):
        load(root)


def test_msd_file_listed_but_missing(tmp_path):
    root = write_msd(tmp_path, n_cases=4)
    (root / "labelsTr" / "vol_1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"dataset\.json: lists \./labelsTr/vol_1\.nii\.gz, but .* does not exist"):
        load(root)


def test_msd_channels_disagree_with_modality(tmp_path):
    root = write_msd(tmp_path, n_cases=4, n_channels=2)
    tree = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**tree, "modality": {"0": "T1", "1": "T2", "2": "FLAIR"}}))
    with pytest.raises(DataError, match=r"vol_0\.nii\.gz: holds 2 channel\(s\) but dataset\.json declares 3"):
        load(root)


def case_ids(data) -> dict[str, list[str]]:
    return {name: [c for c, _ in data.info["cases"][name]] for name in ("train", "val", "test")}


def test_labelled_images_ts_are_the_test_split(tmp_path):
    data = load(write_nnunet_test(write_nnunet(tmp_path)))
    ids = case_ids(data)
    assert ids["test"] == ["case_010", "case_011"]
    # val is cut from the 7 imagesTr cases alone (15 % of 7 is 1); test_fraction takes none of them
    assert (len(ids["val"]), len(ids["train"])) == (1, 6)
    assert sorted(ids["train"] + ids["val"]) == [f"case_{i:03d}" for i in range(7)]
    assert (len(data.train), len(data.val), len(data.test)) == (36, 6, 12)
    split = data.info["split"]
    assert split["test"] == "imagesTs/labelsTs"
    assert "data.test_fraction is not used" in split["notes"][0]


def test_test_slices_are_those_of_the_labels_ts_files(tmp_path):
    data = load(write_nnunet_test(write_nnunet(tmp_path, n_cases=4), ids=range(10, 11)), axis=0)
    _, label = case_volumes(10)
    assert data.info["cases"]["test"] == [["case_010", SHAPE[0]]]
    assert np.array_equal(data.test.masks.numpy(), label)


def test_images_ts_without_labels_ts_leaves_the_test_split_to_images_tr(tmp_path):
    data = load(write_nnunet_test(write_nnunet(tmp_path), labels=False))
    ids = case_ids(data)
    # as without imagesTs: 7 cases give 1 val, 1 test, 5 train, all from imagesTr
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (5, 1, 1)
    assert not {"case_010", "case_011"} & {c for v in ids.values() for c in v}
    assert data.info["split"]["notes"][0].startswith("imagesTs/ holds 2 case(s) but there is no labelsTs/")


def _ts_image_without_label(root):
    (root / "labelsTs" / "case_011.nii.gz").unlink()


def _ts_label_without_image(root):
    (root / "imagesTs" / "case_011_0000.nii.gz").unlink()


def _ts_labels_without_images(root):
    for f in (root / "imagesTs").iterdir():
        f.unlink()
    (root / "imagesTs").rmdir()


def _ts_case_also_in_tr(root):
    images, label = case_volumes(0)
    save(images[..., 0], root / "imagesTs" / "case_000_0000.nii.gz")
    save(label, root / "labelsTs" / "case_000.nii.gz")


def _ts_label_outside_classes(root):
    save(np.full(SHAPE, 5, np.uint8), root / "labelsTs" / "case_011.nii.gz")


@pytest.mark.parametrize("break_it, message", [
    (_ts_image_without_label, r"imagesTs/case_011_0000\.nii\.gz: image without a label in labelsTs/ .*add its "
                              r"label to labelsTs/, or remove labelsTs/ to cut the test split from imagesTr"),
    (_ts_label_without_image, r"case_011_0000\.nii\.gz: not found, but case_011\.nii\.gz is in labelsTs/"),
    (_ts_labels_without_images, r"labelsTs: test labels without imagesTs/"),
    (_ts_case_also_in_tr, r"imagesTs: case 'case_000' is in imagesTr/ too"),
    (_ts_label_outside_classes, r"labelsTs/case_011\.nii\.gz: label 5 is not one of the 3 classes"),
])
def test_bad_test_cases(tmp_path, break_it, message):
    root = write_nnunet_test(write_nnunet(tmp_path))
    break_it(root)
    with pytest.raises(DataError, match=message):
        load(root)


def test_a_test_fraction_beside_labels_ts_is_a_config_error(tmp_path):
    root = write_nnunet_test(write_nnunet(tmp_path))
    with pytest.raises(ConfigError, match=r"data\.test_fraction=0\.3, but imagesTs/labelsTs is this dataset's "
                                          r"test split.*remove data\.test_fraction"):
        load(root, test_fraction=0.3)
    assert case_ids(load(root, test_fraction=0.15))["test"] == ["case_010", "case_011"]  # the default is fine


def test_msd_test_list_without_labels_keeps_the_split_of_images_tr(tmp_path):
    # the Decathlon ships imagesTs without labels: as before, test is cut from imagesTr
    data = load(write_msd_test(write_msd(tmp_path), labels=False))
    ids = case_ids(data)
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (5, 1, 1)
    assert all(c.startswith("vol_") and int(c[4:]) < 7 for v in ids.values() for c in v)
    assert "imagesTs/ holds 2 case(s) but there is no labelsTs/" in data.info["split"]["notes"][0]


def test_msd_with_labels_ts_tests_on_its_test_list(tmp_path):
    data = load(write_msd_test(write_msd(tmp_path)))
    assert case_ids(data)["test"] == ["vol_10", "vol_11"]
    assert data.test.images.shape[1] == 2 and data.info["split"]["test"] == "imagesTs/labelsTs"


def test_msd_test_image_without_label(tmp_path):
    root = write_msd_test(write_msd(tmp_path))
    (root / "labelsTs" / "vol_11.nii.gz").unlink()
    with pytest.raises(DataError, match=r"imagesTs/vol_11\.nii\.gz: test image without a label in labelsTs/; "
                                        r"add labelsTs/vol_11\.nii\.gz"):
        load(root)


def test_spacing_resamples_every_case_in_plane_to_the_target(tmp_path):
    root = write_two_spacings(tmp_path)
    with pytest.raises(DataError, match="data.spacing"):  # 20x20 against 10x20 slices at native spacing
        load(root)
    data = load(root, spacing=1.0)
    assert data.train.images.shape == data.val.images.shape == (4, 1, 20, 20)  # the slicing axis kept: 4 slices
    assert data.info["spacing"] == {"case_000": [3.0, 1.0, 1.0], "case_001": [3.0, 1.0, 1.0]}
    assert data.info["native"]["canvas"] == [20, 20]
    assert data.info["native"]["cases"]["case_001"]["size"] == [10, 20]
    assert data.info["native"]["cases"]["case_001"]["spacing"] == [3.0, 2.0, 1.0]
    assert data.info["native"]["cases"]["case_001"]["box"] == [0, 0, 20, 20]
    # the square covers 8 x 8 mm: 64 pixels per slice at 1 mm in both cases, and labels stay labels
    for split in (data.train, data.val):
        assert split.masks.dtype == torch.int64
        assert set(split.masks.unique().tolist()) <= {0, 1, 2}
        assert [(split.masks[k] == 1).sum().item() for k in range(4)] == [64] * 4
    assert (data.train.masks == 2).sum().item() == 4 * 2 * 16
    assert torch.equal(data.val.masks[:, 6:14, 6:14], torch.ones(4, 8, 8, dtype=torch.int64))
    # the image is interpolated: the square's inside still reads about 40
    assert float(data.val.images[:, 0, 8:12, 8:12].mean()) == pytest.approx(40.0, abs=2.0)


def test_spacing_to_a_coarser_grid_pads_cases_of_different_sizes(tmp_path):
    root = write_two_spacings(tmp_path)
    data = load(root, spacing=[2.0, 1.5])
    # case_000: 20 x 20 at 1 mm -> 10 x 13; case_001: 10 x 20 at 2 x 1 mm -> 10 x 13
    assert data.train.images.shape[2:] == (10, 13)
    assert data.info["spacing"]["case_000"] == pytest.approx([3.0, 2.0, 20 / 13])
    data = load(root, spacing=[0.5, 2.0])  # 40 x 10 both
    assert data.val.images.shape[2:] == (40, 10)


def test_spacing_pads_a_smaller_field_of_view_onto_a_common_canvas(tmp_path):
    root = write_two_spacings(tmp_path)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])  # case_001 now 12 x 12 mm: 6 x 6 voxels of 2 mm, all class 1
    nib.save(nib.Nifti1Image(np.full((6, 6, 4), 40.0, np.float32), affine),
             str(root / "imagesTr" / "case_001_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4), np.uint8), affine), str(root / "labelsTr" / "case_001.nii.gz"))
    data = load(root, spacing=2.0)  # case_000 -> 10 x 10; case_001 stays 6 x 6, centred on the 10 x 10 canvas
    assert data.val.images.shape[2:] == (10, 10)
    assert data.info["native"]["cases"]["case_001"] == {"size": [6, 6], "spacing": [3.0, 2.0, 2.0], "box": [2, 2, 6, 6],
                                                        "label": str(root / "labelsTr" / "case_001.nii.gz")}
    assert int(data.val.masks.sum()) == 4 * 36 and torch.all(data.val.masks[:, 2:8, 2:8] == 1)
    assert float(data.val.images.min()) == 40.0  # padded with the case's least value


@pytest.mark.parametrize("value", ["auto", 0, -1.0, [1.0, 0.0], [1, 2, 3], True, float("inf"), 1e300])
def test_a_bad_spacing_is_a_config_error_naming_the_field(tmp_path, value):
    with pytest.raises(RegistryError, match=r"spacing=.*expected a spacing in mm, > 0 and < 1000"):
        load(write_two_spacings(tmp_path), spacing=value)


def test_a_spacing_that_leaves_too_few_pixels_is_a_data_error_naming_the_case(tmp_path):
    from segtune.errors import DataError

    with pytest.raises(DataError, match=r"case_000_0000.nii.gz: resampled to data.spacing=50.0 mm its slices would "
                                        r"be \d+x\d+ pixels \(at least 2"):
        load(write_two_spacings(tmp_path), spacing=50.0)


def test_spacing_and_resize_together_are_refused(tmp_path):
    from segtune.config import build_config
    from segtune.errors import ConfigError

    tree = {"data": {"source": "nifti", "path": str(write_two_spacings(tmp_path)), "spacing": 1.0, "resize": [16, 16]}}
    with pytest.raises(ConfigError, match=r"data.resize=\[16, 16\] and data.spacing=1.0 are both set"):
        build_config(tree)


def test_spacing_and_size_together_are_refused(tmp_path):
    with pytest.raises(RegistryError, match=r"spacing=1.0 and size=\(16, 16\) are both set"):
        load(write_two_spacings(tmp_path), spacing=1.0, size=[16, 16])
