"""The plan: run settings chosen from a dataset's fingerprint by written rules, as nnU-Net does.

:func:`plan` maps a fingerprint (:func:`segtune.data.fingerprint.survey`: what the file headers
and ``dataset.json`` say) to settings, each a dotted config key with its value and the reason::

    plan(survey("nifti", {"path": "Dataset003_Liver"}))
    # {"data.normalize": {"value": "ct", "reason": "CT: clip to the training foreground's ..."}, ...}

The rules follow nnU-Net's published ones (Isensee et al. 2021, its ``ExperimentPlanner``,
fingerprint extractor and normalisation schemes) adapted to 2D slices and to this tool: volumes
resampled in plane only (the slicing axis keeps its spacing), a 2D patch of at most a pixel
budget, and the budgets smaller on a CPU. The plan
reads no voxel: it needs file sizes, voxel spacings and channel names only, so planning a run
costs the time it takes to read the headers. Which keys a config takes from the plan (the ones
it does not set itself) is decided by :mod:`segtune.config`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from segtune.data.base import SOURCES
from segtune.data.nifti import resample_size

__all__ = ["CPU_BUDGET", "DATASET_SHARE", "DEPENDS_ON", "GPU_BUDGET", "LARGE_SIDE", "MIN_BATCH", "PLAN_KEYS",
           "SIZE_MULTIPLE", "Budget", "PlanReport", "common_size", "fill_in", "format_plan", "given",
           "patch_and_batch", "plan", "resampled_slice_sizes", "slice_sizes"]

SIZE_MULTIPLE = 16  # a U-Net of depth 4 (the default monai_unet) halves the size four times
LARGE_SIDE = 256  # images of mixed sizes are resized to a common size of at most this side: they are held in memory
MIN_BATCH = 2  # nnU-Net's least batch size
DATASET_SHARE = 0.05  # nnU-Net: one batch covers at most 5 % of the dataset's pixels (against overfitting)
SPACING_TIE = 1.05  # spacings within 5 % of the coarsest count as equally coarse


@dataclass(frozen=True)
class Budget:
    """The largest training patch (pixels) and the pixels per optimizer step (batch x patch)."""

    patch_pixels: int
    step_pixels: int


# CPU: 128 x 128 at batch 16 (the throughput measured in the design) per step, patches up to 256 x 256.
CPU_BUDGET = Budget(patch_pixels=256 * 256, step_pixels=16 * 128 * 128)
# GPU: nnU-Net's 2D reference, batch 12, with patches up to 512 x 512 (its CT slices).
GPU_BUDGET = Budget(patch_pixels=512 * 512, step_pixels=12 * 512 * 512)

# Every key a plan may set, in the order the rules apply (a component's name before its options).
PLAN_KEYS = ("data.normalize", "data.axis", "data.spacing", "data.size", "data.min_foreground_fraction", "model.norm",
             "loss.name", "loss.include_background", "loss.batch", "scheduler.name", "augment.name", "augment.vertical",
             "train.patch_size", "train.batch_size", "train.foreground_oversample", "train.patience")


# The keys whose values (the config's own, where it sets them) other rules depend on.
DEPENDS_ON = ("data.axis", "data.spacing", "data.size", "data.resize")


def _parse_sizes(fingerprint: Mapping[str, Any]) -> Counter:
    return Counter({tuple(int(s) for s in key.split("x")): n for key, n in (fingerprint.get("sizes") or {}).items()})


def slice_sizes(fingerprint: Mapping[str, Any], axis: int) -> Counter:
    """``(H, W)`` of the 2D images (for volumes: of the slices cut along ``axis``) and how many there are.

    Args:
        fingerprint: with ``source`` and ``sizes`` (``{"HxW" or "XxYxZ": number of files}``).
        axis: the voxel axis volumes are cut along (not used for 2D sources).
    """
    counts: Counter = Counter()
    for size, n in _parse_sizes(fingerprint).items():
        if len(size) == 3:
            counts[tuple(s for i, s in enumerate(size) if i != axis)] += n * size[axis]
        else:
            counts[size[:2]] += n
    return counts


def resampled_slice_sizes(fingerprint: Mapping[str, Any], axis: int, target: Any) -> Counter:
    """:func:`slice_sizes` of volumes once resampled in plane to ``target`` mm (one value or
    ``[rows, columns]``), from the fingerprint's ``grids`` (each file's size with its spacing)."""
    counts: Counter = Counter()
    for grid in fingerprint.get("grids") or []:
        rest = [i for i in range(3) if i != axis]
        size = resample_size(tuple(grid["size"][i] for i in rest), tuple(grid["spacing"][i] for i in rest), target)
        counts[size] += grid["n"] * grid["size"][axis]
    return counts


def _multiple(value: float, rounding: Any = round) -> int:
    return max(SIZE_MULTIPLE, int(rounding(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def common_size(sizes: Counter) -> tuple[int, int]:
    """The size images of mixed sizes are resized to: the most common one, rounded to a multiple of
    :data:`SIZE_MULTIPLE` and scaled down to sides of at most :data:`LARGE_SIDE`."""
    side = [_multiple(s) for s in sizes.most_common(1)[0][0]]
    scale = min(1.0, LARGE_SIDE / max(side))
    return _multiple(side[0] * scale), _multiple(side[1] * scale)


def patch_and_batch(size: tuple[float, float], n_images: int, budget: Budget) -> tuple[tuple[int, int], int]:
    """nnU-Net's rule in 2D: the patch is the median image size (rounded up to a multiple of
    :data:`SIZE_MULTIPLE`), scaled down to fit ``budget.patch_pixels`` keeping its aspect; the
    batch fills ``budget.step_pixels`` but covers at most :data:`DATASET_SHARE` of the dataset's
    ``n_images`` images of that size, and is at least :data:`MIN_BATCH`.

    Example:
        >>> patch_and_batch((500, 500), 100, CPU_BUDGET)
        ((256, 256), 4)
    """
    patch = [_multiple(s, math.ceil) for s in size]
    scale = math.sqrt(budget.patch_pixels / (patch[0] * patch[1]))
    if scale < 1:
        patch = [_multiple(s * scale, math.floor) for s in patch]
    pixels = patch[0] * patch[1]
    by_budget = budget.step_pixels // pixels
    by_share = round(DATASET_SHARE * n_images * size[0] * size[1] / pixels)
    return (patch[0], patch[1]), max(MIN_BATCH, min(by_budget, by_share))


class _Plan(dict):
    def put(self, key: str, value: Any, reason: str) -> None:
        self[key] = {"value": value, "reason": reason}


def _normalize(fingerprint: Mapping[str, Any], out: _Plan) -> None:
    modalities = [str(m) for m in fingerprint.get("modalities") or []]
    if modalities and all(m.casefold() == "ct" for m in modalities):
        out.put("data.normalize", "ct", "CT: clip to the training foreground's 0.5 / 99.5 percentiles, then z-score "
                                        "with its mean and std (nnU-Net): Hounsfield units mean the same in every "
                                        "scan, so one transform for all keeps them comparable")
        return
    what = f"channels {', '.join(modalities)}" if modalities else "intensities without a fixed scale"
    out.put("data.normalize", "zscore", f"{what}: z-score each image (nnU-Net's default for all but CT); one mean "
                                        f"and std over all channels keeps an RGB image's colours, and evens out "
                                        f"exposure where min-max would hang on the darkest and brightest pixel")


def _axis(fingerprint: Mapping[str, Any], out: _Plan) -> None:
    spacing = np.array(fingerprint["median_spacing"], dtype=float)
    coarse = [i for i in range(3) if spacing[i] * SPACING_TIE >= spacing.max()]
    if len(coarse) == 3:
        out.put("data.axis", 2, f"median spacing {spacing.round(3).tolist()} is isotropic: any plane keeps full "
                                f"detail; 2 is axial for RAS-stored volumes")
        return
    axis = 2 if 2 in coarse else int(np.argmax(spacing))
    out.put("data.axis", axis, f"median spacing {spacing.round(3).tolist()}: slice across the coarsest axis so that "
                               f"each slice has the finest spacing in plane (nnU-Net's 2D rule)")


# in-plane spacings of the cases within this ratio of one another count as one: data.spacing is not planned
SPACING_TOLERANCE = 1.1


def _spacing(fingerprint: Mapping[str, Any], axis: int, settings: Mapping[str, Any], out: _Plan) -> Any:
    """Plans ``data.spacing`` for volumes whose in-plane spacings differ by more than
    :data:`SPACING_TOLERANCE` (not beside the config's own ``data.size`` or ``data.resize``); the target in use."""
    if "data.spacing" in settings:
        return settings["data.spacing"]
    if settings.get("data.size") is not None or settings.get("data.resize") is not None or not fingerprint.get("grids"):
        return None
    rest = [i for i in range(3) if i != axis]
    spacings = np.array([[g["spacing"][i] for i in rest] for g in fingerprint["grids"]], dtype=float)
    if (spacings.max(0) <= SPACING_TOLERANCE * spacings.min(0)).all():
        return None  # one spacing (within 10 %): resampling would change nothing but pad mixed sizes
    median = np.array(fingerprint["median_spacing"], dtype=float)
    target = [round(float(v), 4) for v in np.delete(median, axis)]
    out.put("data.spacing", target, f"the median in-plane spacing of the training cases (nnU-Net's target "
                                    f"spacing, in mm): every case is resampled to it in plane on reading (the "
                                    f"slicing axis kept), so a structure has one size in pixels in all; evaluate "
                                    f"and predict resample the probabilities back to each case's own grid")
    return target


def _image_size(fingerprint: Mapping[str, Any], axis: int, settings: Mapping[str, Any], out: _Plan
                ) -> tuple[tuple[float, float], int]:
    """The size images train at and how many images (slices) there are; plans ``data.size`` for mixed sizes."""
    sizes = slice_sizes(fingerprint, axis)
    target = _spacing(fingerprint, axis, settings, out) if fingerprint.get("median_spacing") else None
    if target is not None and fingerprint.get("grids"):  # resampled, and padded to a common size: no data.size
        sizes = resampled_slice_sizes(fingerprint, axis, target)
    n_images = sum(sizes.values())
    if settings.get("data.resize") is not None:
        return tuple(settings["data.resize"]), n_images
    source_options = SOURCES.defaults(fingerprint["source"])
    size = settings.get("data.size", source_options.get("size"))
    if size is None and target is None and len(sizes) > 1 and "size" in source_options:
        size = list(common_size(sizes))
        out.put("data.size", size, f"{len(sizes)} different image sizes: every file is resized on reading to the "
                                   f"most common, rounded to a multiple of {SIZE_MULTIPLE}, sides at most "
                                   f"{LARGE_SIDE} (the images are held in memory)")
    if size is not None:
        return tuple(size), n_images
    stacked = np.array([s for s, n in sizes.items() for _ in range(n)] or [(SIZE_MULTIPLE, SIZE_MULTIPLE)])
    return tuple(float(v) for v in np.median(stacked, 0)), n_images


def _training(fingerprint: Mapping[str, Any], axis: int, settings: Mapping[str, Any], gpu: bool, out: _Plan) -> None:
    size, n_images = _image_size(fingerprint, axis, settings, out)
    budget = GPU_BUDGET if gpu else CPU_BUDGET
    patch, batch = patch_and_batch(size, n_images, budget)
    where = "GPU" if gpu else "CPU"
    shown = "x".join(f"{s:g}" for s in size)
    out.put("train.patch_size", list(patch), f"median image {shown} rounded up to a multiple of {SIZE_MULTIPLE}, "
                                             f"at most {budget.patch_pixels} pixels on a {where}; the rest of a "
                                             f"larger image is seen by random crops and sliding windows")
    out.put("train.batch_size", batch, f"{budget.step_pixels} pixels per step on a {where}, at most "
                                       f"{DATASET_SHARE:.0%} of the {n_images} images per batch (nnU-Net), "
                                       f"at least {MIN_BATCH}")


def _fixed(fingerprint: Mapping[str, Any], out: _Plan) -> None:
    """The rules that hold for every dataset (nnU-Net's trainer defaults, in 2D)."""
    volumes = fingerprint["source"] == "nifti"
    out.put("data.min_foreground_fraction", 0.0, "keep slices without foreground: a model that never sees them "
                                                 "paints tissue on the empty slices of a whole volume")
    out.put("model.norm", "instance", "batch statistics of small batches are noisy; instance norm is nnU-Net's "
                                      "(batch norm with a step schedule cost 0.2 Dice on a brain MRI atlas)")
    out.put("loss.name", "dice_ce", "Dice + cross-entropy (nnU-Net): Dice weighs a small class as much as a large "
                                    "one, cross-entropy gives smooth gradients from the start")
    out.put("loss.include_background", False, "nnU-Net's Dice term leaves out background, whose Dice is near 1 on "
                                              "every image and halves the weight of a rare class")
    out.put("loss.batch", True, "one Dice over the batch (nnU-Net's batch Dice, its 2D default): per image, a crop "
                                "without the class scores the same loss 1 for any false positive, so false "
                                "positives on the many crops without a rare structure go unpunished by Dice "
                                "(a brain MRI tumour: 3.8x the true voxels predicted on the training case)")
    out.put("scheduler.name", "poly", "lr * (1 - epoch / epochs) ** 0.9, nnU-Net's schedule: no step to tune, and "
                                      "the last epochs at a small lr")
    out.put("augment.name", "flip", "random flips: free, label-preserving variety (nnU-Net mirrors every axis)")
    out.put("augment.vertical", volumes, "slices of a volume have no 'up' that matters: flip both axes as nnU-Net "
                                         "does" if volumes else "photographs and 2D images may have an up: "
                                                                 "left-right flips only")
    out.put("train.foreground_oversample", 0.33, "a third of the crops centred on a foreground pixel of a random "
                                                 "class (nnU-Net), so small, rare structures are seen in training")
    out.put("train.patience", 0, "no early stopping: poly reaches its small learning rates only in the last "
                                 "epochs (nnU-Net trains to the end); the best epoch's weights are still kept")


def plan(fingerprint: Mapping[str, Any], *, settings: Mapping[str, Any] | None = None, gpu: bool = False
         ) -> dict[str, dict[str, Any]]:
    """The planned settings of a dataset, each with its reason.

    Args:
        fingerprint: what :func:`segtune.data.fingerprint.survey` (or ``fingerprint``) returns:
            ``source``, ``sizes`` (``{"HxW" or "XxYxZ": number of files}``), ``median_spacing``
            (volumes, of the training cases), ``grids`` (volumes: ``[{"size", "spacing", "n"}]``,
            each file's size with its spacing) and ``modalities`` (``dataset.json``'s channel names, or empty).
        settings: values the config sets itself of the keys other rules depend on
            (``data.axis``, ``data.spacing``, ``data.size``, ``data.resize``); the plan's own are used
            otherwise.
        gpu: plan for a GPU (larger patch and step budgets) rather than a CPU.

    Returns:
        ``{dotted config key: {"value": ..., "reason": ...}}``, keys in :data:`PLAN_KEYS` order.

    Example:
        >>> p = plan({"source": "folder", "sizes": {"500x500": 40}, "modalities": []})
        >>> p["train.patch_size"]["value"], p["train.batch_size"]["value"]
        ([256, 256], 4)
    """
    settings = dict(settings or {})
    out = _Plan()
    _normalize(fingerprint, out)
    if fingerprint.get("median_spacing"):
        _axis(fingerprint, out)
    axis = settings.get("data.axis", out.get("data.axis", {}).get("value", 2))
    _training(fingerprint, axis, settings, gpu, out)
    _fixed(fingerprint, out)
    return {key: out[key] for key in PLAN_KEYS if key in out}


def given(tree: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """Whether the config tree sets the dotted ``key`` itself, and its value there."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


@dataclass(frozen=True)
class PlanReport:
    """What a plan proposed for a config and what became of each key.

    ``status`` is ``applied``, ``off`` (the config says ``plan: off``) or ``no plan`` (a source
    without files to plan from); ``applied`` are the keys the plan filled in, ``overridden`` the
    ones the config sets itself (with its value), ``unused`` the ones its components do not take
    (with the reason).
    """

    entries: dict[str, dict[str, Any]]
    status: str
    applied: list[str]
    overridden: dict[str, Any]
    unused: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "entries": self.entries, "applied": self.applied,
                "overridden": self.overridden, "unused": self.unused}


def fill_in(tree: Mapping[str, Any], entries: Mapping[str, dict[str, Any]],
            takes: Callable[[str, Mapping[str, Any]], str | None]) -> tuple[dict[str, Any], PlanReport]:
    """The planned values of the keys ``tree`` does not set, in plan order.

    Args:
        tree: the config as the user wrote it (YAML and ``--set``), before validation.
        entries: :func:`plan`'s result.
        takes: ``takes(key, changes)`` is None where the config (with the planned ``changes``
            so far, e.g. a planned ``augment.name``) takes ``key``, else why not.

    Returns:
        ``{key: value}`` to set, and the report of every key.
    """
    changes: dict[str, Any] = {}
    overridden: dict[str, Any] = {}
    unused: dict[str, str] = {}
    for key, entry in entries.items():
        is_set, value = given(tree, key)
        why_not = None if is_set else takes(key, changes)
        if is_set:
            overridden[key] = value
        elif why_not:
            unused[key] = why_not
        else:
            changes[key] = entry["value"]
    return changes, PlanReport(dict(entries), "applied", list(changes), overridden, unused)


def format_plan(report: PlanReport) -> str:
    """The plan as text: each key with its value, what became of it and its reason."""
    head = {"applied": "plan (from the data; the config's own values win)",
            "off": "plan: off in the config, so none of this is applied",
            "no plan": "plan: none for this source (built-in data with its own settings)"}[report.status]
    lines = [head]
    for key, entry in report.entries.items():
        setting = f"{key}={_shown(entry['value'])}"
        if key in report.overridden:
            state = f"config: {_shown(report.overridden[key])}"
        elif key in report.unused:
            state = f"not used: {report.unused[key]}"
        else:
            state = "planned" if report.status == "applied" else "-"
        lines.append(f"  {setting:<34} {state:<18} # {entry['reason']}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)
