"""The plan's rules on crafted fingerprints: normalisation by modality, slicing plane, patch and
batch size from image size and memory, mixed sizes, and the fixed rules for rare classes."""

from __future__ import annotations

import pytest

from segtune.data.plan import (CPU_BUDGET, GPU_BUDGET, PLAN_KEYS, common_size, fill_in, format_plan, given,
                               patch_and_batch, plan, slice_sizes)


def _fp(source="folder", sizes=None, modalities=(), median_spacing=None, **more):
    return {"source": source, "sizes": sizes or {"64x64": 10}, "modalities": list(modalities),
            "median_spacing": median_spacing, **more}


def _values(entries):
    return {k: e["value"] for k, e in entries.items()}


@pytest.mark.parametrize("modalities, expected", [
    (["CT"], "ct"),            # nnU-Net's channel name, as dataset.json writes it
    (["ct", "CT"], "ct"),      # case does not matter; every channel CT
    (["CT", "PET"], "zscore"),  # one mode for all channels: CT only where every channel is CT
    (["T1"], "zscore"),        # MRI: z-score per image
    ([], "zscore"),            # 2D images (8-bit photographs too): z-score per image
])
def test_normalisation_by_modality(modalities, expected):
    entry = plan(_fp("nifti", {"64x64x10": 3}, modalities, [1.0, 1.0, 1.0]))["data.normalize"]
    assert entry["value"] == expected
    assert ("0.5 / 99.5 percentiles" in entry["reason"]) == (expected == "ct")


@pytest.mark.parametrize("spacing, axis", [
    ([1.0, 1.0, 4.0], 2),    # thick axial slices: cut along z
    ([4.0, 1.0, 1.0], 0),    # stored sagittally thick: cut along x
    ([0.8, 3.0, 0.8], 1),
    ([1.0, 1.0, 1.0], 2),    # isotropic: axial
    ([1.04, 1.0, 1.0], 2),   # within 5 % of the coarsest counts as a tie, and 2 wins a tie
])
def test_volumes_are_sliced_across_the_coarsest_spacing(spacing, axis):
    assert plan(_fp("nifti", {"64x64x64": 2}, ["MRI"], spacing))["data.axis"]["value"] == axis


def test_2d_images_get_no_axis():
    assert "data.axis" not in plan(_fp())


def test_small_images_train_whole_with_the_least_batch():
    p = _values(plan(_fp(sizes={"16x16": 8})))
    # 16x16 is one patch; 5 % of 8 images is less than one: the least batch, 2
    assert p["train.patch_size"] == [16, 16] and p["train.batch_size"] == 2


def test_a_median_size_is_rounded_up_to_a_multiple_of_16():
    assert _values(plan(_fp(sizes={"100x70": 400})))["train.patch_size"] == [112, 80]


@pytest.mark.parametrize("gpu, patch, batch", [
    # CPU: 1024x768 scaled to at most 65536 pixels (288x208 = 59904), 262144 pixels per step: 4
    (False, [288, 208], 4),
    # GPU: at most 262144 pixels (576x432 = 248832), 12 x 512 x 512 pixels per step: 12
    (True, [576, 432], 12),
])
def test_large_images_are_cropped_to_the_budget_of_the_device(gpu, patch, batch):
    p = _values(plan(_fp(sizes={"1024x768": 100}), gpu=gpu))
    assert p["train.patch_size"] == patch and p["train.batch_size"] == batch
    budget = GPU_BUDGET if gpu else CPU_BUDGET
    assert patch[0] * patch[1] <= budget.patch_pixels


def test_the_batch_covers_at_most_5_percent_of_the_dataset():
    # 40 images of 128x128: 5 % is 2 images' pixels, although the CPU budget allows 16
    assert patch_and_batch((128, 128), 40, CPU_BUDGET) == ((128, 128), 2)
    assert patch_and_batch((128, 128), 1000, CPU_BUDGET) == ((128, 128), 16)


def test_slices_of_volumes_count_along_the_axis():
    fp = _fp("nifti", {"40x200x160": 4}, ["MRI"], [5.0, 1.0, 1.0])
    assert slice_sizes(fp, 0) == {(200, 160): 160}
    p = _values(plan(fp))
    assert p["data.axis"] == 0 and p["train.patch_size"] == [208, 160]
    # the config's own axis is the one the patch is planned for
    assert _values(plan(fp, settings={"data.axis": 2}))["train.patch_size"] == [48, 208]


def test_mixed_sizes_are_resized_to_the_most_common_one_and_the_patch_follows():
    fp = _fp(sizes={"300x200": 5, "310x200": 2})
    p = _values(plan(fp))
    # 300x200 rounded to 304x192 (multiples of 16), scaled to a side of at most 256
    assert p["data.size"] == [256, 160] == list(common_size(slice_sizes(fp, 2)))
    assert p["train.patch_size"] == [256, 160] and p["train.batch_size"] == 2
    # the config's own size or resize wins over the plan's, and the patch follows it
    assert "data.size" not in plan(fp, settings={"data.size": [64, 64]})
    assert _values(plan(fp, settings={"data.resize": [96, 64]}))["train.patch_size"] == [96, 64]


def test_a_source_that_resizes_by_default_keeps_its_size():
    # oxford_pet reads every image at its size option (128x128 by default): no data.size, patch 128x128
    p = _values(plan(_fp("oxford_pet", sizes={"500x375": 10, "375x500": 7})))
    assert "data.size" not in p and p["train.patch_size"] == [128, 128]


def test_rare_classes_get_nnunets_handling_whatever_their_share():
    # the plan reads no voxel: class frequencies (here a class of 0.01 %) do not change it
    rare = _fp(classes={"train": {"fraction": {"background": 0.9999, "tumour": 0.0001}}})
    p = _values(plan(rare))
    assert p == _values(plan(_fp()))
    assert p["train.foreground_oversample"] == 0.33
    assert p["loss.name"] == "dice_ce" and p["loss.include_background"] is False
    assert p["loss.batch"] is True  # one Dice over the batch: crops without the class do not drown it
    assert p["data.min_foreground_fraction"] == 0.0


def test_fixed_rules_and_flips_by_kind_of_data():
    flat, volume = _values(plan(_fp())), _values(plan(_fp("nifti", {"64x64x10": 3}, ["MRI"], [1.0, 1.0, 3.0])))
    for p in (flat, volume):
        assert (p["model.norm"], p["scheduler.name"], p["augment.name"], p["train.patience"]) == \
               ("instance", "poly", "flip", 0)
    assert flat["augment.vertical"] is False and volume["augment.vertical"] is True
    assert list(plan(_fp())) == [k for k in PLAN_KEYS if k in flat]  # in plan order


def test_every_entry_has_a_reason():
    for key, entry in plan(_fp("nifti", {"64x64x10": 3, "64x60x10": 1}, ["CT"], [0.7, 0.7, 5.0])).items():
        assert set(entry) == {"value", "reason"} and len(entry["reason"]) > 20, key


def test_fill_in_takes_only_unset_keys_the_config_takes():
    entries = plan(_fp())
    tree = {"train": {"batch_size": 16}, "model": {"name": "unet"}}
    assert given(tree, "train.batch_size") == (True, 16) and given(tree, "train.epochs") == (False, None)

    def takes(key, changes):  # as the config says it: unet has no norm option
        return "model unet has no option norm" if key == "model.norm" else None

    changes, report = fill_in(tree, entries, takes)
    assert "train.batch_size" not in changes and report.overridden == {"train.batch_size": 16}
    assert "model.norm" not in changes and report.unused == {"model.norm": "model unet has no option norm"}
    assert changes["scheduler.name"] == "poly" and report.applied == list(changes)
    text = format_plan(report)
    assert "train.batch_size=2" in text and "config: 16" in text
    assert "not used: model unet has no option norm" in text
    assert "scheduler.name=poly                planned" in text
