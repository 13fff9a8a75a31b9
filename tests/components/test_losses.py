"""Every registered loss: minimum at a perfect prediction, gradients, binary and multi-class, MONAI parity."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, TverskyLoss

from segtune.errors import ConfigError
from segtune.components.losses import LOSSES
from segtune.registry import RegistryError

SINGLE_CHANNEL = {"bce", "dice_bce", "dice_bce_inverse_dice"}


def _target(n_classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_classes, (2, 12, 12), generator=g)


def _logits(n_channels: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, n_channels, 12, 12, generator=g)


def _perfect(target: torch.Tensor, n_channels: int) -> torch.Tensor:
    if n_channels == 1:
        return 20.0 * (2 * target[:, None].float() - 1)
    onehot = torch.nn.functional.one_hot(target, n_channels).permute(0, 3, 1, 2).float()
    return 20.0 * (2 * onehot - 1)


def _channels(name: str, n_classes: int) -> int:
    return 1 if name in SINGLE_CHANNEL else n_classes


def _cases():
    for name in LOSSES.names():
        for n_classes in (2, 4):
            if name in SINGLE_CHANNEL and n_classes > 2:
                continue
            yield name, n_classes


@pytest.mark.parametrize("name,n_classes", list(_cases()))
def test_perfect_prediction_is_near_minimum_and_gradients_flow(name, n_classes):
    loss_fn = LOSSES.build(name, {}, n_classes)
    # The single-channel flag matches the losses that want one sigmoid output.
    assert getattr(loss_fn, "single_channel", False) == (name in SINGLE_CHANNEL)
    target = _target(n_classes)
    c = _channels(name, n_classes)
    perfect = float(loss_fn(_perfect(target, c), target))
    logits = _logits(c).requires_grad_()
    random = loss_fn(logits, target)
    random.backward()
    assert 0.0 <= perfect < 1e-3
    assert float(random.detach()) > perfect + 0.05
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(SINGLE_CHANNEL))
def test_single_channel_losses_reject_multiclass_data(name):
    # A sigmoid output cannot describe 4 classes: the error names the fix.
    with pytest.raises(ConfigError, match="binary task.*4 classes.*loss.name="):
        LOSSES.build(name, {}, 4)


def test_class_weights_need_one_value_per_class():
    with pytest.raises(ConfigError, match="class_weights has 2 values but the data has 3 classes"):
        LOSSES.build("ce", {"class_weights": [1.0, 2.0]}, 3)


def test_an_option_a_loss_lacks_is_an_error():
    with pytest.raises(RegistryError, match="loss 'tversky' has no option 'class_weights'"):
        LOSSES.build("tversky", {"class_weights": [1, 1]}, 2)


ZERO_WEIGHTS = {  # options that, all at 0, leave a loss that is 0 for every prediction
    "tversky": ("alpha", "beta"),
    "dice_ce": ("lambda_dice", "lambda_ce"),
    "dice_bce": ("lambda_dice", "lambda_bce"),
    "dice_bce_inverse_dice": ("lambda_dice", "lambda_bce", "lambda_inverse"),
}


@pytest.mark.parametrize("name", sorted(ZERO_WEIGHTS))
def test_a_loss_that_is_identically_zero_is_refused_when_the_config_is_read(name):
    from segtune.config import build_config

    from tests.conftest import tiny_tree

    options = ZERO_WEIGHTS[name]
    zero = {"name": name, **{option: 0 for option in options}}
    with pytest.raises(ConfigError, match=rf"loss: loss '{name}': {options[0]}=0 and .*=0 make the loss 0 for "
                                          rf"every prediction.*make at least one of them positive"):
        build_config(tiny_tree(loss=zero))
    # one positive weight is a real loss, and it is not constant: its gradient reaches the logits
    build_config(tiny_tree(loss={**zero, options[-1]: 0.5}))
    logits = torch.randn(2, 1 if name in SINGLE_CHANNEL else 2, 12, 12, requires_grad=True)
    weights = {option: 0 for option in options[:-1]} | {options[-1]: 0.5}
    LOSSES.build(name, weights, 2)(logits, _target(2)).backward()
    assert logits.grad.abs().sum() > 0


def test_dice_matches_monai_dice_loss():
    target, logits = _target(3), _logits(3)
    for include_background in (True, False):
        ours = LOSSES.build("dice", {"include_background": include_background}, 3)(logits, target)
        ref = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True)(logits, target[:, None])
        torch.testing.assert_close(ours, ref)
    weights = [0.2, 1.0, 3.0]
    ours = LOSSES.build("dice", {"class_weights": weights, "include_background": False}, 3)(logits, target)
    ref = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, lambda_ce=0.0,
                     weight=torch.tensor(weights))(logits, target[:, None])
    torch.testing.assert_close(ours, ref)


def test_dice_ce_matches_monai_dice_plus_torch_ce():
    target, logits = _target(3), _logits(3)
    ours = LOSSES.build("dice_ce", {"lambda_dice": 0.5, "lambda_ce": 2.0}, 3)(logits, target)
    ref = (0.5 * DiceLoss(to_onehot_y=True, softmax=True)(logits, target[:, None])
           + 2.0 * torch.nn.functional.cross_entropy(logits, target))
    torch.testing.assert_close(ours, ref)


def test_inverse_dice_is_monai_dice_of_the_complements():
    target, logits = _target(3), _logits(3)
    p = torch.softmax(logits, 1)
    y = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    ours = LOSSES.build("inverse_dice", {}, 3)(logits, target)
    torch.testing.assert_close(ours, DiceLoss()(1 - p[:, 1:], 1 - y[:, 1:]))
    # Two classes: the inverse Dice of the foreground is the Dice of the background channel.
    target2, logits2 = _target(2), _logits(2)
    p2 = torch.softmax(logits2, 1)
    background = DiceLoss()(p2[:, :1], (target2[:, None] == 0).float())
    torch.testing.assert_close(LOSSES.build("inverse_dice", {}, 2)(logits2, target2), background)


def test_dice_bce_matches_monai_dice_ce_with_sigmoid():
    target, logits = _target(2), _logits(1)
    ours = LOSSES.build("dice_bce", {}, 2)(logits, target)
    ref = DiceCELoss(sigmoid=True)(logits, target[:, None].float())
    torch.testing.assert_close(ours, ref)


def test_dice_bce_class_weights_weigh_the_bce_pixels_by_class():
    target, logits = _target(2), _logits(1)
    y = target[:, None].float()
    ref = DiceLoss(sigmoid=True)(logits, y) + torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y, weight=0.5 + 1.5 * y)
    ours = LOSSES.build("dice_bce", {"class_weights": [0.5, 2.0]}, 2)(logits, target)
    torch.testing.assert_close(ours, ref)


def test_bce_matches_torch_and_weights_pixels_by_class():
    target, logits = _target(2), _logits(1)
    y = target[:, None].float()
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    torch.testing.assert_close(LOSSES.build("bce", {}, 2)(logits, target), plain)
    weighted = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=1 + 2 * y)
    torch.testing.assert_close(LOSSES.build("bce", {"class_weights": [1, 3]}, 2)(logits, target), weighted)


def test_dice_bce_inverse_dice_is_the_sum_of_its_terms():
    target, logits = _target(2), _logits(1)
    p, y = torch.sigmoid(logits), target[:, None].float()
    ref = (DiceLoss()(p, y) + torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
           + 0.5 * DiceLoss()(1 - p, 1 - y))
    ours = LOSSES.build("dice_bce_inverse_dice", {"lambda_inverse": 0.5}, 2)(logits, target)
    torch.testing.assert_close(ours, ref)


def test_switching_weights_dice_or_inverse_dice_by_foreground_share():
    logits = _logits(2)
    small = torch.zeros(2, 12, 12, dtype=torch.long)
    small[:, :3, :3] = 1  # 6 % foreground
    large = 1 - small  # 94 % foreground
    dice = LOSSES.build("dice", {"include_background": False}, 2)
    inverse = LOSSES.build("inverse_dice", {}, 2)
    loss = LOSSES.build("switching", {"lam": 0.9, "threshold": 0.5}, 2)
    # Foreground below the threshold: 0.9 Dice + 0.1 inverse Dice; above: the other way round.
    torch.testing.assert_close(loss(logits, small), 0.9 * dice(logits, small) + 0.1 * inverse(logits, small))
    torch.testing.assert_close(loss(logits, large), 0.1 * dice(logits, large) + 0.9 * inverse(logits, large))
    with_ce = LOSSES.build("switching", {"lam": 0.9, "ce_weight": 0.5}, 2)
    ce = torch.nn.functional.cross_entropy(logits, small)
    torch.testing.assert_close(with_ce(logits, small), loss(logits, small) + 0.5 * ce)


def test_focal_matches_its_definition_and_monai():
    target, logits = _target(3), _logits(3)
    ours = LOSSES.build("focal", {"alpha": 0.25, "gamma": 2.0}, 3)(logits, target)
    logp = torch.log_softmax(logits, 1).gather(1, target[:, None])
    alpha_t = torch.where(target[:, None] == 0, 0.75, 0.25)
    # MONAI averages over B x C x H x W elements, of which only the target class is non-zero.
    definition = (-alpha_t * (1 - logp.exp()) ** 2 * logp).sum() / logits.numel()
    torch.testing.assert_close(ours, definition)
    ref = FocalLoss(to_onehot_y=True, use_softmax=True, alpha=0.25, gamma=2.0)(logits, target[:, None])
    torch.testing.assert_close(ours, ref)


def test_tversky_matches_monai_and_equals_dice_at_one_half():
    target, logits = _target(3), _logits(3)
    ours = LOSSES.build("tversky", {"alpha": 0.3, "beta": 0.7}, 3)(logits, target)
    ref = TverskyLoss(to_onehot_y=True, softmax=True, alpha=0.3, beta=0.7)(logits, target[:, None])
    torch.testing.assert_close(ours, ref)
    half = LOSSES.build("tversky", {"alpha": 0.5, "beta": 0.5}, 3)(logits, target)
    torch.testing.assert_close(half, LOSSES.build("dice", {}, 3)(logits, target))


def test_label_smoothing_raises_the_minimum_of_ce():
    target = _target(3)
    smoothed = LOSSES.build("ce", {"label_smoothing": 0.1}, 3)(_perfect(target, 3), target)
    assert float(smoothed) > 0.1 * math.log(3) / 2


def test_a_single_channel_loss_trains_a_one_channel_network(tmp_path):
    from segtune.config import build_config
    from segtune.training.loop import train
    from tests.conftest import tiny_tree

    tree = tiny_tree(loss={"name": "dice_bce"})
    tree["data"]["n_classes"] = 2
    tree["train"]["epochs"] = 1
    result = train(build_config(tree), out_dir=tmp_path / "run", verbose=False)
    assert result.summary["class_names"] == ["background", "class_1"]
    assert 0.0 <= result.summary["test"]["dice_mean"] <= 1.0


@pytest.mark.parametrize("name", ["dice_ce", "dice", "tversky"])
def test_batch_dice_pools_the_batch_and_punishes_false_positives_on_an_image_without_the_class(name):
    # image 0 holds the class in its top half, image 1 none; the network predicts the class everywhere
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, :4] = 1
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 1] = 5.0
    options = {"include_background": False, "batch": True}
    ours = LOSSES.build(name, options, 2)(logits, target)
    ref, own = {"dice_ce": (DiceCELoss, {}), "dice": (DiceLoss, {}), "tversky": (TverskyLoss, {"alpha": 0.3, "beta": 0.7})}[name]
    ref = ref(include_background=False, to_onehot_y=True, softmax=True, batch=True, **own)(logits, target[:, None])
    torch.testing.assert_close(ours, ref)
    # per image, the empty image's Dice term is 1 for any false positive, so its pixels get (almost) no
    # gradient from it; over the batch they are false positives of the one pooled Dice
    grads = {}
    for batch in (False, True):
        x = logits.clone().requires_grad_(True)
        LOSSES.build("dice", {"include_background": False, "batch": batch}, 2)(x, target).backward()
        grads[batch] = x.grad[1, 1].abs().sum().item()
    assert grads[False] < 1e-6 < grads[True]
    p = torch.softmax(logits, 1)[:, 1]
    pooled = 1 - 2 * (p * target).sum() / (p.sum() + target.sum())
    torch.testing.assert_close(LOSSES.build("dice", options, 2)(logits, target), pooled, atol=1e-5, rtol=1e-5)
