"""Using a trained run: evaluate it on a split, or write label masks for new images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segtune.checkpoint import load_checkpoint, model_from_checkpoint
from segtune.config import build_config, read_yaml
from segtune.data import normalize_images
from segtune.data.folder import IMAGE_SUFFIXES, read_image
from segtune.errors import DataError
from segtune.inference import evaluate_split, predict_labels
from segtune.train import load_data, resolve_device


def _checkpoint_path(run: str | Path, checkpoint: str) -> Path:
    run = Path(run)
    return run if run.is_file() else run / f"{checkpoint}.pt"


def evaluate_run(run: str | Path, *, split: str = "test", checkpoint: str = "best") -> tuple[dict, list[str]]:
    """Per-class Dice and IoU of a run's checkpoint on a split of the run's own data.

    Returns:
        ``(metrics, class_names)``, metrics as in ``summary.json``.
    """
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise DataError(f"{run}: no config.yaml; give the run directory that training wrote")
    config = build_config(read_yaml(run / "config.yaml"), origin=str(run / "config.yaml"))
    device = resolve_device(config.train.device)
    model = model_from_checkpoint(load_checkpoint(_checkpoint_path(run, checkpoint))).to(device)
    data = load_data(config)
    metrics = evaluate_split(model, data.split(split), data.class_names, device=device)
    return metrics, data.class_names


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Image files among ``inputs``, folders expanded (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images (.png, .jpg, .tif) found in {', '.join(map(str, inputs))}")
    return files


def predict_files(run: str | Path, inputs: list[str | Path], out: str | Path, *,
                  checkpoint: str = "best", batch_size: int = 16) -> list[Path]:
    """Write one PNG label mask per input image into ``out`` (same stem, ``.png``).

    Images are prepared as in training (channels, resize, normalisation); a mask is resized
    back to its image's size with nearest neighbour.
    """
    from PIL import Image

    ckpt = load_checkpoint(_checkpoint_path(run, checkpoint))
    meta = ckpt["meta"]
    device = resolve_device("auto")
    model = model_from_checkpoint(ckpt).to(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in collect_images(inputs):
        image = torch.from_numpy(read_image(path, meta["in_channels"]))[None]
        size = tuple(image.shape[2:])
        if meta.get("resize"):
            image = F.interpolate(image, size=tuple(meta["resize"]), mode="bilinear", align_corners=False)
        labels = predict_labels(model, normalize_images(image, meta["normalize"]), batch_size=batch_size,
                                device=device)
        if tuple(labels.shape[1:]) != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        target = out / f"{path.stem}.png"
        Image.fromarray(labels[0].numpy().astype(np.uint8)).save(target)
        written.append(target)
    return written
