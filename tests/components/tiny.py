"""Small options per registered model, so that tests building every model stay fast; every model needs one."""

from __future__ import annotations

from typing import Any

__all__ = ["TINY_MODELS"]

TINY_MODELS: dict[str, dict[str, Any]] = {
    "unet": {"depth": 2, "base": 4},
    "monai_unet": {"channels": [4, 8, 16], "num_res_units": 1},
    "resnet34_unet": {"decoder_channels": [16, 8, 8, 4, 4]},
}
