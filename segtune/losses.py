"""Segmentation losses, registered by name.

Every loss is built with the number of classes and called as ``loss(logits, target)`` with
``logits`` of shape ``(B, C, H, W)`` (raw network outputs) and ``target`` of shape
``(B, H, W)`` holding integer labels ``0..C-1``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from segtune.registry import Registry

LOSSES = Registry("loss")

Smooth = Annotated[float, Field(ge=0.0)]


class _LabelLoss(nn.Module):
    """Adapts a MONAI loss that wants a ``(B, 1, H, W)`` label target."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target[:, None])


@LOSSES.register("ce")
def ce(n_classes: int, /, *, class_weights: list[float] | None = None,
       label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0) -> nn.Module:
    """Cross-entropy over softmax outputs (torch.nn.CrossEntropyLoss)."""
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if weight is not None and len(weight) != n_classes:
        raise ValueError(f"loss.class_weights has {len(weight)} values but the data has {n_classes} classes")
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@LOSSES.register("dice")
def dice(n_classes: int, /, *, include_background: bool = True, smooth: Smooth = 1e-5) -> nn.Module:
    """Soft Dice loss over softmax outputs, averaged over classes (MONAI DiceLoss)."""
    from monai.losses import DiceLoss

    return _LabelLoss(DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                               smooth_nr=smooth, smooth_dr=smooth))


@LOSSES.register("dice_ce")
def dice_ce(n_classes: int, /, *, include_background: bool = True, smooth: Smooth = 1e-5,
            lambda_dice: Annotated[float, Field(ge=0.0)] = 1.0,
            lambda_ce: Annotated[float, Field(ge=0.0)] = 1.0) -> nn.Module:
    """Soft Dice plus cross-entropy, weighted sum (MONAI DiceCELoss; nnU-Net's default loss)."""
    from monai.losses import DiceCELoss

    return _LabelLoss(DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                 smooth_nr=smooth, smooth_dr=smooth, lambda_dice=lambda_dice,
                                 lambda_ce=lambda_ce))
