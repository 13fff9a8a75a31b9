"""segtune inspect: layout detection, the fingerprint's numbers and its warnings (the plan: test_plan.py)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from tests.data.writers import write_folder, write_nnunet, write_nnunet_test

from segtune.cli import main
from segtune.config import build_config, data_config
from segtune.errors import DataError
from segtune.data.fingerprint import detect_source, fingerprint, format_fingerprint, survey


def test_layouts_are_recognised(tmp_path):
    assert detect_source(write_nnunet(tmp_path / "nn", n_cases=3)) == "nifti"
    assert detect_source(write_folder(tmp_path / "f", n=2)) == "folder"
    (tmp_path / "pets" / "annotations" / "trimaps").mkdir(parents=True)
    assert detect_source(tmp_path / "pets") == "oxford_pet"
    with pytest.raises(DataError, match="no known layout"):
        detect_source(tmp_path)


def test_config_file_folder_and_set_give_the_same_data_section(tmp_path):
    root = write_folder(tmp_path / "f", n=2)
    (tmp_path / "run.yaml").write_text(f"data:\n  source: folder\n  path: {root}\n")
    by_folder = data_config(str(root)).data
    assert by_folder == data_config(str(tmp_path / "run.yaml")).data
    assert by_folder == data_config(None, ["data.source=folder", f"data.path={root}"]).data
    with pytest.raises(DataError, match="no such dataset folder or config file"):
        data_config(str(tmp_path / "nope"))


def test_nifti_fingerprint_counts_cases_spacings_and_classes(tmp_path):
    fp = fingerprint(data_config(str(write_nnunet(tmp_path, n_cases=5, n_channels=2))))
    assert fp["n_cases"] == {"train": 3, "val": 1, "test": 1}
    assert fp["n_images"] == {"train": 18, "val": 6, "test": 6}
    assert fp["sizes"] == {"8x8x6": 5}
    assert fp["spacings"] == {"1.5x1.5x3.0": 5}
    assert fp["channels"] == 2 and len(fp["intensity"]) == 2
    fractions = fp["classes"]["train"]["fraction"]
    assert sum(fractions.values()) == pytest.approx(1.0)
    # the liver block is 3*4*4 = 48 of 384 voxels per case
    assert fractions["liver"] == pytest.approx(48 / 384)
    assert fp["median_spacing"] == [1.5, 1.5, 3.0] and fp["modalities"] == ["mod0", "mod1"]
    # the training foreground (liver and tumour blocks) is brighter than the background: 50 + 10 c per label
    assert fp["foreground_intensity"]["mean"][1] > fp["intensity"][1]["mean"]


def test_warnings_for_missing_class_imbalance_and_mixed_sizes(tmp_path):
    root = write_folder(tmp_path, n=6, labels=2)
    for i in range(4):  # class 2: one pixel in each of case0..case3, so under 1 % of the pixels
        mask = np.asarray(Image.open(root / "masks" / f"case{i}.png")).copy()
        mask[0, 0] = 2
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    for folder in ("images", "masks"):  # case5 is 20x16, the others 16x16
        Image.fromarray(np.zeros((20, 16), np.uint8)).save(root / folder / "case5.png")
    (root / "splits.json").write_text(json.dumps(
        {"train": ["case0", "case1", "case2", "case3"], "val": ["case4"], "test": ["case5"]}))
    # planned, data.size resizes the mixed sizes: the fingerprint of a plan: off config resizes for its report
    assert data_config(str(root), ["data.splits=splits.json"]).data.options["size"] == (16, 16)
    fp = fingerprint(data_config(str(root), ["data.splits=splits.json", "plan=off"]))
    text = "\n".join(fp["warnings"])
    assert "mixed sizes: 2 different (H, W) among 6 files" in text and fp["slice_size"] == [16, 16]
    assert "class(es) class_2 missing from the val split" in text
    assert "extreme imbalance: class_2" in text


def test_anisotropic_volumes_are_planned_across_the_coarse_axis(tmp_path):
    root = write_nnunet(tmp_path, n_cases=4)
    for path in [*(root / "imagesTr").iterdir(), *(root / "labelsTr").iterdir()]:  # 1 x 1 x 4 mm voxels
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([1.0, 1.0, 4.0, 1.0])), str(path))
    fp = fingerprint(data_config(str(root), ["data.axis=0"]))
    assert "anisotropic voxels" in fp["warnings"][0] and "data.axis=2 does not" in fp["warnings"][0]
    assert data_config(str(root)).data.options["axis"] == 2  # the plan's axis


def test_in_plane_spacings_that_differ_between_cases_are_warned_about(tmp_path):
    root = write_nnunet(tmp_path, n_cases=4)
    for path in [root / "imagesTr" / "case_000_0000.nii.gz", root / "labelsTr" / "case_000.nii.gz"]:
        image = nib.load(path)  # case 0 at 0.5 mm in plane, the others at 1.5 mm: 3x
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([0.5, 0.5, 3.0, 1.0])), str(path))
    head = survey("nifti", {"path": str(root), "axis": 2})
    assert head["median_spacing"] == [1.5, 1.5, 3.0]
    assert len(head["warnings"]) == 1
    assert "in-plane spacings differ between cases (from [0.5, 0.5] to [1.5, 1.5])" in head["warnings"][0]
    assert "3.0x larger" in head["warnings"][0]


def test_synthetic_source_and_report_text():
    fp = fingerprint(build_config({"data": {"source": "synthetic", "n_train": 4, "n_val": 2, "n_test": 2,
                                            "size": 16}}))
    assert fp["n_images"] == {"train": 4, "val": 2, "test": 2} and fp["sizes"] == {}
    text = format_fingerprint(fp)
    assert "class_2" in text and fp["median_spacing"] is None


def test_cli_inspect_json_and_errors(tmp_path, capsys):
    root = write_folder(tmp_path / "f", n=4)
    assert main(["inspect", "--data", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"]["train"] == 2
    (root / "masks" / "case1.png").unlink()
    assert main(["inspect", "--data", str(root)]) == 2
    assert "case1.png: image without a mask" in capsys.readouterr().err


def test_inspect_says_which_split_it_used_and_why(tmp_path, capsys):
    root = write_nnunet_test(write_nnunet(tmp_path, n_cases=6))
    ids = [f"case_{i:03d}" for i in range(6)]
    (root / "splits_final.json").write_text(json.dumps([{"train": ids[2:], "val": ids[:2]}]))
    fp = fingerprint(data_config(str(root)))
    assert fp["split"]["test"] == "imagesTs/labelsTs" and fp["split"]["val"] == "fold 0 of splits_final.json"
    assert fp["n_cases"] == {"train": 4, "val": 2, "test": 2}
    assert fp["sizes"] == {"8x8x6": 8}  # the test files are surveyed too
    assert main(["inspect", "--data", str(root)]) == 0
    text = capsys.readouterr().out
    assert ("split       test: imagesTs/labelsTs (2 cases); val: fold 0 of splits_final.json (2 cases); "
            "train: fold 0 of splits_final.json (4 cases)") in text
    assert "- test is imagesTs/labelsTs, so data.test_fraction is not used" in text


def test_inspect_of_a_folder_counts_images_in_its_split_line(tmp_path):
    text = format_fingerprint(fingerprint(data_config(str(write_folder(tmp_path, n=8)))))
    assert "split       test: random 15%, split_seed 0 (1 image); val: random 15%, split_seed 0 (1 image); " \
           "train: the other cases (6 images)" in text
