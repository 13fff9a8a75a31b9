"""The plan's target spacing for volumes (nnU-Net's median rule, in plane), and how inspect shows it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from tests.data.writers import write_nnunet, write_nnunet_test, write_two_spacings

from segtune.cli import main
from segtune.config import data_config
from segtune.data.fingerprint import fingerprint, format_fingerprint, survey
from segtune.data.plan import plan, resampled_slice_sizes


def _volumes(grids, median):
    return {"source": "nifti", "modalities": ["MRI"], "median_spacing": median,
            "sizes": {"x".join(map(str, g["size"])): g["n"] for g in grids}, "grids": grids}


# three cases of 200 x 200 mm: two at 1 mm (200 x 200 x 30), one at 2 mm (100 x 100 x 30), 5 mm slices
MIXED = [{"size": [200, 200, 30], "spacing": [1.0, 1.0, 5.0], "n": 2},
         {"size": [100, 100, 30], "spacing": [2.0, 2.0, 5.0], "n": 1}]


def test_volumes_are_resampled_to_the_median_in_plane_spacing_and_sized_after_it():
    p = plan(_volumes(MIXED, [1.0, 1.0, 5.0]))
    assert p["data.axis"]["value"] == 2
    assert p["data.spacing"]["value"] == [1.0, 1.0] and "median in-plane spacing" in p["data.spacing"]["reason"]
    # every case is 200 x 200 at 1 mm: no resize planned, and the patch is that of 200 x 200 slices
    assert resampled_slice_sizes(_volumes(MIXED, None), 2, [1.0, 1.0]) == {(200, 200): 90}
    assert "data.size" not in p and p["train.patch_size"]["value"] == [208, 208]
    assert list(p).index("data.spacing") == list(p).index("data.axis") + 1


def test_the_configs_own_spacing_or_size_wins():
    fp = _volumes(MIXED, [1.0, 1.0, 5.0])
    p = plan(fp, settings={"data.spacing": 2.0})  # the config's 2 mm: slices 100 x 100, nothing planned for it
    assert "data.spacing" not in p and p["train.patch_size"]["value"] == [112, 112]
    # data.spacing: null keeps each file's own, so the mixed sizes are resized on reading as before
    assert plan(fp, settings={"data.spacing": None})["data.size"]["value"] == [192, 192]
    assert "data.spacing" not in plan(fp, settings={"data.size": [128, 128]})  # a resize would undo it
    assert "data.spacing" not in plan(fp, settings={"data.resize": [128, 128]})


def test_cases_of_one_spacing_are_not_resampled_and_mixed_sizes_resized_as_before():
    # 0.78 and 0.80 mm (within 10 %) count as one: no spacing planned, so no padding to the largest case
    grids = [{"size": [256, 256, 20], "spacing": [0.78, 0.78, 5.0], "n": 9},
             {"size": [512, 512, 20], "spacing": [0.80, 0.80, 5.0], "n": 1}]
    p = plan(_volumes(grids, [0.78, 0.78, 5.0]))
    assert "data.spacing" not in p and p["data.size"]["value"] == [256, 256]


def test_the_median_is_of_the_training_cases(tmp_path):
    root = write_nnunet_test(write_nnunet(tmp_path, n_cases=3), ids=range(10, 16))  # 1.5 mm, imagesTs too
    for i in range(10, 16):  # six test cases at 0.5 mm would move a median over every file
        for folder, name in (("imagesTs", f"case_{i:03d}_0000"), ("labelsTs", f"case_{i:03d}")):
            path = root / folder / f"{name}.nii.gz"
            image = nib.load(path)
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([0.5, 0.5, 3.0, 1.0])), str(path))
    head = survey("nifti", {"path": str(root)})
    assert head["median_spacing"] == [1.5, 1.5, 3.0]
    assert plan(head)["data.spacing"]["value"] == [1.5, 1.5]


def test_inspect_shows_the_target_and_loads_every_case_at_it(tmp_path, capsys):
    root = write_two_spacings(tmp_path / "two")  # rows at 1 and 2 mm: median 1.5, columns 1 mm
    config = data_config(str(root))
    assert config.data.options["spacing"] == (1.5, 1.0) and config.data.options["size"] is None
    fp = fingerprint(config)
    assert fp["slice_size"] == [13, 20] and not [w for w in fp["warnings"] if "in-plane spacings" in w]
    assert "resampled in plane to data.spacing [1.5, 1] mm on reading" in format_fingerprint(fp)
    unplanned = fingerprint(data_config(str(root), ["data.spacing=null", "data.size=[20,20]"]))
    assert "kept: data.spacing is null" in format_fingerprint(unplanned)
    assert "set data.spacing (the plan's is the median, [1.5, 1.0])" in unplanned["warnings"][0]
    assert main(["inspect", "--data", str(root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["plan"]["entries"]["data.spacing"]["value"] == [1.5, 1.0]
