"""The U-Net family, registered by name.

Every builder takes ``(in_channels, out_channels)`` positionally and its options as keywords.
:func:`build_model` wraps the network so that any input size works: the input is zero-padded
on the bottom and right to the next multiple the network needs (``2 ** depth``; 32 for the
ResNet-34 encoder) and the output is cropped back, so the output always has the input's height
and width. An input that would leave the deepest feature map 1x1 is padded to twice the multiple
(normalisation needs more than one value). No input size is refused; padding costs compute only
on the padded border.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from segtune.components.weights import read_tensors
from segtune.errors import ConfigError, DataError
from segtune.registry import Registry

__all__ = [
    "MODELS", "PadToMultiple", "UNet", "build_model", "count_parameters", "encoder_modules", "encoder_state",
    "load_encoder_weights", "load_pretrained_encoder", "monai_unet", "resnet34_unet", "set_encoder_trainable", "unet",
]

MODELS = Registry("model")


def _double_conv(cin: int, cout: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(nn.Conv2d(c_in, cout, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """The classic U-Net (Ronneberger et al., MICCAI 2015) with padded convolutions.

    Args:
        in_channels: image channels.
        out_channels: output channels (classes, or 1 for a single sigmoid output).
        depth: number of 2x down-samplings.
        base: channels of the first level; level k has ``base * 2**k``.
        batch_norm: batch normalisation after every convolution.
        dropout: channel dropout after every double convolution (0 = off).
        upsample: ``transpose`` (learned 2x2 transposed convolution) or ``bilinear``
            (bilinear interpolation followed by a 1x1 convolution).

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` with H and W multiples of ``2**depth``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, depth: int, base: int,
                 batch_norm: bool, dropout: float, upsample: str) -> None:
        super().__init__()
        widths = [base * 2**k for k in range(depth + 1)]
        self.size_multiple = 2**depth
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0], batch_norm, dropout)])
        self.down.extend(_double_conv(widths[k], widths[k + 1], batch_norm, dropout) for k in range(depth))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for k in reversed(range(depth)):
            if upsample == "transpose":
                self.up.append(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2))
            else:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                             nn.Conv2d(widths[k + 1], widths[k], 1)))
            self.merge.append(_double_conv(2 * widths[k], widths[k], batch_norm, dropout))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.encoder_modules = [f"down.{k}" for k in range(depth + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class PadToMultiple(nn.Module):
    """Zero-pads the input to a multiple of ``multiple`` and crops the output back.

    An input no larger than ``multiple`` on both sides would leave the deepest feature map 1x1,
    where normalisation has a single value per channel (instance norm always fails, batch norm
    with a batch of one): it is padded to ``2 * multiple`` on both sides, a 2x2 deepest map.
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if self.multiple > 1 and h + ph == w + pw == self.multiple:
            ph, pw = ph + self.multiple, pw + self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.net(x)
        return out[..., :h, :w] if ph or pw else out


@MODELS.register("unet")
def unet(
    in_channels: int,
    out_channels: int,
    /,
    *,
    depth: Annotated[int, Field(ge=1, le=7)] = 4,
    base: Annotated[int, Field(ge=1, le=256)] = 16,  # 64 in the paper: 31 M parameters, slow on a CPU
    batch_norm: bool = True,
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    upsample: Literal["transpose", "bilinear"] = "transpose",
    encoder_weights: str | None = None,  # encoder file written by `segtune pretrain`; None = random init
) -> nn.Module:
    """Classic U-Net (Ronneberger et al. 2015), padded 3x3 convolutions, optional batch norm and dropout."""
    net = UNet(in_channels, out_channels, depth=depth, base=base, batch_norm=batch_norm,
               dropout=dropout, upsample=upsample)
    return load_pretrained_encoder(net, encoder_weights) if encoder_weights else net


@MODELS.register("monai_unet")
def monai_unet(
    in_channels: int,
    out_channels: int,
    /,
    *,
    channels: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2)] = (16, 32, 64, 128, 256),
    num_res_units: Annotated[int, Field(ge=0, le=8)] = 2,
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    norm: Literal["batch", "instance"] = "batch",
    encoder_weights: str | None = None,  # encoder file written by `segtune pretrain`; None = random init
) -> nn.Module:
    """MONAI UNet with residual units (Kerfoot et al. 2018): one level per entry of ``channels``."""
    from monai.networks.nets import UNet as MonaiUNet

    net = MonaiUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                    channels=tuple(channels), strides=(2,) * (len(channels) - 1),
                    num_res_units=num_res_units, dropout=dropout, norm=norm)
    net.size_multiple = 2 ** (len(channels) - 1)
    net.encoder_modules = _monai_encoder_modules(net)
    return load_pretrained_encoder(net, encoder_weights) if encoder_weights else net


def _monai_encoder_modules(net: nn.Module) -> list[str]:
    """MONAI UNet nests ``Sequential(down, SkipConnection(deeper), up)``: the downs, then the bottom layer."""
    names, prefix, block = [], "model", net.model
    while True:
        names.append(f"{prefix}.0")
        prefix, block = f"{prefix}.1.submodule", block[1].submodule
        if not (isinstance(block, nn.Sequential) and len(block) == 3):
            return names + [prefix]


def _resnet34_encoder(in_channels: int) -> nn.Module:
    """MONAI's ResNet-34 with projection shortcuts (He et al. 2016, option B): torchvision's layer names."""
    from monai.networks.nets.resnet import ResNet, ResNetFeatures

    class ResNet34Features(ResNet):
        forward = ResNetFeatures.forward  # the five feature maps FlexibleUNet's decoder takes

    return ResNet34Features(block="basic", layers=[3, 4, 6, 3], block_inplanes=[64, 128, 256, 512], spatial_dims=2,
                            n_input_channels=in_channels, conv1_t_stride=2, shortcut_type="B",
                            feed_forward=False, bias_downsample=False)


def _read_weights(path: Path, fix: str):
    if not path.is_file():
        raise DataError(f"model.encoder_weights={str(path)!r}: no such file; {fix}")
    return read_tensors(path, fix)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a ResNet-34 state dict (torchvision layout, e.g. ``resnet34-b627a593.pth``) into ``encoder``.

    ``fc.*`` entries are dropped and ``module.`` / ``encoder.`` prefixes stripped; a first
    convolution for 3 channels is summed over them for a 1-channel encoder (a grey image then
    gives the response of the same image in RGB), and a 1-channel one repeated / 3 for 3 channels.

    Raises:
        DataError: unreadable file, or keys or shapes that do not match a ResNet-34.
    """
    path = Path(path).expanduser()
    state = _read_weights(path, "give a ResNet-34 state dict (.pth)")
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict (name -> tensor), found {type(state).__name__}")
    for prefix in ("module.", "encoder.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    conv1, want = state.get("conv1.weight"), encoder.conv1.weight
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != want.shape[1]:
        state["conv1.weight"] = (conv1.sum(1, keepdim=True) if want.shape[1] == 1
                                 else conv1.repeat(1, want.shape[1], 1, 1) / want.shape[1])
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).split(":", 1)[-1].strip().replace("\n", " ")[:400]
        raise DataError(f"{path}: does not fit a ResNet-34 encoder ({detail}); give torchvision-style "
                        f"ResNet-34 weights (conv1, bn1, layer1..layer4)") from None


@MODELS.register("resnet34_unet")
def resnet34_unet(
    in_channels: int,
    out_channels: int,
    /,
    *,
    decoder_channels: tuple[int, int, int, int, int] = (256, 128, 64, 32, 16),
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    encoder_weights: str | None = None,  # path to ResNet-34 weights (torchvision layout); None = random init
) -> nn.Module:
    """ResNet-34 encoder (He et al. 2016) with a U-Net decoder (MONAI FlexibleUNet); random init or weights from a file."""
    from monai.networks.nets import FlexibleUNet

    net = FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone="resnet34", pretrained=False,
                       decoder_channels=tuple(decoder_channels), spatial_dims=2, dropout=dropout)
    net.encoder = _resnet34_encoder(in_channels)
    if encoder_weights:
        load_encoder_weights(net.encoder, encoder_weights)
    net.size_multiple = 32
    net.encoder_modules = ["encoder"]
    return net


def build_model(name: str, options: dict, in_channels: int, out_channels: int) -> nn.Module:
    """Build a registered model that accepts any input size (padded and cropped back)."""
    net = MODELS.build(name, options, in_channels, out_channels)
    return PadToMultiple(net, getattr(net, "size_multiple", 1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encoder_modules(model: nn.Module) -> list[str]:
    """Names of the modules that form ``model``'s encoder, shallow to deep (the last gives the deepest features).

    Every registered network names its encoder in ``encoder_modules``; a network built by
    :func:`build_model` has them under ``net.``.

    Raises:
        ConfigError: the network names no encoder.
    """
    net, prefix = (model.net, "net.") if isinstance(model, PadToMultiple) else (model, "")
    names = getattr(net, "encoder_modules", None)
    if not names:
        raise ConfigError(f"{type(net).__name__} names no encoder (encoder_modules); transfer learning needs one of "
                          f"the registered models: {', '.join(MODELS.names())}")
    return [prefix + name for name in names]


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's entries of ``model.state_dict()``, named as in the bare network (no ``net.`` prefix)."""
    net = model.net if isinstance(model, PadToMultiple) else model
    heads = tuple(f"{name}." for name in encoder_modules(net))
    return {k: v.detach().clone() for k, v in net.state_dict().items() if k.startswith(heads)}


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze the encoder's parameters; batch-norm statistics keep updating."""
    for name in encoder_modules(model):
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(trainable)


def load_pretrained_encoder(net: nn.Module, path: str | Path) -> nn.Module:
    """Load an encoder file written by ``segtune pretrain`` into the encoder of ``net``; returns ``net``.

    The file may come from a deeper network of the same model (an autoencoder of 6 levels for a
    segmenter of 3): each level of ``net``'s encoder (``encoder_modules``, shallow to deep) takes
    the same level of the file's; the deepest level of ``net`` (its bottom, which has no
    down-sampling in a deeper net's place) keeps its random start when it does not fit, with a
    warning. Any other level that does not fit is an error naming it.

    Raises:
        DataError: unreadable file, or levels whose entries do not fit this network's encoder
            (another model, other channels or residual units than at pre-training).
    """
    path = Path(path).expanduser()
    state = _read_weights(path, "write one with `segtune pretrain`")
    want = encoder_state(net)
    have = state if isinstance(state, dict) else {}
    levels = _unfit_levels(encoder_modules(net), want, have)
    deeper = bool(set(have) - set(want))  # entries this encoder has no place for: a deeper network's levels
    if levels and not (deeper and levels == [len(encoder_modules(net)) - 1]):
        names = encoder_modules(net)
        shown = ", ".join(f"{i + 1} ({names[i]})" for i in levels)
        key = next(k for k in want if k.startswith(f"{names[levels[0]]}."))
        found = tuple(have[key].shape) if key in have else "missing"
        raise DataError(f"{path}: levels {shown} of this {type(net).__name__}'s {len(names)}-level encoder do not fit "
                        f"the pre-trained weights (e.g. {key!r}: {tuple(want[key].shape)} here, {found} in the "
                        f"file); pre-train with the same model.name and model options as the segmentation run for "
                        f"these levels (a deeper autoencoder is fine)")
    if levels:
        warnings.warn(f"{path}: from a deeper network; encoder levels 1-{len(encoder_modules(net)) - 1} loaded, the "
                      f"bottom ({encoder_modules(net)[-1]}) starts at random", UserWarning, stacklevel=2)
        have = {k: v for k, v in have.items() if k in want and not k.startswith(f"{encoder_modules(net)[-1]}.")}
    else:
        have = {k: v for k, v in have.items() if k in want}
    net.load_state_dict(have, strict=False)
    return net


def _unfit_levels(names: list[str], want: dict[str, torch.Tensor], have: dict[str, Any]) -> list[int]:
    """The indices of the encoder levels ``names`` whose entries of ``want`` are missing from ``have`` or of
    another shape there."""
    def fits(key: str) -> bool:
        return key in have and isinstance(have[key], torch.Tensor) and tuple(have[key].shape) == tuple(want[key].shape)

    return [i for i, name in enumerate(names) if not all(fits(k) for k in want if k.startswith(f"{name}."))]
