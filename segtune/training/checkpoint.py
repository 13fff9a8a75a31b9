"""Checkpoints: written atomically, read without executing code; the one place that knows their entries.

A checkpoint is a plain dict of tensors and primitive values. ``best.pt`` holds the best weights::

    {"model": state_dict, "meta": {...how to rebuild the model and prepare its input...}, "epoch": int}

``last.pt`` (:func:`write_checkpoint`) holds, besides the last epoch's weights, what ``--resume``
needs to continue as if never stopped (:func:`restore_checkpoint`)::

    {..., "optimizer": state_dict, "scheduler": state_dict, "scaler": state_dict,
     "progress": {...the loop's early-stopping state, history and "seconds" (the run's wall time so far)...},
     "best_model": state_dict (a copy of best.pt's weights),
     "rng": {"torch": tensor, "generator": tensor, "cuda": [tensor, ...]}}

:func:`save_atomic` writes to a temporary file in the same folder, fsyncs it and renames it
over the target, so a crash or kill during the write leaves the previous file intact.
:func:`load_checkpoint` uses ``torch.load(weights_only=True)``: a checkpoint from a stranger
cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtune.components.models import build_model
from segtune.components.weights import read_tensors
from segtune.config import Config
from segtune.data import SegData
from segtune.errors import DataError, SegtuneError
from segtune.training.rundir import write_atomic


__all__ = ["checkpoint_meta", "load_checkpoint", "model_from_checkpoint", "restore_checkpoint",
           "resumable_history", "save_atomic", "write_best", "write_checkpoint"]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file, fsync and rename."""
    write_atomic(path, lambda f: torch.save(obj, f), "wb")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) onto ``map_location``.

    Raises:
        DataError: missing, damaged (e.g. truncated) or not a segtune checkpoint; the message
            names the file and the fix.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint here; give a run directory or its best.pt / last.pt")
    ckpt = read_tensors(path, "re-run the training that wrote it, or delete it", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise DataError(f"{path}: not a segtune checkpoint (no 'model' and 'meta' entries)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the network described by ``ckpt['meta']`` and load its weights (eval mode)."""
    meta = ckpt["meta"]
    model = build_model(meta["model"], meta["model_options"], meta["in_channels"], meta["out_channels"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def checkpoint_meta(config: Config, data: SegData, out_channels: int) -> dict[str, Any]:
    """How to rebuild the trained network, prepare its input and predict: a checkpoint's ``meta`` entry
    (``patch_size``: the sliding windows of a patch-trained network, None for whole images)."""
    # the weights file is not needed to rebuild the trained network, so it is left out
    model_options = {k: v for k, v in config.model.options.items() if k != "encoder_weights"}
    return {"model": config.model.name, "model_options": model_options, "in_channels": data.in_channels,
            "out_channels": out_channels, "class_names": data.class_names, "normalize": config.data.normalize,
            "normalize_stats": data.info.get("normalize_stats"), "resize": config.data.resize,
            "patch_size": list(config.train.patch_size) if config.train.patch_size else None,
            "precision": config.train.precision, "channels_last": config.train.channels_last}  # as trained


def write_best(path: str | Path, *, weights: dict[str, torch.Tensor], meta: dict[str, Any], epoch: int) -> None:
    """Write ``best.pt``: the ``weights`` of ``epoch`` and the ``meta`` to rebuild their network."""
    save_atomic({"model": weights, "meta": meta, "epoch": epoch}, path)


def write_checkpoint(path: str | Path, *, model: nn.Module, meta: dict[str, Any], epoch: int,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                     generator: torch.Generator, device: torch.device, progress: dict[str, Any],
                     best_model: dict[str, torch.Tensor] | None) -> None:
    """Write ``last.pt``: everything :func:`restore_checkpoint` needs to resume after ``epoch``.

    Args:
        path: the file, usually ``RUN/last.pt``.
        model: the network; its current weights are saved.
        meta: :func:`checkpoint_meta` of the run.
        epoch: the last finished epoch.
        optimizer: its state (moments, lr).
        scheduler: the lr schedule; its state.
        scaler: the fp16 loss scaler; its state.
        generator: the generator that shuffles and augments; its state (and torch's, and CUDA's on a GPU).
        device: the training device.
        progress: the loop's state besides the weights (plain values), returned again on restore.
        best_model: the best weights so far (a copy of best.pt's, so that a damaged best.pt loses nothing).
    """
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
           "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}
    save_atomic({"model": model.state_dict(), "meta": meta, "epoch": epoch, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "progress": progress, "scaler": scaler.state_dict(),
                 "best_model": best_model, "rng": rng}, path)


def restore_checkpoint(run_dir: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       scaler: torch.amp.GradScaler, generator: torch.Generator
                       ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load ``run_dir/last.pt`` into the live objects (the random generators too), for ``--resume``.

    Returns:
        The ``progress`` given to :func:`write_checkpoint` and the best weights so far (None
        before a first improvement). A last.pt of an older segtune, without the run's wall time
        in ``progress["seconds"]``, gets there the sum of its epochs' ``seconds``.

    Raises:
        DataError: last.pt is missing or damaged.
        SegtuneError: last.pt holds no training progress.
    """
    last = load_checkpoint(run_dir / "last.pt")
    if "progress" not in last:
        raise SegtuneError(f"{run_dir / 'last.pt'} holds no training progress; it cannot be resumed")
    progress = last["progress"]
    progress.setdefault("seconds", sum(row.get("seconds", 0.0) for row in progress.get("history", [])))
    model.load_state_dict(last["model"])
    optimizer.load_state_dict(last["optimizer"])
    scheduler.load_state_dict(last["scheduler"])
    torch.set_rng_state(last["rng"]["torch"])
    generator.set_state(last["rng"]["generator"])
    if last["rng"].get("cuda") and torch.cuda.is_available():  # dropout on a GPU draws from these
        torch.cuda.set_rng_state_all(last["rng"]["cuda"])
    if last.get("scaler"):  # fp16: the loss scale reached so far
        scaler.load_state_dict(last["scaler"])
    if "best_model" in last:
        return progress, last["best_model"]
    # a last.pt without the copy (an older segtune): the best weights are in best.pt alone
    best = load_checkpoint(run_dir / "best.pt")["model"] if (run_dir / "best.pt").is_file() else None
    return progress, best


def resumable_history(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of the epochs that a ``--resume`` of ``run_dir`` keeps: those in its last.pt."""
    if not (run_dir / "last.pt").is_file():
        return []
    return list(load_checkpoint(run_dir / "last.pt").get("progress", {}).get("history", []))
