"""Keep-the-largest-component post-processing, chosen per class where it raises validation Dice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segtune.errors import DataError
from segtune.training.postprocess import (apply_postprocessing, case_units, choose_postprocessing,
                                          keep_largest_component, mean_case_dice, postprocess_split,
                                          read_postprocessing, write_postprocessing)

NAMES = ["background", "organ", "lesion"]


def volume_pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A 12^3 case: an organ block (1) and two separate true lesions (2); the prediction finds all
    of them and adds a spurious 2-voxel organ blob in a far corner."""
    target = np.zeros((12, 12, 12), np.int64)
    target[2:7, 2:7, 2:7] = 1
    target[9:11, 1:3, 9:11] = 2
    target[1:3, 9:11, 1 + i % 2:3 + i % 2] = 2
    pred = target.copy()
    pred[10:12, 10, 10] = 1
    return pred, target


def test_a_spurious_blob_is_removed_and_dice_rises_while_two_true_components_stay():
    preds, targets = zip(*(volume_pair(i) for i in range(3)))
    choice = choose_postprocessing(preds, targets, NAMES)
    # the organ gains from its largest component; the lesion has two true parts, so cleaning it would lose one
    assert choice == {"organ": True, "lesion": False}
    before = mean_case_dice(preds, targets, 3)
    after = mean_case_dice([apply_postprocessing(p, choice, NAMES) for p in preds], targets, 3)
    assert before[1] == pytest.approx(2 * 125 / (127 + 125))
    assert after[1] == 1.0 and after[2] == before[2] == 1.0


def test_keep_largest_component_connects_through_corners_in_2d_and_3d():
    image = np.zeros((5, 5), np.int64)
    image[0, 0] = image[1, 1] = 1  # diagonal neighbours: one component
    image[4, 4] = 1
    assert keep_largest_component(image, 1).sum() == 2
    volume = np.zeros((4, 4, 4), np.int64)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = 2  # corner neighbours in 3D
    volume[0, 3, 3] = 2
    cleaned = keep_largest_component(volume, 2)
    assert (cleaned == 2).sum() == 3 and cleaned[0, 3, 3] == 0
    assert (volume == 2).sum() == 4  # the input is left as it was


def test_other_classes_are_untouched_by_cleaning_one():
    labels = np.array([[1, 0, 2, 0, 1, 1]])
    assert keep_largest_component(labels, 1).tolist() == [[0, 0, 2, 0, 1, 1]]
    assert apply_postprocessing(labels, {"organ": False, "lesion": True}, NAMES).tolist() == labels.tolist()


def test_cases_are_cleaned_one_by_one_and_images_each_on_their_own():
    # two cases of 2 slices each: a case's blob is not compared with the other case's organ
    slices = torch.zeros(4, 4, 4, dtype=torch.long)
    slices[0:2, 0:3, 0:3] = 1  # case a: the organ
    slices[3, 3, 3] = 1  # case b: a single voxel, its own largest component (one volume would drop it)
    cases = [["a", 2], ["b", 2]]
    assert [u.shape for u in case_units(slices, cases)] == [(2, 4, 4), (2, 4, 4)]
    cleaned = postprocess_split(slices, cases, {"organ": True}, NAMES)
    assert torch.equal(cleaned, slices)
    assert postprocess_split(slices, [["ab", 4]], {"organ": True}, NAMES)[3, 3, 3] == 0
    images = torch.zeros(2, 4, 4, dtype=torch.long)
    images[0, 0, 0] = images[0, 3, 3] = images[0, 3, 2] = 1
    cleaned = postprocess_split(images, None, {"organ": True}, NAMES)
    assert cleaned.shape == (2, 4, 4) and cleaned[0, 0, 0] == 0 and cleaned[0].sum() == 2


def test_a_choice_naming_an_unknown_class_is_an_error():
    with pytest.raises(DataError, match=r"class\(es\) \['tumour'\] that are not among .*--postprocess"):
        apply_postprocessing(np.zeros((2, 2), np.int64), {"tumour": True}, NAMES)
    with pytest.raises(DataError, match="needs predictions for the validation cases"):
        choose_postprocessing([], [], NAMES)


def test_the_choice_is_saved_and_read_back(tmp_path):
    assert read_postprocessing(tmp_path) is None
    write_postprocessing(tmp_path, {"organ": True, "lesion": False}, checkpoint="best", class_names=NAMES,
                         val_dice={"without": {"organ": 0.9}, "with": {"organ": 0.95}})
    saved = read_postprocessing(tmp_path)
    assert saved["keep_largest_component"] == {"organ": True, "lesion": False}
    assert saved["class_names"] == NAMES and saved["checkpoint"] == "best"
    (tmp_path / "postprocessing.json").write_text("{")
    with pytest.raises(DataError, match=r"postprocessing\.json: not valid JSON .*--postprocess"):
        read_postprocessing(tmp_path)
    (tmp_path / "postprocessing.json").write_text(json.dumps({"organ": True}))
    with pytest.raises(DataError, match="no 'keep_largest_component' mapping"):
        read_postprocessing(tmp_path)
