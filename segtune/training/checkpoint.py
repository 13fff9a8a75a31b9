"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain dict of tensors and primitive values::

    {"model": state_dict, "meta": {...how to rebuild the model and prepare its input...},
     "epoch": int, "optimizer": state_dict, "scheduler": state_dict}

:func:`save_atomic` writes to a temporary file in the same folder, fsyncs it and renames it
over the target, so a crash or kill during the write leaves the previous file intact.
:func:`load_checkpoint` uses ``torch.load(weights_only=True)``: a checkpoint from a stranger
cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from segtune.errors import DataError, StorageError
from segtune.components.models import build_model
from segtune.components.weights import read_tensors


_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes 0600): shared study folders
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact; " if path.exists() else ""
        raise StorageError(f"cannot write {path}: {err}; {kept}free disk space or choose a writable "
                           f"directory, then resume") from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file, fsync and rename."""
    _write_atomic(Path(path), lambda f: torch.save(obj, f), "wb")


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    _write_atomic(Path(path), lambda f: f.write(text), "w")


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file, fsync and rename."""
    write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


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
