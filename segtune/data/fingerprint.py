"""``segtune inspect --data ...``: the dataset fingerprint, warnings and suggested settings.

The data are given as a dataset folder (its layout is recognised: ``dataset.json`` is NIfTI,
``annotations/trimaps`` is Oxford-IIIT Pet, ``images/`` + ``masks/`` is a folder dataset), as a
run config file (its ``data`` section), or with ``--set data.source=... data.path=...`` alone.
Loading goes through the same sources as training, so every data error shows up here first.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segtune.data.base import SOURCES, SegData
from segtune.data.folder import IMAGE_SUFFIXES
from segtune.data.nifti import load_nifti
from segtune.data.nifti_layout import read_layout
from segtune.data.splits import describe_split
from segtune.errors import DataError

if TYPE_CHECKING:  # for the annotation only: the config layer builds on this one
    from segtune.config import Config

__all__ = [
    "ANISOTROPY", "LARGE_SIDE", "RARE_CLASS_FRACTION", "SIZE_MULTIPLE", "class_frequencies", "detect_source",
    "fingerprint", "format_fingerprint", "intensity_stats", "survey_files",
]

RARE_CLASS_FRACTION = 0.01  # a foreground class below 1 % of the pixels counts as extreme imbalance
ANISOTROPY = 3.0  # coarsest / finest voxel spacing above which slicing along the coarse axis is advised
SIZE_MULTIPLE = 16  # a U-Net of depth 4 halves the size four times
LARGE_SIDE = 256  # above this, training on CPU is slow: suggest downscaling


def detect_source(folder: Path) -> str:
    """The data source whose layout ``folder`` has.

    Raises:
        DataError: no known layout.
    """
    if (folder / "dataset.json").is_file():
        return "nifti"
    if (folder / "annotations" / "trimaps").is_dir():
        return "oxford_pet"
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return "folder"
    raise DataError(f"{folder}: no known layout (dataset.json, annotations/trimaps, or images/ + masks/); "
                    f"name the source with --set data.source=... data.path=...")


def survey_files(source: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Size (and voxel spacing for volumes) of every input file, read from headers only."""
    from PIL import Image

    root = Path(options.get("path") or ".").expanduser()
    if source == "nifti":
        records = []
        layout = read_layout(root, options.get("layout", "auto"))
        for case in layout.cases + layout.test_cases:
            header = load_nifti(case.images[0]).header
            records.append({"file": str(case.images[0]), "size": tuple(int(s) for s in header.get_data_shape()[:3]),
                            "spacing": tuple(round(float(z), 4) for z in header.get_zooms()[:3])})
        return records
    folder = {"folder": root / "images", "oxford_pet": root / "images"}.get(source)
    if folder is None or not folder.is_dir():
        return []
    records = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as img:
                records.append({"file": str(path), "size": (img.height, img.width), "spacing": None})
        except OSError as err:
            raise DataError(f"{path}: cannot read image ({err}); replace or remove the file") from None
    return records


def _round_size(size: tuple[int, int]) -> tuple[int, int]:
    side = [max(SIZE_MULTIPLE, int(round(s / SIZE_MULTIPLE)) * SIZE_MULTIPLE) for s in size]
    scale = min(1.0, LARGE_SIDE / max(side))
    return tuple(max(SIZE_MULTIPLE, int(round(s * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE) for s in side)


def _slice_size(record: dict[str, Any], source: str, axis: int) -> tuple[int, int]:
    size = record["size"]
    return tuple(s for i, s in enumerate(size) if i != axis) if source == "nifti" else tuple(size)


def class_frequencies(data: SegData) -> dict[str, dict[str, Any]]:
    """Per split: the pixel fraction of each class and how many images hold it."""
    result = {}
    for name in ("train", "val", "test"):
        masks = data.split(name).masks
        k = data.n_classes
        pixels = torch.bincount(masks.reshape(-1), minlength=k)[:k].double()
        present = torch.stack([(masks == c).flatten(1).any(1).sum() for c in range(k)])
        result[name] = {"n_images": len(masks),
                        "fraction": {n: float(p) for n, p in zip(data.class_names, pixels / pixels.sum())},
                        "images_with": {n: int(p) for n, p in zip(data.class_names, present)}}
    return result


def intensity_stats(images: torch.Tensor) -> list[dict[str, float]]:
    """Per channel of ``(N, C, H, W)`` images: mean, std, min, max and the 0.5 / 99.5 percentiles."""
    stats = []
    for c in range(images.shape[1]):
        values = images[:, c].reshape(-1).double()
        sample = values[torch.linspace(0, len(values) - 1, min(len(values), 1_000_000)).long()]
        lo, hi = torch.quantile(sample, torch.tensor([0.005, 0.995], dtype=torch.float64)).tolist()
        stats.append({"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                      "max": float(values.max()), "p0.5": lo, "p99.5": hi})
    return stats


@dataclass
class _Advice:
    """What the fingerprint warns about and the settings it suggests, each with its reason."""

    warnings: list[str] = field(default_factory=list)
    suggestions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def suggest(self, key: str, value: Any, reason: str) -> None:
        self.suggestions[key] = {"value": value, "reason": reason}


def _advise_mixed_sizes(records: list[dict[str, Any]], source: str, options: dict[str, Any], axis: int,
                        advice: _Advice) -> None:
    """Files of several sizes: the source is told to resize them on reading (``options["size"]`` is set)."""
    slice_sizes = Counter(_slice_size(r, source, axis) for r in records)
    if len(slice_sizes) <= 1 or options.get("size") is not None:
        return
    common = list(_round_size(slice_sizes.most_common(1)[0][0]))
    advice.warnings.append(f"mixed sizes: {len(slice_sizes)} different (H, W) among {len(records)} files; "
                           f"they are resized on reading to {common} for this report")
    if "size" in SOURCES.defaults(source):
        options["size"] = common
        advice.suggest("data.size", common, "files differ in size; every file is resized to this on reading")


def _advise_resize(height: int, width: int, advice: _Advice) -> None:
    odd = height % SIZE_MULTIPLE or width % SIZE_MULTIPLE
    if odd or max(height, width) > LARGE_SIDE:
        advice.suggest("data.resize", list(_round_size((height, width))),
                       f"{height}x{width} is not a multiple of {SIZE_MULTIPLE} on both sides" if odd
                       else f"sides above {LARGE_SIDE} train slowly on a CPU")


def _advise_axis(spacings: Counter, axis: int, advice: _Advice) -> None:
    spacing = np.median(np.array(list(spacings.elements())), 0)
    coarse = int(np.argmax(spacing))
    if spacing.max() / spacing.min() > ANISOTROPY and coarse != axis:
        advice.warnings.append(f"anisotropic voxels (median spacing {spacing.round(3).tolist()}): slicing along "
                               f"axis {axis} mixes fine and coarse directions within a slice")
        advice.suggest("data.axis", coarse, "slice across the coarsest spacing so each slice keeps full in-plane detail")


def _advise_normalize(images: torch.Tensor, stats: list[dict[str, float]], advice: _Advice) -> None:
    integer_8bit = all(s["min"] >= 0 and s["max"] <= 255 for s in stats) and bool((images == images.round()).all())
    if integer_8bit:
        advice.suggest("data.normalize", "minmax", "8-bit photographs: scale each image to [0, 1]")
    else:
        advice.suggest("data.normalize", "zscore", "scanner intensities have no fixed range: standardise each image")


def _advise_classes(classes: dict[str, dict[str, Any]], class_names: list[str], advice: _Advice) -> None:
    for split, entry in classes.items():
        missing = [n for n, v in entry["images_with"].items() if v == 0]
        if missing:
            advice.warnings.append(f"class(es) {', '.join(missing)} missing from the {split} split: their Dice there "
                                   f"is meaningless; change split_seed or the split shares")
    train_fraction = classes["train"]["fraction"]
    rare = [n for n in class_names[1:] if 0 < train_fraction[n] < RARE_CLASS_FRACTION]
    if rare:
        advice.warnings.append(f"extreme imbalance: {', '.join(rare)} cover less than {RARE_CLASS_FRACTION:.0%} of "
                               f"the training pixels; prefer a Dice-based loss (loss.name=dice_ce) or class weights")


def fingerprint(config: Config) -> dict[str, Any]:
    """Read the configured data (as training would) and describe it.

    Args:
        config: a run config; its ``data`` section and ``seed`` say what to read
            (:func:`segtune.config.data_config` makes one from a folder, a file or ``--set`` items).

    Returns:
        A dict with ``source``, ``n_cases`` (volumes) and ``n_images`` per split, ``split`` (where
        each split came from, and notes, as ``SegData.info["split"]``; None where the source has a
        fixed split), ``sizes`` (file sizes and how many files have each), ``spacings``,
        ``channels``, ``intensity`` (per channel), ``classes`` (per split: pixel fraction and
        images holding each class), ``warnings`` and ``suggestions`` (config settings, each with its reason).

    Raises:
        DataError: any problem with the files, as training would raise it.
    """
    source, options = config.data.source, dict(config.data.options)
    axis = options.get("axis", 2)
    records = survey_files(source, options)
    advice = _Advice()
    _advise_mixed_sizes(records, source, options, axis, advice)
    data = SOURCES.build(source, options, config.seed)
    height, width = data.train.images.shape[2:]
    if not config.data.resize:
        _advise_resize(height, width, advice)
    spacings = Counter(r["spacing"] for r in records if r["spacing"])
    if spacings:
        _advise_axis(spacings, axis, advice)
    stats = intensity_stats(data.train.images)
    _advise_normalize(data.train.images, stats, advice)
    classes = class_frequencies(data)
    _advise_classes(classes, data.class_names, advice)
    return {
        "source": source,
        "path": options.get("path", ""),
        "n_cases": {k: len(data.info["cases"][k]) for k in classes} if "cases" in data.info else None,
        "n_images": {k: classes[k]["n_images"] for k in classes},
        "split": data.info.get("split"),
        "sizes": {"x".join(map(str, size)): n for size, n in Counter(r["size"] for r in records).most_common()},
        "slice_size": [height, width],
        "spacings": {"x".join(map(str, s)): n for s, n in spacings.most_common()},
        "channels": data.in_channels,
        "intensity": stats,
        "class_names": data.class_names,
        "classes": classes,
        "warnings": advice.warnings,
        "suggestions": advice.suggestions,
    }


def format_fingerprint(fp: dict[str, Any]) -> str:
    """The fingerprint as a plain-text report."""
    lines = [f"source      {fp['source']}  {fp['path']}"]
    if fp["n_cases"]:
        lines.append("cases       " + "  ".join(f"{k} {v}" for k, v in fp["n_cases"].items()))
    lines.append("images      " + "  ".join(f"{k} {v}" for k, v in fp["n_images"].items()))
    if fp.get("split"):
        counted = (fp["n_cases"], "cases") if fp["n_cases"] else (fp["n_images"], "images")
        lines.append("split       " + describe_split(fp["split"], *counted))
        lines += [f"            - {note}" for note in fp["split"]["notes"]]
    if fp["sizes"]:
        lines.append("file sizes  " + ", ".join(f"{s} ({n})" for s, n in list(fp["sizes"].items())[:5]))
    if fp["spacings"]:
        lines.append("spacings    " + ", ".join(f"{s} ({n})" for s, n in list(fp["spacings"].items())[:5]))
    lines.append(f"slices      {fp['slice_size'][0]}x{fp['slice_size'][1]}, {fp['channels']} channel(s)")
    for c, s in enumerate(fp["intensity"]):
        lines.append(f"channel {c}   mean {s['mean']:.4g}  std {s['std']:.4g}  min {s['min']:.4g}  "
                     f"max {s['max']:.4g}  p0.5 {s['p0.5']:.4g}  p99.5 {s['p99.5']:.4g}")
    lines.append("\nclass                " + "".join(f"{k + ' %':>10}{k + ' imgs':>12}" for k in fp["classes"]))
    for name in fp["class_names"]:
        lines.append(f"{name:<21}" + "".join(f"{100 * v['fraction'][name]:>10.2f}{v['images_with'][name]:>12}"
                                               for v in fp["classes"].values()))
    lines.append("\nwarnings" if fp["warnings"] else "\nwarnings: none")
    lines += [f"  - {w}" for w in fp["warnings"]]
    lines.append("\nsuggested settings (--set ...)")
    for key, entry in fp["suggestions"].items():
        setting = f"{key}={json.dumps(entry['value'], separators=(',', ':')).strip(chr(34))}"
        lines.append(f"  {setting:<28} # {entry['reason']}")
    return "\n".join(lines)
