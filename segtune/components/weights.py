"""Safe reading of tensor files (checkpoints, encoder weights): tensors and plain values, never code."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from segtune.errors import DataError

__all__ = ["read_tensors"]


def read_tensors(path: str | Path, fix: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, never code.

    Args:
        path: a file written by ``torch.save``.
        fix: what the user should do when it cannot be read, e.g. "re-run the training that wrote it".
        map_location: where the tensors are loaded (``"cpu"``, a ``torch.device``).

    Returns:
        What the file holds: a state dict, a checkpoint dict, a tensor.

    Raises:
        DataError: the file is damaged (truncated, overwritten) or holds other objects; the
            message names the file and ``fix``, and never suggests unsafe loading.

    Example:
        >>> state = read_tensors("runs/demo/best.pt", "re-run the training")  # doctest: +SKIP
    """
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it did not write
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling or zip problem means an unusable file
        raise DataError(f"{path}: not a readable checkpoint: the file is damaged (truncated?) or holds more than "
                        f"tensors and plain values, which are never loaded since they could run code "
                        f"({_load_failure(err)}); {fix}") from None


def _load_failure(err: Exception) -> str:
    """torch's reason in a few words, without its advice to load unsafely."""
    text = str(err).split("WeightsUnpickler error:")[-1].strip()
    reason = text.split(". ")[0].splitlines()[0] if text else "the file is empty"
    return f"{type(err).__name__}: {reason}" if "weights_only" not in reason else type(err).__name__
