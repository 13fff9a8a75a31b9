"""Dice and IoU per class on hand-computed cases."""

import pytest
import torch

from segtune.training.metrics import confusion_counts, dice_from_counts, dice_per_class, iou_from_counts, summarize


def test_hand_computed_dice_and_iou():
    # class 1: pred 3 pixels, truth 2 pixels, overlap 2 -> Dice 4/5, IoU 2/3
    pred = torch.tensor([[0, 1, 1], [1, 0, 0]])
    true = torch.tensor([[0, 1, 1], [0, 0, 0]])
    counts = confusion_counts(pred, true, 2)
    assert counts.tolist() == [[3, 3, 4], [2, 3, 2]]
    assert dice_from_counts(counts).tolist() == pytest.approx([6 / 7, 4 / 5])
    assert iou_from_counts(counts).tolist() == pytest.approx([3 / 4, 2 / 3])


def test_empty_vs_empty_is_one_and_missed_class_is_zero():
    pred = torch.zeros(4, 4, dtype=torch.long)
    true = torch.zeros(4, 4, dtype=torch.long)
    true[0, 0] = 2  # class 2 present but never predicted; class 1 absent from both
    dice = dice_per_class(pred, true, 3)
    assert dice[1] == 1.0  # nothing there, nothing predicted
    assert dice[2] == 0.0


def test_counts_add_up_across_batches():
    # accumulating counts over batches equals counting the whole set at once
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (6, 8, 8), generator=g)
    true = torch.randint(0, 4, (6, 8, 8), generator=g)
    whole = confusion_counts(pred, true, 4)
    parts = confusion_counts(pred[:2], true[:2], 4) + confusion_counts(pred[2:], true[2:], 4)
    assert torch.equal(whole, parts)


def test_counts_are_per_class_definitions_and_labels_above_the_classes_count_only_in_the_totals():
    g = torch.Generator().manual_seed(1)
    for k, high in [(1, 1), (2, 2), (4, 4), (3, 5)]:  # (3, 5): labels 3 and 4 are not classes
        pred, true = torch.randint(0, high, (3, 7, 5), generator=g), torch.randint(0, high, (3, 7, 5), generator=g)
        expected = [[int(((pred == c) & (true == c)).sum()), int((pred == c).sum()), int((true == c).sum())]
                    for c in range(k)]
        assert confusion_counts(pred, true, k).tolist() == expected


def test_summary_means_over_foreground_only():
    counts = torch.tensor([[10, 10, 10], [1, 2, 2], [0, 1, 1]])  # dice: 1.0, 0.5, 0.0
    s = summarize(counts, ["bg", "a", "b"])
    assert s["dice_per_class"] == {"bg": 1.0, "a": 0.5, "b": 0.0}
    assert s["dice_mean"] == pytest.approx(0.25)
