"""The split rules: nnU-Net's splits_final.json folds, a folder's splits.json, their precedence, their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segtune.data import SOURCES
from segtune.data.splits import describe_split, read_folds_file
from segtune.errors import ConfigError, DataError
from tests.data.writers import write_folder, write_nnunet, write_nnunet_test

IDS = [f"case_{i:03d}" for i in range(7)]
FOLDS = [{"train": IDS[2:], "val": IDS[:2]}, {"train": IDS[:5], "val": IDS[5:]}]


def load(source: str, root: Path, **options):
    return SOURCES.build(source, {"path": str(root), **options}, 0)


def case_ids(data) -> dict[str, list[str]]:
    listed = data.info.get("cases")
    if listed is None:
        return data.info["stems"]
    return {name: [c for c, _ in listed[name]] for name in ("train", "val", "test")}


def write_json(tree, file: Path) -> Path:
    file.write_text(json.dumps(tree))
    return file


def test_splits_final_fold_gives_val_and_cuts_test_from_its_train(tmp_path):
    root = write_nnunet(tmp_path)
    write_json(FOLDS, root / "splits_final.json")
    ids = case_ids(data := load("nifti", root, fold=1))
    assert ids["val"] == ["case_005", "case_006"]
    # test_fraction (15 % of 7 cases: 1) comes out of the fold's train cases, never out of its val
    assert len(ids["test"]) == 1 and ids["test"][0] in FOLDS[1]["train"]
    assert sorted(ids["train"] + ids["test"]) == FOLDS[1]["train"]
    assert data.info["split"]["val"] == "fold 1 of splits_final.json"
    assert case_ids(load("nifti", root))["val"] == ["case_000", "case_001"]  # data.fold defaults to 0


def test_splits_final_with_labels_ts_keeps_the_fold_as_it_is(tmp_path):
    root = write_nnunet_test(write_nnunet(tmp_path))
    write_json(FOLDS, root / "splits_final.json")
    data = load("nifti", root)
    assert case_ids(data) == {"train": FOLDS[0]["train"], "val": FOLDS[0]["val"], "test": ["case_010", "case_011"]}
    assert describe_split(data.info["split"], {"train": 5, "val": 2, "test": 2}) == (
        "test: imagesTs/labelsTs (2 cases); val: fold 0 of splits_final.json (2 cases); "
        "train: fold 0 of splits_final.json (5 cases)")


def test_splits_final_without_a_test_share_tests_on_val(tmp_path):
    root = write_nnunet(tmp_path)
    write_json(FOLDS, root / "splits_final.json")
    data = load("nifti", root, test_fraction=0.0)
    assert case_ids(data)["train"] == FOLDS[0]["train"] and case_ids(data)["test"] == FOLDS[0]["val"]
    assert "no test cases: test scores are those of the val split" in data.info["split"]["notes"]


def test_splits_final_of_cases_too_few_for_a_test_share_tests_on_val_and_says_so(tmp_path):
    # two cases, one train and one val: 15 % of 2 is no case, so the fold stays whole
    root = write_nnunet(tmp_path, n_cases=2)
    write_json([{"train": ["case_000"], "val": ["case_001"]}], root / "splits_final.json")
    data = load("nifti", root)
    assert case_ids(data) == {"train": ["case_000"], "val": ["case_001"], "test": ["case_001"]}
    assert data.info["split"]["train"] == "fold 0 of splits_final.json"  # not "less the test cases"
    assert "no test cases: test scores are those of the val split" in data.info["split"]["notes"]


def test_a_folders_splits_json_is_used_without_naming_it(tmp_path):
    root = write_folder(tmp_path)
    write_json({"train": ["case0", "case1", "case2"], "val": ["case3"], "test": ["case4", "case5"]},
               root / "splits.json")
    data = load("folder", root)
    assert data.info["stems"] == {"train": ["case0", "case1", "case2"], "val": ["case3"], "test": ["case4", "case5"]}
    assert data.info["split"]["val"] == "splits.json"


def test_precedence_data_splits_then_splits_final_then_splits_json_then_random(tmp_path):
    root = write_nnunet(tmp_path / "d")
    random = case_ids(load("nifti", root))
    assert load("nifti", root).info["split"]["val"] == "random 15%, split_seed 0"
    write_json({"train": IDS[:5], "val": IDS[5:6], "test": IDS[6:]}, root / "splits.json")
    assert case_ids(load("nifti", root))["val"] == ["case_005"] != random["val"]
    write_json(FOLDS, root / "splits_final.json")
    data = load("nifti", root)
    assert case_ids(data)["val"] == ["case_000", "case_001"]
    assert "splits.json is not used: splits_final.json comes first" in data.info["split"]["notes"]
    (tmp_path / "elsewhere").mkdir()
    mine = write_json({"train": IDS[1:], "val": IDS[:1]}, tmp_path / "elsewhere" / "mine.json")  # absolute path
    data = load("nifti", root, splits=str(mine))
    assert case_ids(data)["val"] == ["case_000"] and case_ids(data)["test"] == ["case_000"]
    assert data.info["split"]["val"] == f"{mine} (data.splits)"
    assert {"splits_final.json is not used: data.splits comes first",
            "splits.json is not used: data.splits comes first"} <= set(data.info["split"]["notes"])


def test_data_splits_may_name_a_folds_file(tmp_path):
    root = write_folder(tmp_path, n=6)
    stems = [f"case{i}" for i in range(6)]
    write_json([{"train": stems[:4], "val": stems[4:]}, {"train": stems[2:], "val": stems[:2]}],
               root / "folds.json")
    data = load("folder", root, splits="folds.json", fold=1, test_fraction=0.0)
    assert data.info["stems"]["val"] == ["case0", "case1"]
    assert data.info["split"]["train"] == "fold 1 of folds.json (data.splits)"


@pytest.mark.parametrize("source, write, options", [
    ("nifti", lambda root: write_nnunet(root), {}),
    ("nifti", lambda root: write_nnunet_test(write_nnunet(root)), {}),
    ("nifti", lambda root: write_json(FOLDS, write_nnunet(root) / "splits_final.json").parent, {"fold": 1}),
    ("nifti", lambda root: write_json(FOLDS, write_nnunet_test(write_nnunet(root)) / "splits_final.json").parent, {}),
    ("folder", lambda root: write_folder(root, n=10), {"split_seed": 4}),
])
def test_no_case_is_in_two_splits(tmp_path, source, write, options):
    ids = case_ids(load(source, write(tmp_path / "d"), **options))
    train, val, test = (set(ids[k]) for k in ("train", "val", "test"))
    assert train and val and test
    assert not train & val and not train & test and not val & test


def test_fold_out_of_range_is_a_config_error(tmp_path):
    root = write_nnunet(tmp_path)
    write_json(FOLDS, root / "splits_final.json")
    with pytest.raises(ConfigError, match=r"splits_final\.json: data\.fold=5, but the file holds 2 fold\(s\), 0 to 1"):
        load("nifti", root, fold=5)


def test_fold_without_a_folds_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.fold=1, but no splits_final\.json is in use; put nnU-Net's"):
        load("nifti", write_nnunet(tmp_path), fold=1)
    root = write_folder(tmp_path / "f")
    write_json({"train": ["case0", "case1", "case2", "case3"], "val": ["case4", "case5"]}, root / "splits.json")
    with pytest.raises(ConfigError, match=r"data\.fold=2, but no splits_final\.json is in use"):
        load("folder", root, fold=2)


@pytest.mark.parametrize("folds, message", [
    ({"train": IDS}, r"expected nnU-Net's list of folds"),
    ([{"train": IDS[1:], "val": IDS[:1], "test": []}], r"expected nnU-Net's list of folds"),
    ([{"train": IDS[1:], "val": ["case_099"]}], r"fold 0 val lists 'case_099', which is not in the dataset"),
    ([{"train": IDS, "val": IDS[:1]}], r"'case_000' is in both train and val"),
    ([{"train": IDS[2:], "val": IDS[:1]}], r"1 case\(s\) in no split, e\.g\. 'case_001'; add them to train or val"),
    ([{"train": IDS, "val": []}], r"fold 0 the val split is empty"),
])
def test_bad_folds_file(tmp_path, folds, message):
    root = write_nnunet(tmp_path)
    write_json(folds, root / "splits_final.json")
    with pytest.raises(DataError, match=rf"splits_final\.json: {message}"):
        load("nifti", root)


def test_read_folds_file_accepts_file_names_for_ids(tmp_path):
    file = write_json([{"train": ["a.png", "./imagesTr/b.nii.gz"], "val": ["c"]}], tmp_path / "folds.json")
    assert read_folds_file(file, ["a", "b", "c"], 0) == {"train": [0, 1], "val": [2]}


def test_a_test_list_beside_labels_ts_is_an_error(tmp_path):
    root = write_nnunet_test(write_nnunet(tmp_path))
    write_json({"train": IDS[:5], "val": IDS[5:6], "test": IDS[6:]}, root / "splits.json")
    with pytest.raises(DataError, match=r"splits\.json: lists 1 test case\(s\), but imagesTs/labelsTs is this "
                                        r"dataset's test split; move them to train or val"):
        load("nifti", root)


def test_a_named_splits_file_that_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: splits file not found"):
        load("folder", write_folder(tmp_path), splits="nope.json")
