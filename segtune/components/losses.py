"""Segmentation losses, registered by name.

Every loss is built as ``LOSSES.build(name, options, n_classes)`` and called as
``loss(logits, target)``:

* ``logits``: ``(B, C, H, W)`` raw network outputs; ``C = n_classes`` (softmax), or ``C = 1``
  (sigmoid) for the losses that set ``single_channel = True`` (``bce``, ``dice_bce``,
  ``dice_bce_inverse_dice``): the training loop then builds the network with one output channel,
  and these losses accept binary tasks only.
* ``target``: ``(B, H, W)`` int64 labels ``0..n_classes-1``; 0 is the background.

MONAI's implementations are used where they exist (Dice, Dice+CE, Dice+BCE, focal, Tversky); inverse
Dice, the switching loss and the weighted sums are built from MONAI's ``DiceLoss``.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from segtune.errors import ConfigError
from segtune.registry import Registry

__all__ = [
    "LOSSES", "BinaryCE", "SoftDice", "SwitchingLoss", "WeightedSum", "bce", "ce", "dice", "dice_bce",
    "dice_bce_inverse_dice", "dice_ce", "focal", "inverse_dice", "probabilities", "switching", "tversky",
]

LOSSES = Registry("loss")

Smooth = Annotated[float, Field(ge=0.0)]
Weight = Annotated[float, Field(ge=0.0)]
ClassWeights = list[Annotated[float, Field(ge=0.0)]] | None
LabelSmoothing = Annotated[float, Field(ge=0.0, lt=1.0)]
# Batch Dice, a loss's ``batch: true`` (nnU-Net's "batch Dice", its 2D default): the Dice terms sum intersections and
# sizes over all images of the batch before dividing, instead of averaging one Dice per image. Per
# image, a crop without the class scores Dice smooth / (|p| + smooth): loss 1 for any probability
# mass at all, so the crops that miss a rare structure (most of them) pull every prediction of it
# to 0 and outweigh the few that hold it. Over the batch, those pixels count as false positives
# in one Dice among all the batch's true ones.


def _class_weights(weights: Sequence[float] | None, n_classes: int) -> torch.Tensor | None:
    if weights is None:
        return None
    if len(weights) != n_classes:
        raise ConfigError(f"loss.class_weights has {len(weights)} values but the data has {n_classes} classes "
                          f"(background first); give one weight per class")
    return torch.tensor(weights, dtype=torch.float32)


def _require_binary(name: str, n_classes: int, alternative: str) -> None:
    if n_classes != 2:
        raise ConfigError(f"loss {name!r} uses one sigmoid output and needs a binary task (2 classes: background "
                          f"and foreground), but the data has {n_classes} classes; use loss.name={alternative} "
                          f"for multi-class data")


def _not_all_zero(*names: str) -> Callable[[dict[str, Any]], None]:
    """A rule between options, checked when the config is read: with all of ``names`` at 0 the
    loss is 0 for every prediction and nothing trains."""

    def check(options: dict[str, Any]) -> None:
        if all(options[name] == 0 for name in names):
            raise ValueError(f"{' and '.join(f'{name}=0' for name in names)} make the loss 0 for every prediction, "
                             f"so nothing would train; make at least one of them positive")

    return check


def probabilities(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and one-hot targets of the same shape.

    Args:
        logits: ``(B, C, H, W)``; ``C == 1`` is a sigmoid output, else softmax over ``C``.
        target: ``(B, H, W)`` integer labels.

    Returns:
        ``(p, y)``, both ``(B, C, H, W)`` float: for ``C == 1`` the foreground probability and
        the foreground indicator.
    """
    if logits.shape[1] == 1:
        return torch.sigmoid(logits), target[:, None].to(logits.dtype)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return torch.softmax(logits, 1), onehot


class _LabelLoss(nn.Module):
    """Adapts a loss that wants a ``(B, 1, H, W)`` label target (MONAI's, :class:`BinaryCE`)."""

    def __init__(self, loss: nn.Module, *, single_channel: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.single_channel = single_channel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target[:, None])


class SoftDice(nn.Module):
    """Soft Dice loss ``1 - 2|p y| / (|p| + |y|)`` per image and class, averaged (MONAI ``DiceLoss``).

    With ``inverse=True`` it is the inverse Dice loss ``1 - Dice(1 - y, 1 - p)``: the Dice of the
    complement of each class, which for a binary task is the Dice of the background.

    Args:
        include_background: keep class 0 (ignored for a single sigmoid channel).
        smooth: added to numerator and denominator.
        weight: ``(C,)`` class weights (all classes, background first) or ``None``.
        inverse: score the complements instead.
        batch: one Dice per class over the whole batch (nnU-Net's batch Dice, see the note above ``SoftDice``) instead of one per image.
    """

    def __init__(self, *, include_background: bool, smooth: float, weight: torch.Tensor | None = None,
                 inverse: bool = False, batch: bool = False) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.include_background = include_background
        self.inverse = inverse
        if weight is not None and not include_background:
            weight = weight[1:]
        self.dice = DiceLoss(smooth_nr=smooth, smooth_dr=smooth, weight=weight, batch=batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, y = probabilities(logits, target)
        if self.inverse:
            p, y = 1 - p, 1 - y
        if not self.include_background and p.shape[1] > 1:
            p, y = p[:, 1:], y[:, 1:]
        return self.dice(p, y)


class BinaryCE(nn.Module):
    """Binary cross-entropy on one sigmoid channel, optional per-class pixel weights and label smoothing.

    Called as ``loss(logits, target)`` with ``logits`` ``(B, 1, H, W)`` and ``target`` the
    ``(B, 1, H, W)`` foreground indicator (0 or 1, any dtype), as MONAI's ``DiceCELoss`` calls its
    ``binary_cross_entropy``.

    Args:
        weight: ``(2,)`` weights of background and foreground pixels, or ``None``.
        label_smoothing: targets become ``y (1 - s) + s / 2``.
    """

    def __init__(self, *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = target.to(logits.dtype)
        soft = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
        if self.weight is not None:
            loss = loss * self.weight[target.long()]
        return loss.mean()


class WeightedSum(nn.Module):
    """``sum_k w_k * loss_k(logits, target)`` over ``(w_k, loss_k)`` pairs."""

    def __init__(self, terms: Sequence[tuple[float, nn.Module]], *, single_channel: bool = False) -> None:
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList(loss for _, loss in terms)
        self.single_channel = single_channel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.terms) if w)


class SwitchingLoss(nn.Module):
    """Dice and inverse Dice mixed by ``lam``, switched per mini-batch (Dang et al., MICCAI 2020).

    With ``f`` the share of foreground (label > 0) pixels in the batch's ground truth::

        w = lam       if f <  threshold   (foreground is the minority: weight its Dice)
        w = 1 - lam   if f >= threshold   (background is the minority: weight the inverse Dice)
        L = w * Dice_fg + (1 - w) * InverseDice_fg + ce_weight * CE

    where ``Dice_fg`` and ``InverseDice_fg`` are the soft Dice and inverse Dice losses of the
    foreground classes (see :class:`SoftDice`) and ``CE`` the cross-entropy.
    """

    def __init__(self, *, lam: float, threshold: float, ce_weight: float, smooth: float,
                 weight: torch.Tensor | None) -> None:
        super().__init__()
        self.dice = SoftDice(include_background=False, smooth=smooth, weight=weight)
        self.inverse = SoftDice(include_background=False, smooth=smooth, weight=weight, inverse=True)
        self.ce = nn.CrossEntropyLoss(weight=weight)
        self.lam, self.threshold, self.ce_weight = lam, threshold, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        foreground = (target > 0).float().mean()  # on the device: the switch is a where, not a host read
        w = torch.where(foreground < self.threshold, self.lam, 1.0 - self.lam)
        loss = w * self.dice(logits, target) + (1.0 - w) * self.inverse(logits, target)
        if self.ce_weight:
            loss = loss + self.ce_weight * self.ce(logits, target)
        return loss


@LOSSES.register("ce")
def ce(n_classes: int, /, *, class_weights: ClassWeights = None,
       label_smoothing: LabelSmoothing = 0.0) -> nn.Module:
    """Cross-entropy over softmax outputs (torch.nn.CrossEntropyLoss)."""
    return nn.CrossEntropyLoss(weight=_class_weights(class_weights, n_classes), label_smoothing=label_smoothing)


@LOSSES.register("bce")
def bce(n_classes: int, /, *, class_weights: ClassWeights = None,
        label_smoothing: LabelSmoothing = 0.0) -> nn.Module:
    """Binary cross-entropy on one sigmoid output channel; binary tasks only (torch BCEWithLogits)."""
    _require_binary("bce", n_classes, "ce")
    return _LabelLoss(BinaryCE(weight=_class_weights(class_weights, n_classes), label_smoothing=label_smoothing),
                      single_channel=True)


@LOSSES.register("dice")
def dice(n_classes: int, /, *, include_background: bool = True, smooth: Smooth = 1e-5,
         class_weights: ClassWeights = None, batch: bool = False) -> nn.Module:
    """Soft Dice loss over softmax outputs, averaged over images (or one over the batch: ``batch``) and classes
    (Milletari et al. 2016; MONAI DiceLoss)."""
    return SoftDice(include_background=include_background, smooth=smooth,
                    weight=_class_weights(class_weights, n_classes), batch=batch)


@LOSSES.register("dice_ce", check=_not_all_zero("lambda_dice", "lambda_ce"))
def dice_ce(n_classes: int, /, *, include_background: bool = True, smooth: Smooth = 1e-5,
            class_weights: ClassWeights = None, label_smoothing: LabelSmoothing = 0.0,
            lambda_dice: Weight = 1.0, lambda_ce: Weight = 1.0, batch: bool = False) -> nn.Module:
    """Soft Dice plus cross-entropy, weighted sum (MONAI DiceCELoss; nnU-Net's default loss); ``batch``: one
    Dice over the batch (nnU-Net's batch Dice)."""
    from monai.losses import DiceCELoss

    return _LabelLoss(DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                 smooth_nr=smooth, smooth_dr=smooth, lambda_dice=lambda_dice, batch=batch,
                                 lambda_ce=lambda_ce, weight=_class_weights(class_weights, n_classes),
                                 label_smoothing=label_smoothing))


@LOSSES.register("dice_bce", check=_not_all_zero("lambda_dice", "lambda_bce"))
def dice_bce(n_classes: int, /, *, smooth: Smooth = 1e-5, class_weights: ClassWeights = None,
             lambda_dice: Weight = 1.0, lambda_bce: Weight = 1.0) -> nn.Module:
    """Soft Dice plus binary cross-entropy on one sigmoid output; binary tasks only (MONAI DiceCELoss, sigmoid)."""
    from monai.losses import DiceCELoss

    _require_binary("dice_bce", n_classes, "dice_ce")
    loss = DiceCELoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, lambda_dice=lambda_dice, lambda_ce=lambda_bce)
    if class_weights is not None:
        # MONAI's `weight` would be BCE's pos_weight (and a Dice weight): it cannot weigh background
        # pixels. Ours weighs every pixel by its class, as `bce` does.
        loss.binary_cross_entropy = BinaryCE(weight=_class_weights(class_weights, n_classes))
    return _LabelLoss(loss, single_channel=True)


@LOSSES.register("inverse_dice")
def inverse_dice(n_classes: int, /, *, include_background: bool = False, smooth: Smooth = 1e-5,
                 class_weights: ClassWeights = None) -> nn.Module:
    """Inverse Dice loss 1 - Dice(1 - y, 1 - p) per class, softmax outputs (Dice of the background for 2 classes)."""
    return SoftDice(include_background=include_background, smooth=smooth,
                    weight=_class_weights(class_weights, n_classes), inverse=True)


@LOSSES.register("dice_bce_inverse_dice", check=_not_all_zero("lambda_dice", "lambda_bce", "lambda_inverse"))
def dice_bce_inverse_dice(n_classes: int, /, *, smooth: Smooth = 1e-5, class_weights: ClassWeights = None,
                          lambda_dice: Weight = 1.0, lambda_bce: Weight = 1.0,
                          lambda_inverse: Weight = 1.0) -> nn.Module:
    """Dice + BCE + inverse Dice on one sigmoid output, weighted sum; binary tasks only."""
    _require_binary("dice_bce_inverse_dice", n_classes, "dice_ce")
    both = dice_bce(n_classes, smooth=smooth, class_weights=class_weights, lambda_dice=lambda_dice,
                    lambda_bce=lambda_bce)
    return WeightedSum([(1.0, both), (lambda_inverse, SoftDice(include_background=True, smooth=smooth, inverse=True))],
                       single_channel=True)


@LOSSES.register("switching")
def switching(n_classes: int, /, *, lam: Annotated[float, Field(ge=0.0, le=1.0)] = 0.8,
              threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5, ce_weight: Weight = 0.0,
              smooth: Smooth = 1e-5, class_weights: ClassWeights = None) -> nn.Module:
    """Dice and inverse Dice of the foreground mixed by lam, switched per batch on the foreground share (Dang et al. 2020)."""
    return SwitchingLoss(lam=lam, threshold=threshold, ce_weight=ce_weight, smooth=smooth,
                         weight=_class_weights(class_weights, n_classes))


@LOSSES.register("focal")
def focal(n_classes: int, /, *, alpha: Annotated[float, Field(ge=0.0, le=1.0)] | None = 0.25,
          gamma: Annotated[float, Field(ge=0.0)] = 2.0, class_weights: ClassWeights = None) -> nn.Module:
    """Focal loss -a_t (1 - p_t)^gamma log p_t over softmax outputs, a_t = 1 - alpha for background (Lin et al. 2017; MONAI FocalLoss)."""
    from monai.losses import FocalLoss

    return _LabelLoss(FocalLoss(to_onehot_y=True, use_softmax=True, alpha=alpha, gamma=gamma,
                                weight=_class_weights(class_weights, n_classes)))


@LOSSES.register("tversky", check=_not_all_zero("alpha", "beta"))
def tversky(n_classes: int, /, *, alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3,
            beta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7, include_background: bool = True,
            smooth: Smooth = 1e-5, batch: bool = False) -> nn.Module:
    """Tversky loss, alpha weighs false positives and beta false negatives (Salehi et al. 2017; MONAI TverskyLoss);
    ``batch``: one score over the batch (nnU-Net's batch Dice)."""
    from monai.losses import TverskyLoss

    return _LabelLoss(TverskyLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                  alpha=alpha, beta=beta, smooth_nr=smooth, smooth_dr=smooth, batch=batch))
