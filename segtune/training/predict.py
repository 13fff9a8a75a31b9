"""Using a trained run: evaluate it on a split, or write label masks for new images and volumes.

Predictions come back in the input's own form: a PNG label mask per 2D image, and a NIfTI
label volume per 3D case, put back together from its slices and carrying the source file's
affine and header, so it overlays the scan in any viewer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segtune.training.checkpoint import load_checkpoint, model_from_checkpoint
from segtune.config import Config, build_config, read_yaml
from segtune.data import CaseSpan, SegData, Split, normalize_images
from segtune.data.folder import IMAGE_SUFFIXES, read_image
from segtune.data.nifti import (NIFTI_ENDINGS, SLICES_AT_ONCE, from_slices, in_plane_spacing, load_nifti, read_array,
                                read_image_volume, resample_size, resample_slices, resize_probabilities,
                                resize_slices, strip_ending, to_slices)
from segtune.errors import DataError
from segtune.training.evaluate import case_scores, final_distances, predict_labels, predict_probabilities
from segtune.training.metrics import confusion_counts, dice_from_counts, summarize
from segtune.training.postprocess import (apply_postprocessing, case_units, choose_postprocessing, mean_case_dice,
                                          postprocess_split, read_postprocessing, write_postprocessing)
from segtune.training.precision import as_trained
from segtune.training.runtime import evaluation_options, load_data, resolve_device

__all__ = ["SPLITS", "choose_run_postprocessing", "collect_inputs", "evaluate_run", "group_channels", "is_volume",
           "per_case_dice", "predict_files", "run_config", "saved_postprocessing", "split_with_cases",
           "write_label_volume"]

SPLITS = ("train", "val", "test", "all")


def _checkpoint_path(run: str | Path, checkpoint: str) -> Path:
    run = Path(run)
    return run if run.is_file() else run / f"{checkpoint}.pt"


def _run_folder(run: str | Path) -> Path:
    run = Path(run)
    return run.parent if run.is_file() else run


def run_config(run: str | Path, overrides: list[str] = ()) -> Config:
    """The resolved config a run was trained with (its ``config.yaml``), with ``--set`` overrides.

    Args:
        run: the run directory, or a checkpoint file inside it.
        overrides: ``["data.path=...", ...]``, e.g. to evaluate on another dataset.

    Raises:
        DataError: no ``config.yaml`` beside the checkpoint.
    """
    folder = _run_folder(run)
    if not (folder / "config.yaml").is_file():
        raise DataError(f"{folder}: no config.yaml; give the run directory that training wrote")
    return build_config(read_yaml(folder / "config.yaml"), overrides, origin=str(folder / "config.yaml"))


def split_with_cases(data: SegData, split: str) -> tuple[Split, list[list[Any]] | None]:
    """The slices of ``split`` (``all``: every split once) and its ``[case_id, n_slices]`` list, if volumes."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    cases = data.info.get("cases")
    listed = cases or data.info.get("stems")
    test_is_val = listed is not None and listed["test"] == listed["val"]
    names = ["train", "val"] + ([] if test_is_val else ["test"]) if split == "all" else [split]
    parts = [data.split(n) for n in names]
    joined = parts[0] if len(parts) == 1 else Split(torch.cat([p.images for p in parts]),
                                                   torch.cat([p.masks for p in parts]))
    if cases is None:
        return joined, None
    case_list = [c for n in names for c in cases[n]]
    if sum(n for _, n in case_list) != len(joined):  # e.g. train slices after data.train_fraction < 1
        return joined, None
    return joined, case_list


def per_case_dice(pred: torch.Tensor, target: torch.Tensor, cases: list[list[Any]],
                  class_names: list[str]) -> dict[str, dict[str, float]]:
    """3D Dice per class of each case, from the slices of consecutive cases.

    Args:
        pred: predicted labels ``(N, H, W)``, the slices of the cases in order.
        target: true labels ``(N, H, W)``.
        cases: ``[case_id, n_slices]`` per case, summing to ``N``.
        class_names: the names of labels ``0..K-1``.

    Returns:
        ``{case_id: {class_name: dice}}``; a class absent from a case and from its prediction scores 1.0.
    """
    result, start = {}, 0
    for case_id, n in cases:
        dice = dice_from_counts(confusion_counts(pred[start:start + n], target[start:start + n], len(class_names)))
        result[str(case_id)] = {name: float(d) for name, d in zip(class_names, dice)}
        start += n
    return result


def _split_metrics(pred: torch.Tensor, masks: torch.Tensor, cases: list[list[Any]] | None,
                   names: list[str]) -> dict:
    """Pooled Dice / IoU of a split, and for volumes the 3D Dice per case and its mean per class."""
    metrics = summarize(confusion_counts(pred, masks, len(names)), names)
    if cases:
        per_case = per_case_dice(pred, masks, cases, names)
        mean = {n: float(np.mean([c[n] for c in per_case.values()])) for n in names}
        metrics.update(per_case=per_case, case_mean_dice_per_class=mean,
                       case_mean_dice=float(np.mean([mean[n] for n in names[1:]])))
    return metrics


def native_labels(probabilities_of: Any, images: torch.Tensor, canvas: tuple[int, int], entry: dict[str, Any]
                  ) -> torch.Tensor:
    """A case's labels ``(n, H, W)`` on its own grid from its slices as read with ``data.spacing``.

    The case's ``box`` is cut from the ``canvas`` first, so that it is predicted alone, as
    :func:`predict_files` predicts it (and nnU-Net a case); after a ``data.resize`` the whole
    slices are predicted and the probabilities brought back to the canvas size before the cut.
    The probabilities, not labels, are resampled linearly to the case's native ``size``, then the
    most likely class taken (nnU-Net's export).
    """
    top, left, h, w = entry["box"]
    if tuple(images.shape[2:]) == tuple(canvas):
        probabilities = probabilities_of(images[:, :, top:top + h, left:left + w])
    else:
        probabilities = resize_probabilities(probabilities_of(images), tuple(canvas))[:, :, top:top + h, left:left + w]
    return resize_probabilities(probabilities, tuple(entry["size"])).argmax(1)


def _native_masks(entry: dict[str, Any], axis: int) -> torch.Tensor:
    label = read_array(Path(entry["label"]), np.float32)
    label = label[..., 0] if label.ndim == 4 else label
    return torch.from_numpy(to_slices(label[None], axis)[:, 0].astype(np.int64))


def _stack(parts: list[torch.Tensor], fill: int) -> torch.Tensor:
    """Label slices of several cases in one ``(N, H, W)``, smaller ones padded with ``fill``."""
    h, w = max(p.shape[1] for p in parts), max(p.shape[2] for p in parts)
    return torch.cat([F.pad(p, (0, w - p.shape[2], 0, h - p.shape[1]), value=fill) for p in parts])


def native_grid(probabilities_of: Any, split: Split, cases: list[list[Any]], info: dict[str, Any],
                n_classes: int) -> tuple[torch.Tensor, Split]:
    """Predicted and true labels of ``split``'s cases on each case's own grid (``info["native"]``).

    Args:
        probabilities_of: ``(n, C, h, w)`` images to their class probabilities ``(n, K, h, w)``.
        split: the slices as read, of ``cases`` in order.
        cases: ``[case_id, n_slices]`` per case.
        info: the data's ``info``, with ``native`` and ``axis`` from the ``nifti`` source.
        n_classes: the number of classes ``K``.

    Returns:
        Predicted labels ``(N, H, W)`` and a split of the true labels (read from the label files)
        without images, its spans at each case's native spacing where ``split`` has spans. Cases of
        different native sizes are padded to the largest with label ``K``, which no metric counts.
    """
    native, preds, masks, start = info["native"], [], [], 0
    for case_id, n in cases:
        entry = native["cases"][str(case_id)]
        preds.append(torch.cat([native_labels(probabilities_of, x, native["canvas"], entry)
                                for x in split.images[start:start + n].split(SLICES_AT_ONCE)]))
        masks.append(_native_masks(entry, info["axis"]))
        if masks[-1].shape != preds[-1].shape:
            raise DataError(f"{entry['label']}: {tuple(masks[-1].shape)} slices, but {case_id} was read with "
                            f"{tuple(preds[-1].shape)}; the file changed since, so evaluate again")
        start += n
    spans = None if split.cases is None else tuple(
        CaseSpan(s.case_id, s.n, tuple(native["cases"][s.case_id]["spacing"])) for s in split.cases)
    truth = _stack(masks, n_classes)
    return _stack(preds, n_classes), Split(torch.zeros(len(truth), 0, *truth.shape[1:]), truth, spans)


class _Evaluation:
    """A run's checkpoint and its data prepared for scoring: every image of every split, normalised
    as in training, predicted with the run's own evaluation options (so the numbers match its summary)."""

    def __init__(self, run: str | Path, checkpoint: str, overrides: list[str]) -> None:
        # every image of the split: train_fraction and min_foreground_fraction chose what to train on
        config = run_config(run, [*overrides, "data.train_fraction=1.0", "data.min_foreground_fraction=0"])
        device = resolve_device(config.train.device)
        ckpt = load_checkpoint(_checkpoint_path(run, checkpoint))
        self.model = model_from_checkpoint(ckpt).to(device)
        self.data = load_data(config, normalize_stats=ckpt["meta"].get("normalize_stats"))
        self.config, self.distances = config, final_distances(config)
        trained = as_trained(config, ckpt["meta"]).train  # train.precision auto: what the run chose
        self.options = {**evaluation_options(trained, device), "patch_size": config.train.patch_size}
        if self.options["precision"] == "fp16" and device.type != "cuda":  # a GPU run evaluated here: fp16 is GPU-only
            self.options["precision"] = "fp32"

    def predict(self, split: str) -> tuple[torch.Tensor, Split, list[list[Any]] | None]:
        """Predicted labels ``(N, H, W)``, the split itself and its case list (None for 2D images).

        Volumes read with ``data.spacing`` are scored on each case's own grid (:func:`native_grid`):
        the split returned then holds the labels of the files (and no images), the spans their spacing.
        """
        images, cases = split_with_cases(self.data, split)
        if self.grid != "original" or cases is None:
            return predict_labels(self.model, images.images, **self.options), images, cases
        return (*native_grid(lambda x: predict_probabilities(self.model, x, **self.options), images, cases,
                             self.data.info, len(self.data.class_names)), cases)

    @property
    def grid(self) -> str:
        """Where metrics are computed: ``original`` (each case's own grid, for volumes read with
        ``data.spacing``), else ``as read`` (the grid the model sees); labels remapped by
        ``data.label_map`` or ``data.min_class_fraction`` are scored as read, as the files do not hold them."""
        data = self.config.data
        if "native" not in self.data.info or data.label_map or data.min_class_fraction > 0:
            return "as read"
        return "original"


def _choose_on_val(evaluation: _Evaluation, run: str | Path, checkpoint: str) -> dict[str, bool]:
    """Choose the post-processing on the val split and save it to ``RUN/postprocessing.json``."""
    pred, images, cases = evaluation.predict("val")
    names = evaluation.data.class_names
    preds, targets = case_units(pred, cases), case_units(images.masks, cases)
    choice = choose_postprocessing(preds, targets, names)
    cleaned = [apply_postprocessing(p, choice, names) for p in preds]
    val_dice = {key: dict(zip(names, map(float, mean_case_dice(p, targets, len(names)))))
                for key, p in (("without", preds), ("with", cleaned))}
    write_postprocessing(_run_folder(run), choice, checkpoint=checkpoint, class_names=names, val_dice=val_dice)
    return choice


def choose_run_postprocessing(run: str | Path, *, checkpoint: str = "best", overrides: list[str] = ()) -> dict:
    """Choose a run's post-processing on its val split and save it as ``RUN/postprocessing.json``.

    Args:
        run: run directory (with ``config.yaml``) or a checkpoint file in it.
        checkpoint: ``best`` or ``last``.
        overrides: ``--set`` style changes to the run's config.

    Returns:
        The saved file's content (:func:`~segtune.training.postprocess.read_postprocessing`).

    Raises:
        DataError: no run there, or a problem with the data.
    """
    _choose_on_val(_Evaluation(run, checkpoint, list(overrides)), run, checkpoint)
    return read_postprocessing(_run_folder(run))


def evaluate_run(run: str | Path, *, split: str = "test", checkpoint: str = "best",
                 overrides: list[str] = (), postprocess: bool = False) -> tuple[dict, list[str]]:
    """Per-class Dice and IoU of a run's checkpoint on a split of its data (or of other data).

    For volumes (the ``nifti`` source) the result also holds the 3D Dice of each case, over the
    whole volume (every slice of the case), and the mean over cases, per class. Metrics are
    computed at the resolution the model sees, except for volumes read with ``data.spacing``:
    their probabilities are resampled back onto each case's own grid, and scored there against
    its label file (``grid: original``; see :meth:`_Evaluation.grid`), on every image of the split
    (``data.train_fraction`` and ``data.min_foreground_fraction`` chose what to train on),
    normalised as in training (``zscore_dataset``: the training set's statistics); a
    patch-trained run (``train.patch_size``) predicts whole images by sliding windows.

    Args:
        run: run directory (with ``config.yaml``) or a checkpoint file in it.
        split: ``train``, ``val``, ``test`` or ``all`` (every image once: a separate test set).
        checkpoint: ``best`` or ``last``.
        overrides: ``--set`` style changes to the run's config, e.g. ``["data.path=other/"]``.
        postprocess: also choose the largest-component post-processing on the val split, save it
            to ``RUN/postprocessing.json`` and score ``split`` with it applied.

    Returns:
        ``(metrics, class_names)``: metrics as in ``summary.json``, plus for volumes
        ``per_case`` (``{case: {class: dice}}``), ``case_mean_dice_per_class`` and ``case_mean_dice``
        (foreground classes) and ``grid`` (``original`` or ``as read``); for one split, ``case_metrics``
        (each case's metrics as in a summary's ``per_case``, surface metrics included with ``metrics.surface``) and their means (``hd95_mean``, ...); with ``postprocess``, ``postprocessing`` (``{class: keep_largest}``)
        and ``postprocessed`` (the same metrics after it).

    Raises:
        DataError: no run there, or a problem with the data.
    """
    evaluation = _Evaluation(run, checkpoint, list(overrides))
    names = evaluation.data.class_names
    pred, images, cases = evaluation.predict(split)
    metrics = _split_metrics(pred, images.masks, cases, names)
    if cases:
        metrics["grid"] = evaluation.grid
    if images.cases is not None:  # one split: its cases' surface metrics, and their means
        scores = case_scores(pred, images, names, evaluation.distances)
        metrics.update({k: v for k, v in scores.items() if k != "per_case"}, case_metrics=scores["per_case"])
    if postprocess:
        choice = _choose_on_val(evaluation, run, checkpoint)
        cleaned = postprocess_split(pred, cases, choice, names)
        metrics.update(postprocessing=choice, postprocessed=_split_metrics(cleaned, images.masks, cases, names))
    return metrics, names


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Image and NIfTI files among ``inputs``, folders expanded (sorted).

    Raises:
        DataError: a missing path, or nothing usable found.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p))
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images (.png, .jpg, .tif) or volumes (.nii.gz) found in {', '.join(map(str, inputs))}")
    return files


def group_channels(volumes: list[Path], n_channels: int) -> dict[str, tuple[Path, ...]]:
    """NIfTI files grouped into cases: ``case_0000``, ``case_0001``, ... are the channels of ``case``.

    A single-channel model takes each file as a case (a trailing ``_0000`` is dropped from the
    case name); a 4D file with the channels last is a case on its own.

    Raises:
        DataError: a case whose channel files are not ``_0000`` to ``_{n_channels-1}``.
    """
    groups: dict[str, list[Path]] = {}
    for path in volumes:
        match = re.fullmatch(r"(.+)_(\d{4})", strip_ending(path.name))
        groups.setdefault(match.group(1) if match else strip_ending(path.name), []).append(path)
    cases = {}
    for case, files in groups.items():
        files = sorted(files, key=lambda p: p.name)
        expected = [f"{case}_{c:04d}" for c in range(n_channels)]
        if len(files) == 1 and strip_ending(files[0].name) in (case, f"{case}_0000"):
            cases[case] = tuple(files)
        elif [strip_ending(f.name) for f in files] == expected:
            cases[case] = tuple(files)
        else:
            raise DataError(f"{files[0]}: case {case!r} has channel files {[f.name for f in files]}, but the model "
                            f"takes {n_channels} channel(s): give {', '.join(e + '.nii.gz' for e in expected)}")
    return cases


def _volume_options(run: str | Path) -> tuple[int, tuple[int, int] | None, Any]:
    """The slicing axis, slice size and in-plane spacing the run was trained with (axis 2, no resize
    and native spacing if not volumes)."""
    try:
        data = run_config(run).data
    except DataError:
        return 2, None, None
    options = data.options if data.source == "nifti" else {}
    return options.get("axis", 2), options.get("size"), options.get("spacing")


class _Predictor:
    """A loaded checkpoint that labels ``(N, C, H, W)`` slices as in training and returns ``(N, H, W)``."""

    def __init__(self, run: str | Path, checkpoint: str, batch_size: int) -> None:
        ckpt = load_checkpoint(_checkpoint_path(run, checkpoint))
        self.meta = ckpt["meta"]
        self.device = resolve_device("auto")
        self.model = model_from_checkpoint(ckpt).to(self.device)
        self.batch_size = batch_size

    def _prepared(self, images: torch.Tensor) -> torch.Tensor:
        if self.meta.get("resize"):
            images, _ = resize_slices(images, None, tuple(self.meta["resize"]))
        return normalize_images(images.float(), self.meta["normalize"], self.meta.get("normalize_stats"))

    def __call__(self, images: torch.Tensor, read_size: tuple[int, int] | None = None) -> torch.Tensor:
        size = tuple(images.shape[2:])
        if read_size:
            images, _ = resize_slices(images, None, tuple(read_size))
        labels = predict_labels(self.model, self._prepared(images), batch_size=self.batch_size, device=self.device,
                                patch_size=self.meta.get("patch_size"))
        if tuple(labels.shape[1:]) != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        return labels

    def resampled(self, images: torch.Tensor, read_size: tuple[int, int]) -> torch.Tensor:
        """Labels of slices resampled to ``read_size`` (a run trained with ``data.spacing``) on their
        own grid: the probabilities resampled back linearly, then the most likely class."""
        size = tuple(images.shape[2:])
        images, _ = resample_slices(images.float(), None, tuple(read_size), 0)
        labels = []
        for x in self._prepared(images).split(SLICES_AT_ONCE):
            probabilities = predict_probabilities(self.model, x, batch_size=self.batch_size, device=self.device,
                                                  patch_size=self.meta.get("patch_size"))
            labels.append(resize_probabilities(resize_probabilities(probabilities, tuple(read_size)), size).argmax(1))
        return torch.cat(labels)


def write_label_volume(labels: np.ndarray, reference: Path, target: Path) -> None:
    """Save ``labels`` ``(X, Y, Z)`` as NIfTI with ``reference``'s affine and header (uint8 data)."""
    import nibabel as nib

    source = load_nifti(reference)
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    if len(header.get_data_shape()) > 3:  # a 4D (channels-last) source: the labels are 3D
        header.set_data_shape(labels.shape)
    image = nib.Nifti1Image(labels.astype(np.uint8), source.affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, str(target))


def saved_postprocessing(run: str | Path, checkpoint: str = "best") -> dict[str, Any]:
    """The run's ``postprocessing.json`` for ``checkpoint``, chosen on its val split (and saved) if
    there is none yet or it was chosen for another checkpoint.

    Raises:
        DataError: no run there, an unreadable file, or a problem with the run's data.
    """
    saved = read_postprocessing(_run_folder(run))
    if saved is None or saved.get("checkpoint") != checkpoint:
        saved = choose_run_postprocessing(run, checkpoint=checkpoint)
    return saved


def _postprocessed(labels: np.ndarray, saved: dict[str, Any] | None) -> np.ndarray:
    if saved is None:
        return labels
    return apply_postprocessing(labels, saved["keep_largest_component"], saved["class_names"])


def predict_files(run: str | Path, inputs: list[str | Path], out: str | Path, *,
                  checkpoint: str = "best", batch_size: int = 16, postprocess: bool = False) -> list[Path]:
    """Write label masks for images and volumes into ``out``, each in its input's own form.

    A 2D image gives ``out/<stem>.png``. NIfTI volumes (``.nii``, ``.nii.gz``) are cut into
    slices along the axis the run was trained on, labelled, stacked back and written as
    ``out/<case>.nii.gz`` with the source affine and header; nnU-Net channel files
    ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz`` make one multi-channel case.
    Inputs are prepared as in training (channels, resize, normalisation) and, for a
    patch-trained run (its checkpoint's ``patch_size``), predicted whole by sliding windows; labels
    are resized back to the input's size with nearest neighbour. A run trained with ``data.spacing``
    resamples each volume's slices in plane to that spacing, and its probabilities back onto the
    input's own grid before the most likely class is taken, so the labels overlay the input voxel
    for voxel. With ``postprocess``, the run's saved
    post-processing (:func:`saved_postprocessing`) is applied to each image or whole volume.

    Returns:
        The paths written.

    Raises:
        DataError: unreadable inputs, or channel files that do not match the model.
    """
    from PIL import Image

    predictor = _Predictor(run, checkpoint, batch_size)
    n_channels = predictor.meta["in_channels"]
    files = collect_inputs(inputs)
    saved = saved_postprocessing(run, checkpoint) if postprocess else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in (p for p in files if not is_volume(p)):
        labels = _postprocessed(predictor(torch.from_numpy(read_image(path, n_channels))[None])[0].numpy(), saved)
        target = out / f"{path.stem}.png"
        Image.fromarray(labels.astype(np.uint8)).save(target)
        written.append(target)
    volumes = [p for p in files if is_volume(p)]
    if volumes:
        axis, read_size, spacing = _volume_options(run)
        for case, channel_files in group_channels(volumes, n_channels).items():
            slices = torch.from_numpy(to_slices(read_image_volume(channel_files, n_channels), axis))
            if spacing is None:
                labels = predictor(slices, read_size)
            else:  # resampled to the run's spacing as in training, the labels on the input's own grid
                grid = resample_size(tuple(slices.shape[2:]), in_plane_spacing(channel_files[0], axis), spacing)
                labels = predictor.resampled(slices, grid)
            labels = _postprocessed(from_slices(labels.numpy(), axis), saved)
            target = out / f"{case}.nii.gz"
            write_label_volume(labels, channel_files[0], target)
            written.append(target)
    return written
