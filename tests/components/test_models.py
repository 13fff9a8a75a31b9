"""Every registered model at odd input sizes, plus the U-Net sizes and the ResNet-34 encoder weights.

tests/test_registries.py checks that every model has tiny options and trains one step.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch

from segtune.components.models import build_model, count_parameters
from segtune.errors import DataError
from tests.components.tiny import TINY_MODELS as TINY

# Trainable parameters of the tiny models for (in_channels, n_classes); the U-Net's by hand: convolutions,
# batch norms, transposed convolutions and the 1x1 head of depth 2 and widths 4, 8, 16.
N_PARAMS = {
    ("unet", 1, 3): 7487, ("unet", 3, 2): 7554,
    ("monai_unet", 1, 3): 3387, ("monai_unet", 3, 2): 3410,
    ("resnet34_unet", 1, 3): 21_504_959, ("resnet34_unet", 3, 2): 21_511_194,
}


@functools.cache
def _built(name: str, options_json: str, in_channels: int, n_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, json.loads(options_json), in_channels, n_classes)


def tiny_model(name: str, options: dict, in_channels: int, n_classes: int) -> torch.nn.Module:
    """``build_model(name, options, in_channels, n_classes)``, built once per module and copied for each
    test (ResNet-34 has 21 M parameters to initialise, twice: FlexibleUNet's own encoder is replaced)."""
    return copy.deepcopy(_built(name, json.dumps(options, sort_keys=True), in_channels, n_classes))


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("in_channels,n_classes,size", [(1, 3, (29, 31)), (3, 2, (32, 27))])
def test_model_forward_backward_any_size(name, in_channels, n_classes, size):
    model = tiny_model(name, TINY[name], in_channels, n_classes)
    torch.manual_seed(0)
    x = torch.randn(2, in_channels, *size)
    mask = torch.randint(0, n_classes, (2, *size))
    out = model(x)
    # Odd sizes are padded to the multiple the network needs and cropped back: output shape = mask shape.
    assert out.shape == (2, n_classes, *mask.shape[1:])
    torch.nn.functional.cross_entropy(out, mask).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert count_parameters(model) == N_PARAMS[name, in_channels, n_classes]


SMALLEST = [(name, TINY[name]) for name in sorted(TINY)] + [("monai_unet", {**TINY["monai_unet"], "norm": "instance"})]


@pytest.mark.parametrize("name,options", SMALLEST)
@pytest.mark.parametrize("size", [(8, 8), (3, 5), (1, 1)])
def test_inputs_smaller_than_the_networks_multiple_train_and_predict(name, options, size):
    # Padded to the multiple alone, these would leave the deepest feature map 1x1: instance norm
    # refuses it, and so does batch norm with a batch of one. They are padded to a 2x2 deepest map.
    model = tiny_model(name, options, 1, 3)
    x = torch.randn(1, 1, *size)
    model.train()
    model(x).sum().backward()
    model.eval()
    assert model(x).shape == (1, 3, *size)


def test_classic_unet_has_the_paper_size():
    # Ronneberger et al.: depth 4, 64 channels at the top, no batch norm: about 31 M parameters.
    model = build_model("unet", {"depth": 4, "base": 64, "batch_norm": False}, 1, 2)
    assert 30.9e6 < count_parameters(model) < 31.1e6


def test_unet_bilinear_upsampling_and_dropout_build():
    model = build_model("unet", {"depth": 2, "base": 4, "upsample": "bilinear", "dropout": 0.2}, 1, 2)
    assert model(torch.randn(2, 1, 20, 20)).shape == (2, 2, 20, 20)
    assert any(isinstance(m, torch.nn.Upsample) for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())


def test_resnet34_encoder_is_resnet34_and_loads_weights_from_a_file(tmp_path):
    rgb = tiny_model("resnet34_unet", TINY["resnet34_unet"], 3, 2).net.encoder
    # ResNet-34 without its classifier: 21.28 M parameters, as torchvision's resnet34.
    assert count_parameters(rgb) == 21_284_672
    state = {**rgb.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet34.pth")
    options = {**TINY["resnet34_unet"], "encoder_weights": str(tmp_path / "resnet34.pth")}
    grey = build_model("resnet34_unet", options, 1, 2).net.encoder
    # A 3-channel first convolution is summed over its channels for a 1-channel encoder.
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(grey.layer4[2].conv2.weight, rgb.layer4[2].conv2.weight)


def test_encoder_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pth")
    options = {"encoder_weights": str(tmp_path / "bad.pth")}
    with pytest.raises(DataError, match="does not fit a ResNet-34 encoder.*Missing key"):
        build_model("resnet34_unet", options, 3, 2)
    with pytest.raises(DataError, match="no such file"):
        build_model("resnet34_unet", {"encoder_weights": str(tmp_path / "none.pth")}, 3, 2)
