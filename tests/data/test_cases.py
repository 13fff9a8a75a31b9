"""Cases and k-fold cross-validation by case: the folds of every source partition its cases, test held out."""

from __future__ import annotations

import pytest

from segtune.config import Config
from segtune.errors import ConfigError
from segtune.training.runtime import load_data
from tests.data.writers import write_folder, write_nnunet, write_nnunet_test, write_pets

SOURCES = {  # source -> (data options, writer of its files or None)
    "demo": ({"spacing": 2}, None),
    "synthetic": ({"n_train": 6, "n_val": 3, "n_test": 2, "size": 16}, None),
    "folder": ({"test_fraction": 0.2}, lambda root: write_folder(root, n=10)),
    "nifti": ({}, lambda root: write_nnunet_test(write_nnunet(root), ids=range(10, 11))),
    "oxford_pet": ({"size": [16, 16]}, write_pets),
}


def fold_data(source, tmp_path, folds, fold):
    options, write = SOURCES[source]
    root = tmp_path / source
    path = {"path": str(root if root.is_dir() else write(root))} if write else {}
    config = Config.model_validate({"data": {"source": source, **options, **path, "folds": folds, "fold": fold}})
    return load_data(config)


def ids(split) -> list[str]:
    return [c.case_id for c in split.cases]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_folds_partition_the_cases_and_hold_out_the_test_cases(source, tmp_path):
    folds = 3
    runs = [fold_data(source, tmp_path, folds, k) for k in range(folds)]
    test = ids(runs[0].test)
    # the test split is the same in every fold and in none of them
    assert all(ids(d.test) == test for d in runs)
    vals = [ids(d.val) for d in runs]
    pool = set(ids(runs[0].train)) | set(vals[0])
    # every train and val case is in exactly one fold's val split, and never in the test split
    assert sorted(c for v in vals for c in v) == sorted(pool)
    assert not pool & set(test)
    for d, val in zip(runs, vals):
        assert set(ids(d.train)) == pool - set(val)  # a fold's train cases are the other folds'
        assert len(d.val) == sum(c.n for c in d.val.cases)  # the images of a case go with it


def test_demo_fold_keeps_the_slices_of_each_block_together(tmp_path):
    data = fold_data("demo", tmp_path, 4, 2)
    # a case is a contiguous block: its slice numbers follow one another
    start = 0
    for case in data.val.cases:
        numbers = data.info["slices"]["val"][start:start + case.n]
        assert numbers == list(range(numbers[0], numbers[0] + case.n))
        start += case.n
    assert data.val.cases[0].spacing == (2.0, 2.0, 2.0)


def test_same_folds_for_every_run_seed(tmp_path):
    a, b = (load_data(Config.model_validate({"seed": s, "data": {"source": "demo", "folds": 3, "fold": 1}}))
            for s in (0, 5))
    assert ids(a.val) == ids(b.val)


def test_fold_out_of_range_is_a_config_error():
    with pytest.raises(ValueError, match="data.fold=3, but data.folds=3 gives folds 0 to 2"):
        Config.model_validate({"data": {"source": "demo", "folds": 3, "fold": 3}})


def test_folds_need_a_test_split_apart_from_val(tmp_path):
    root = write_folder(tmp_path, n=8)
    config = Config.model_validate({"data": {"source": "folder", "path": str(root), "test_fraction": 0.0, "folds": 2}})
    with pytest.raises(ConfigError, match="the test split is the val split here"):
        load_data(config)


def test_nifti_spacing_comes_from_the_header(tmp_path):
    data = fold_data("nifti", tmp_path, 2, 0)
    # the writer's affine: 1.5 x 1.5 mm in plane, 3 mm between the axial slices
    assert data.test.cases[0].spacing == (3.0, 1.5, 1.5)


def test_pixel_spacing_is_used_for_images(tmp_path):
    config = Config.model_validate({"data": {"source": "folder", "path": str(write_folder(tmp_path)),
                                             "pixel_spacing": [0.5, 0.25]}})
    assert load_data(config).test.cases[0].spacing == (1.0, 0.5, 0.25)


def test_val_from_rest_validates_on_what_train_fraction_leaves_out():
    base = {"source": "synthetic", "n_train": 10, "n_val": 3, "size": 16, "train_fraction": 0.6}
    fixed = load_data(Config.model_validate({"data": base}))
    rest = load_data(Config.model_validate({"data": {**base, "val_from": "rest"}}))
    # the same training images either way; the 4 left out are the val split, the fixed 3 are not used
    assert fixed.train.images.equal(rest.train.images)
    assert len(fixed.val) == 3 and len(rest.val) == 4
    whole = load_data(Config.model_validate({"data": {**base, "train_fraction": 1.0, "val_from": "rest"}}))
    assert whole.val.images.equal(load_data(Config.model_validate({"data": {**base, "train_fraction": 1.0}})).val.images)
