"""Copies of a batch's small host tensors (random draws, indices) to the device, without a GPU stall.

A copy from pageable host memory to a CUDA GPU (``tensor.to("cuda")``) makes the host wait until every
kernel already queued on the stream has run: once per draw, several times a batch, the GPU would idle
while the host prepares the next batch. Staged in pinned memory and copied with ``non_blocking``, the
copy is queued like a kernel; PyTorch's caching host allocator keeps the pinned source alive until the
copy is done. On a CPU (or MPS) it is a plain ``tensor.to``.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` on ``device`` (as ``dtype``, converted on the host first), queued without waiting on a GPU.

    Example:
        >>> to_device(torch.tensor([1, 2]), torch.device("cpu"), torch.float32).tolist()
        [1.0, 2.0]
    """
    if dtype is not None:
        tensor = tensor.to(dtype)
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
