"""``segtune inspect --data ...``: the dataset fingerprint and its warnings; the plan made from it is :mod:`segtune.data.plan`.

The data are given as a dataset folder (its layout is recognised: ``dataset.json`` is NIfTI,
``annotations/trimaps`` is Oxford-IIIT Pet, ``images/`` + ``masks/`` is a folder dataset), as a
run config file (its ``data`` section), or with ``--set data.source=... data.path=...`` alone.
Loading goes through the same sources as training, so every data error shows up here first.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segtune.data.base import SOURCES, SegData, foreground_stats
from segtune.data.folder import IMAGE_SUFFIXES
from segtune.data.nifti import load_nifti
from segtune.data.nifti_layout import read_dataset_json, read_layout
from segtune.data.plan import common_size, slice_sizes
from segtune.data.splits import describe_split
from segtune.errors import DataError

if TYPE_CHECKING:  # for the annotation only: the config layer builds on this one
    from segtune.config import Config

__all__ = [
    "ANISOTROPY", "RARE_CLASS_FRACTION", "SPACING_SPREAD", "class_frequencies", "detect_source", "fingerprint",
    "format_fingerprint", "intensity_stats", "survey", "survey_files",
]

RARE_CLASS_FRACTION = 0.01  # a foreground class below 1 % of the pixels counts as extreme imbalance
ANISOTROPY = 3.0  # coarsest / finest voxel spacing above which slicing along the coarse axis matters most
SPACING_SPREAD = 1.5  # largest / smallest in-plane spacing between cases above which a warning says to resample


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
            header = load_nifti(case.images[0]).header  # a 2D file is one slice, as the source reads it
            shape, zooms = (*header.get_data_shape()[:3], 1, 1)[:3], (*header.get_zooms()[:3], 1.0, 1.0)[:3]
            records.append({"file": str(case.images[0]), "size": tuple(int(s) for s in shape),
                            "spacing": tuple(round(float(z), 4) for z in zooms), "test": case in layout.test_cases})
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


def _modalities(source: str, options: dict[str, Any]) -> list[str]:
    if source != "nifti":
        return []
    tree = read_dataset_json(Path(options.get("path") or ".").expanduser())
    channels = tree.get("channel_names", tree.get("modality")) or {}
    return [str(v) for _, v in sorted(channels.items(), key=lambda kv: int(kv[0]))] if isinstance(channels, dict) else []


def _spacing_warnings(spacings: list[tuple[float, ...]], axis: int, target: Any = None) -> list[str]:
    """Anisotropic voxels sliced along the wrong axis, and in-plane spacings that differ between cases
    where they are kept (no ``target`` in-plane spacing to resample them to)."""
    if not spacings:
        return []
    array = np.array(spacings, dtype=float)
    median = np.median(array, 0)
    warnings = []
    coarse = int(np.argmax(median))
    if median.max() / median.min() > ANISOTROPY and coarse != axis:
        warnings.append(f"anisotropic voxels (median spacing {median.round(3).tolist()}): slicing along axis {axis} "
                        f"mixes fine and coarse directions within a slice; data.axis={coarse} does not")
    in_plane = np.delete(array, axis, 1)
    spread = in_plane.max(0) / in_plane.min(0)
    if spread.max() > SPACING_SPREAD and target is None:
        lo, hi = in_plane.min(0).round(3).tolist(), in_plane.max(0).round(3).tolist()
        warnings.append(f"in-plane spacings differ between cases (from {lo} to {hi}): the same structure is up to "
                        f"{spread.max():.1f}x larger in pixels in some; data.spacing: null keeps each file's own, "
                        f"so set data.spacing (the plan's is the median, "
                        f"{np.delete(median, axis).round(3).tolist()}) to resample them on reading")
    return warnings


def survey(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the file headers (and ``dataset.json``) say, without reading a voxel: the input of :func:`plan`.

    Args:
        source: a data source name; sources that read no files (``demo``, ``synthetic``) give empty sizes.
        options: the source's options (``path``, ``layout``, ``axis``).

    Returns:
        ``source``, ``path``, ``modalities`` (``dataset.json``'s channel names; empty for 2D
        sources), ``sizes`` (``{"HxW" or "XxYxZ": number of files}``), ``spacings`` (the same for
        voxel spacings), ``median_spacing`` (per voxel axis, of the training cases as nnU-Net's
        fingerprint: imagesTs left out; or None), ``grids`` (``[{"size", "spacing", "n"}]``: each
        size with its spacing, for the plan's sizes after resampling), ``target_spacing`` (the
        options' ``spacing``) and ``warnings``.

    Raises:
        DataError: a file or ``dataset.json`` that cannot be read.
    """
    records = survey_files(source, options)
    spacings = [r["spacing"] for r in records if r["spacing"]]
    training = [r["spacing"] for r in records if r["spacing"] and not r.get("test")] or spacings
    grids = Counter((r["size"], r["spacing"]) for r in records if r["spacing"])
    return {
        "source": source,
        "path": options.get("path", ""),
        "modalities": _modalities(source, options),
        "sizes": {"x".join(map(str, size)): n for size, n in Counter(r["size"] for r in records).most_common()},
        "spacings": {"x".join(map(str, s)): n for s, n in Counter(spacings).most_common()},
        "median_spacing": np.median(np.array(training), 0).round(4).tolist() if training else None,
        "grids": [{"size": list(size), "spacing": list(spacing), "n": n} for (size, spacing), n in grids.most_common()],
        "target_spacing": options.get("spacing"),
        "warnings": _spacing_warnings(spacings, options.get("axis", 2), options.get("spacing")),
    }


def _class_warnings(classes: dict[str, dict[str, Any]], class_names: list[str]) -> list[str]:
    warnings = []
    for split, entry in classes.items():
        missing = [n for n, v in entry["images_with"].items() if v == 0]
        if missing:
            warnings.append(f"class(es) {', '.join(missing)} missing from the {split} split: their Dice there "
                            f"is meaningless; change split_seed or the split shares")
    train_fraction = classes["train"]["fraction"]
    rare = [n for n in class_names[1:] if 0 < train_fraction[n] < RARE_CLASS_FRACTION]
    if rare:
        warnings.append(f"extreme imbalance: {', '.join(rare)} cover less than {RARE_CLASS_FRACTION:.0%} of the "
                        f"training pixels; the plan's Dice + CE without background and foreground-centred crops "
                        f"are meant for this: keep them (loss.name, train.foreground_oversample)")
    return warnings


def _size_to_load(head: dict[str, Any], source: str, options: dict[str, Any]) -> list[str]:
    """Files of several sizes and no ``size`` to resize them to: ``options["size"]`` is set for this report."""
    sizes = slice_sizes(head, options.get("axis", 2))
    if (len(sizes) <= 1 or options.get("size") is not None or options.get("spacing") is not None
            or "size" not in SOURCES.defaults(source)):
        return []
    options["size"] = list(common_size(sizes))
    return [f"mixed sizes: {len(sizes)} different (H, W) among {sum(head['sizes'].values())} files; they are "
            f"resized on reading to {options['size']} for this report (set data.size, or leave it to the plan)"]


def fingerprint(config: Config) -> dict[str, Any]:
    """Read the configured data (as training would) and describe it.

    Args:
        config: a run config; its ``data`` section and ``seed`` say what to read
            (:func:`segtune.config.data_config` makes one from a folder, a file or ``--set`` items).

    Returns:
        What :func:`survey` returns, and ``n_cases`` (volumes) and ``n_images`` per split,
        ``split`` (where each split came from, and notes, as ``SegData.info["split"]``; None where
        the source has a fixed split), ``slice_size``, ``channels``, ``intensity`` (per channel),
        ``foreground_intensity`` (per channel, of the training foreground: what ``ct``
        normalisation uses), ``classes`` (per split: pixel fraction and images holding each
        class) and ``warnings``.

    Raises:
        DataError: any problem with the files, as training would raise it.
    """
    source, options = config.data.source, dict(config.data.options)
    head = survey(source, options)
    warnings = head["warnings"] + _size_to_load(head, source, options)
    data = SOURCES.build(source, options, config.seed)
    classes = class_frequencies(data)
    foreground = foreground_stats(data.train) if bool((data.train.masks > 0).any()) else None
    return {
        **head,
        "n_cases": {k: len(data.info["cases"][k]) for k in classes} if "cases" in data.info else None,
        "n_images": {k: classes[k]["n_images"] for k in classes},
        "split": data.info.get("split"),
        "slice_size": list(data.train.images.shape[2:]),
        "channels": data.in_channels,
        "intensity": intensity_stats(data.train.images),
        "foreground_intensity": foreground,
        "class_names": data.class_names,
        "classes": classes,
        "warnings": warnings + _class_warnings(classes, data.class_names),
    }


def _shown_spacing(spacing: Any) -> str:
    return f"{spacing:g}" if isinstance(spacing, (int, float)) else "[" + ", ".join(f"{v:g}" for v in spacing) + "]"


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
        target = fp.get("target_spacing")
        lines.append(f"median      spacing {fp['median_spacing']} of the training cases; " + (
            f"resampled in plane to data.spacing {_shown_spacing(target)} mm on reading" if target is not None
            else "kept: data.spacing is null, volumes are not resampled"))
    if fp["modalities"]:
        lines.append(f"modalities  {', '.join(fp['modalities'])}")
    lines.append(f"slices      {fp['slice_size'][0]}x{fp['slice_size'][1]}, {fp['channels']} channel(s)")
    for c, s in enumerate(fp["intensity"]):
        lines.append(f"channel {c}   mean {s['mean']:.4g}  std {s['std']:.4g}  min {s['min']:.4g}  "
                     f"max {s['max']:.4g}  p0.5 {s['p0.5']:.4g}  p99.5 {s['p99.5']:.4g}")
    if fp["foreground_intensity"]:
        stats = fp["foreground_intensity"]
        lines += [f"foreground  channel {c}: mean {m:.4g}  std {sd:.4g}  p0.5 {lo:.4g}  p99.5 {hi:.4g}"
                  for c, (m, sd, lo, hi) in enumerate(zip(stats["mean"], stats["std"], stats["lower"], stats["upper"]))]
    lines.append("\nclass                " + "".join(f"{k + ' %':>10}{k + ' imgs':>12}" for k in fp["classes"]))
    for name in fp["class_names"]:
        lines.append(f"{name:<21}" + "".join(f"{100 * v['fraction'][name]:>10.2f}{v['images_with'][name]:>12}"
                                               for v in fp["classes"].values()))
    lines.append("\nwarnings" if fp["warnings"] else "\nwarnings: none")
    lines += [f"  - {w}" for w in fp["warnings"]]
    return "\n".join(lines)
