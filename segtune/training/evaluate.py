"""Running a trained network on a split: predictions, loss and per-class metrics."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from segtune.data import Split
from segtune.training.metrics import confusion_counts, summarize

__all__ = ["autocast", "batches", "evaluate_split", "labels_from_logits", "memory_format", "predict_labels"]


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` logits to ``(B, H, W)`` labels: argmax, or ``logit > 0`` for one channel."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (``fp32`` = none) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` when ``train.channels_last`` is set, else the contiguous format."""
    return torch.channels_last if channels_last else torch.contiguous_format


def batches(split: Split, batch_size: int, device: torch.device, channels_last: bool):
    """Yield ``(images, masks)`` batches of ``split`` in order, moved to ``device``."""
    fmt = memory_format(channels_last)
    for i in range(0, len(split), batch_size):
        x = split.images[i:i + batch_size].to(device, non_blocking=True).contiguous(memory_format=fmt)
        yield x, split.masks[i:i + batch_size].to(device, non_blocking=True)


@torch.inference_mode()
def predict_labels(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                   device: torch.device = torch.device("cpu"), precision: str = "fp32",
                   channels_last: bool = False) -> torch.Tensor:
    """Label maps ``(N, H, W)`` for images ``(N, C, H, W)``."""
    model.eval()
    split = Split(images, torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.long))
    out = []
    for x, _ in batches(split, batch_size, device, channels_last):
        with autocast(device, precision):
            out.append(labels_from_logits(model(x).float()).cpu())
    return torch.cat(out)


@torch.inference_mode()
def evaluate_split(model: nn.Module, split: Split, class_names: list[str], *, loss_fn: nn.Module | None = None,
                   batch_size: int = 32, device: torch.device = torch.device("cpu"),
                   precision: str = "fp32", channels_last: bool = False) -> dict:
    """Mean loss (if ``loss_fn``) and per-class Dice / IoU of ``model`` on ``split``."""
    model.eval()
    counts = torch.zeros(len(class_names), 3, dtype=torch.int64)
    total_loss, n = 0.0, 0
    for x, y in batches(split, batch_size, device, channels_last):
        with autocast(device, precision):
            logits = model(x).float()
        if loss_fn is not None:
            total_loss += float(loss_fn(logits, y)) * len(x)
            n += len(x)
        counts += confusion_counts(labels_from_logits(logits), y, len(class_names)).cpu()
    result = summarize(counts, class_names)
    if loss_fn is not None:
        result = {"loss": total_loss / max(n, 1), **result}
    return result
