"""The set-up and the optimisation step that every training shares: the loop, pre-training, the LR range test.

- :func:`setup_device`: the configured device, checked, and the thread count (default: fixed at
  every CPU of :func:`available_cpus` but one; ``auto``: the CPUs other processes leave free; :mod:`segtune.training.threads`);
  :func:`device_and_threads`: the same, with the :class:`~segtune.training.threads.Threads` that a
  training loop adapts between periods with ``auto``; :func:`cpu_model`: the CPU's name, for figures and caches.
- :func:`load_data`: the configured data source with the shared preprocessing.
- :func:`build_training`: the model, loss and optimizer of a config.
- :func:`epoch_batches` and :func:`train_on_batches`: one epoch's shuffled batches and their
  optimizer steps; :func:`backward_step`: one step; :class:`EpochTally`: the epoch's train Dice and
  divergence check, on the device.
- :func:`run_samples`: the training samples of a run (whole images, or crops with ``train.patch_size``).
- :func:`evaluation_options`: how every validation of a run evaluates (batch size, device, precision).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from segtune.components.losses import LOSSES
from segtune.components.models import build_model, set_encoder_trainable
from segtune.components.optim import OPTIMIZERS
from segtune.config import Config, TrainConfig
from segtune.data import SOURCES, SegData
from segtune.data.cases import prepare_cases
from segtune.errors import ConfigError
from segtune.training.evaluate import autocast, labels_from_logits, memory_format, wide_dtype
from segtune.training.metrics import counts_from_joint, joint_counts
from segtune.training.patches import PatchSampler, TrainingSamples, WholeImages
from segtune.training.threads import Threads

__all__ = ["EpochTally", "available_cpus", "backward_step", "build_training", "compiled", "cpu_model",
           "device_and_threads", "epoch_batches", "epoch_order", "evaluation_options", "grad_scaler", "load_data",
           "memory_format", "resolve_device", "run_samples", "setup_device", "train_on_batches"]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; other names are checked to exist.

    Raises:
        ConfigError: the named device is not available on this machine.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA GPU is available; use train.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name!r} but MPS is not available; use train.device=auto or cpu")
    return device


def setup_device(train: TrainConfig) -> torch.device:
    """The device of ``train.device`` for ``train.precision``, after setting the thread count
    (``train.num_threads``, by default every CPU this process may use but one: :func:`device_and_threads`).

    Raises:
        ConfigError: the device is not available, or fp16 is asked for off a CUDA GPU.
    """
    return device_and_threads(train)[0]


def device_and_threads(train: TrainConfig) -> tuple[torch.device, Threads]:
    """:func:`setup_device`'s device and the run's :class:`~segtune.training.threads.Threads`, started:
    ``train.num_threads``, by default fixed at every CPU of :func:`available_cpus` but one (torch counts
    the machine's cores, not a quota's); with ``auto`` the CPUs other processes leave free, which
    :meth:`Threads.adapt` follows.

    Raises:
        ConfigError: the device is not available, or fp16 is asked for off a CUDA GPU.
    """
    device = resolve_device(train.device)
    if train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use bf16 on a CPU")
    threads = Threads(train.num_threads, available_cpus())
    threads.start()
    return device, threads


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (a container's
    ``--cpus``), at least 1. ``os.cpu_count()`` counts the machine's, which a container or ``taskset``
    may not give; more threads than CPUs make each barrier wait for a descheduled thread."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(cpus, 1)


def _cgroup_quota() -> float | None:
    """The cgroup's CPU quota in CPUs: cgroup v2's ``cpu.max`` (``150000 100000``: 1.5), else v1's
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (a quota of -1: none); None without a quota."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    return None


def cpu_model() -> str:
    """The CPU's model name (``AMD EPYC``, from /proc/cpuinfo), else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_data(config: Config, *, normalize_stats: dict | None = None) -> SegData:
    """Build the configured data source and apply the shared preprocessing (``normalize_stats``:
    a trained model's ``zscore_dataset`` statistics, instead of this training split's)."""
    data_cfg = config.data
    raw = SOURCES.build(data_cfg.source, data_cfg.options, config.seed)
    return prepare_cases(raw, folds=data_cfg.folds, fold=data_cfg.fold, split_seed=data_cfg.split_seed,
                   pixel_spacing=data_cfg.pixel_spacing, val_from=data_cfg.val_from,
                   train_fraction=data_cfg.train_fraction, resize=data_cfg.resize,
                   normalize=data_cfg.normalize, seed=config.seed, color=data_cfg.color,
                   label_map=data_cfg.label_map, min_class_fraction=data_cfg.min_class_fraction,
                   min_foreground_fraction=data_cfg.min_foreground_fraction, normalize_stats=normalize_stats)


def run_samples(config: Config, data: SegData, device: torch.device) -> TrainingSamples:
    """The training samples of ``config``'s run on ``data``: its whole training images or, with
    ``train.patch_size``, crops of them with ``train.foreground_oversample`` (see
    :mod:`segtune.training.patches`); the training loop and the LR range test draw from it."""
    train = config.train
    if train.patch_size is None:
        return WholeImages(data.train.images, data.train.masks, device)
    return PatchSampler(data.train.images, data.train.masks, patch_size=train.patch_size,
                        foreground_oversample=train.foreground_oversample, n_classes=data.n_classes, device=device)


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """The loss scaler of ``precision``: active for fp16 only, a no-op otherwise."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")


def evaluation_options(train: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The keyword arguments with which every evaluation of a run is made: twice the training
    batch size (no gradients to keep), the run's device, precision and memory format."""
    return {"batch_size": train.batch_size * 2, "device": device, "precision": train.precision,
            "channels_last": train.channels_last}


def build_training(config: Config, data: SegData, device: torch.device):
    """The model, loss and optimizer of ``config`` for ``data``, on ``device``, in the configured memory format.

    The model gets ``out_channels`` set (1 for single-channel losses, else the class count),
    the encoder weights of ``model.encoder_weights`` and, with ``model.freeze_encoder``, a
    frozen encoder. The LR range test builds its parts here too; pre-training builds its own (an
    autoencoder around the model, with an MSE loss, not the configured segmentation loss).

    Returns:
        ``(model, loss_fn, optimizer)``.
    """
    loss_fn = LOSSES.build(config.loss.name, config.loss.options, data.n_classes).to(device)
    out_channels = 1 if getattr(loss_fn, "single_channel", False) else data.n_classes
    model = build_model(config.model.name, config.model.options, data.in_channels, out_channels)
    model.out_channels = out_channels
    if config.model.freeze_encoder:
        set_encoder_trainable(model, False)
    model = model.to(device).to(memory_format=memory_format(config.train.channels_last))
    optimizer = OPTIMIZERS.build(config.optimizer.name, config.optimizer.options, model.parameters())
    return model, loss_fn, optimizer


def compiled(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)`` with static shapes (a run has at most two batch sizes).

    Raises:
        ConfigError: on a CPU without a C++ compiler, which ``torch.compile`` needs there.
    """
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        raise ConfigError("train.compile=true needs a C++ compiler on a CPU (install g++); "
                          "or set train.compile=false")
    return torch.compile(model, dynamic=False)


def epoch_order(n: int, n_aug: int, augmenting: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled ``(index, augment?)`` pairs of one epoch: the data once, plus ``n_aug`` augmented copies.

    With an augmentation and ``n_aug == 0`` every sample is augmented on the fly.

    Returns:
        ``index`` (``(n * (1 + n_aug),)`` int64) and ``flags`` (same shape, bool: augment this one).

    Example:
        >>> index, flags = epoch_order(3, 1, True, torch.Generator().manual_seed(0))
        >>> len(index), int(flags.sum())
        (6, 3)
    """
    index = torch.arange(n).repeat(1 + n_aug)
    flags = torch.zeros(len(index), dtype=torch.bool)
    if augmenting:
        flags[n:] = True
        if n_aug == 0:
            flags[:] = True
    order = torch.randperm(len(index), generator=generator)
    return index[order], flags[order]


def epoch_batches(n: int, batch_size: int) -> list[slice]:
    """The batches of an epoch of ``n`` samples as slices; a last batch of one joins no step (a
    batch of one breaks batch norm), so its sample waits for the next epoch's shuffle."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, start + batch_size) for start in starts]


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One optimizer step on ``loss``: zero the gradients, back-propagate (scaled for fp16), step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def train_on_batches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, model: torch.nn.Module,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, device: torch.device, precision: str,
                     check: Callable[[float], None] | None = None,
                     tally: "EpochTally | None" = None) -> float | None:
    """One optimizer step per ``(inputs, targets)`` batch; returns the mean loss per sample, or with
    a ``tally`` None (the loss sum stays in it, on the device: :meth:`EpochTally.mean_loss`).

    The losses are summed on the device and read once, at the end, so that a GPU never waits for
    the host between batches.

    Args:
        batches: ``(B, C, H, W)`` inputs and the targets ``loss_fn`` takes, on ``device``.
        model: called on the inputs (in training mode: the caller sets it).
        loss_fn: ``loss_fn(outputs, targets)``, computed in float32 outside autocast's low precision.
        check: called with each batch's loss (a host read per batch) before its step; raising from
            it stops the epoch (the LR range test's divergence).
        tally: adds each batch's outputs, targets and loss on the device (see :class:`EpochTally`).
    """
    total = torch.zeros((), dtype=wide_dtype(device), device=device)
    count = 0
    for x, y in batches:
        with autocast(device, precision):
            outputs = model(x).float()
            loss = loss_fn(outputs, y)
        if check is not None:
            check(float(loss.detach()))
        if tally is not None:
            tally.add(outputs.detach(), y, loss.detach())
        else:
            total += loss.detach() * len(x)
            count += len(x)
        backward_step(loss, optimizer, scaler)
    return None if tally is not None else float(total) / max(count, 1)


class EpochTally:
    """What one epoch's training batches add up to, kept on the device (no host read per batch): the
    confusion matrix of their predictions, as trained (the train Dice of the batches already seen,
    augmented ones included, with the weights of each batch's step), and the divergence check.

    Args:
        n_classes: the label classes.
        device: where the batches are.
        first_loss: the run's first batch loss (the divergence reference), None before its first batch.
        divergence_factor: a loss above this multiple of the first one has diverged; None: NaN/inf only.
    """

    def __init__(self, n_classes: int, device: torch.device, *, first_loss: float | None,
                 divergence_factor: float | None) -> None:
        self.n_classes, self.factor = n_classes, divergence_factor
        self.joint = torch.zeros(n_classes + 1, n_classes + 1, dtype=torch.int64, device=device)  # joint_counts
        self.first = None if first_loss is None else torch.tensor(first_loss, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.bad_loss = torch.zeros((), device=device)  # the first diverged batch's loss, once ``bad``
        self.loss_sum = torch.zeros((), dtype=wide_dtype(device), device=device)  # over the samples added
        self.samples = 0

    def add(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Count ``(B, K, H, W)`` logits against ``(B, H, W)`` labels, and check the batch's loss."""
        loss = loss.float()
        if self.first is None:
            self.first = loss.clone()
        bad = ~torch.isfinite(loss)
        if self.factor is not None:
            bad |= (loss > self.factor * self.first) & (self.first > 0)
        self.bad_loss = torch.where(self.bad, self.bad_loss, loss)
        self.bad |= bad
        self.loss_sum += loss * len(targets)
        self.samples += len(targets)
        self.joint += joint_counts(labels_from_logits(outputs), targets, self.n_classes)  # on the device

    def mean_loss(self) -> float:
        """The mean loss per sample of the batches added; one host read."""
        return float(self.loss_sum) / max(self.samples, 1)

    def diverged(self) -> tuple[float, float] | None:
        """``(loss, first loss)`` of the first diverged batch, or None; one host read."""
        return (float(self.bad_loss), float(self.first)) if bool(self.bad) else None

    def counts(self) -> torch.Tensor:
        """Per-class ``(intersection, predicted, true)`` pixel counts on the host, as
        :func:`~segtune.training.metrics.confusion_counts` gives them."""
        return counts_from_joint(self.joint.cpu(), self.n_classes)
