"""The one training loop: ``train(config) -> RunResult``.

Every experiment (a single run, each trial of a study, the demo) goes through :func:`train`.
Studies hook in with ``callbacks``: callables ``on_epoch(epoch, row)`` called after each
validation with that epoch's metrics row; raising from one stops the run (a pruned trial).
This module never imports Optuna.

A run writes its directory::

    config.yaml      the resolved config, every default filled in
    metrics.csv      one row per epoch: losses, Dice per class and mean, lr, seconds
    events.out.tfevents.*   the same as TensorBoard scalars
    last.pt, best.pt checkpoints (atomic writes; weights_only-loadable)
    summary.json     best epoch, epochs run, early stop, time, val and test metrics
"""

from __future__ import annotations

import csv
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from segtune.components.augment import AUGMENTATIONS
from segtune.training.checkpoint import save_atomic, write_json_atomic, write_text_atomic
from segtune.config import Config
from segtune.data import SOURCES, SegData, prepare
from segtune.errors import ConfigError, SegtuneError, StorageError, TrainingDiverged
from segtune.training.evaluate import autocast, evaluate_split, labels_from_logits
from segtune.components.losses import LOSSES
from segtune.components.models import build_model, count_parameters, set_encoder_trainable
from segtune.components.optim import OPTIMIZERS, build_scheduler

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunResult:
    """What a finished run leaves: its directory, its summary and its per-epoch history."""

    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


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


def load_data(config: Config, *, normalize_stats: dict | None = None) -> SegData:
    """Build the configured data source and apply the shared preprocessing (``normalize_stats``:
    a trained model's ``zscore_dataset`` statistics, instead of this training split's)."""
    data_cfg = config.data
    raw = SOURCES.build(data_cfg.source, data_cfg.options, config.seed)
    return prepare(raw, train_fraction=data_cfg.train_fraction, resize=data_cfg.resize,
                   normalize=data_cfg.normalize, seed=config.seed, color=data_cfg.color,
                   label_map=data_cfg.label_map, min_class_fraction=data_cfg.min_class_fraction,
                   min_foreground_fraction=data_cfg.min_foreground_fraction, normalize_stats=normalize_stats)


def default_run_dir(config: Config, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.name}-{stamp}"


def prepare_run_dir(run_dir: Path) -> Path:
    if (run_dir / "summary.json").exists():
        raise SegtuneError(f"{run_dir} already holds a finished run (summary.json); "
                           f"choose another --out or delete that folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:  # a StorageError: a study stops there and runs the trial again on resume
        raise StorageError(f"cannot write the run directory {run_dir}: {err.strerror}; "
                           f"choose a writable --out, or free disk space") from None
    return run_dir


def _check_resumable(out_dir: str | Path | None, config: Config) -> Path:
    if out_dir is None:
        raise SegtuneError("--resume needs --out: the directory of the run to continue")
    run_dir = Path(out_dir)
    if (run_dir / "summary.json").exists():
        raise SegtuneError(f"{run_dir} is already finished (summary.json); nothing to resume")
    if not (run_dir / "config.yaml").is_file():
        raise SegtuneError(f"{run_dir} has no config.yaml: no run was started there; start it without --resume")
    for stale in run_dir.glob(".*.tmp"):  # the temporary file of a write that a kill interrupted
        stale.unlink(missing_ok=True)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    if saved != config.to_dict():
        changed = sorted(k for k in set(saved) | set(config.to_dict()) if saved.get(k) != config.to_dict().get(k))
        raise SegtuneError(f"{run_dir}: the config differs from the run's config.yaml in {', '.join(changed)}; "
                           f"resume with the same config and overrides")
    return run_dir


class MetricsLog:
    """metrics.csv (appended and flushed every epoch) plus TensorBoard scalars."""

    def __init__(self, run_dir: Path, columns: list[str], earlier: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.columns = columns
        self.file = open(run_dir / "metrics.csv", "w", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
        self.csv.writeheader()
        for row in earlier:  # a resumed run keeps the rows of the epochs before its checkpoint
            self._write_csv(row)
        self.tb = SummaryWriter(log_dir=str(run_dir))

    def _write_csv(self, row: dict[str, Any]) -> None:
        try:
            self.csv.writerow({k: row.get(k, "") for k in self.columns})
            self.file.flush()
        except OSError as err:
            raise StorageError(f"cannot write {self.file.name}: {err}; free disk space or choose a "
                               f"writable directory, then resume") from None

    def write(self, row: dict[str, Any]) -> None:
        self._write_csv(row)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


@dataclass
class _Progress:
    """What a resumed run needs besides the weights: the early-stopping state and the history."""

    best: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    stopped_early: bool = False
    first_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _restore(run_dir: Path, model, optimizer, scheduler, generator, scaler) -> tuple[_Progress, dict | None]:
    """Load last.pt of ``run_dir`` into the live objects, for ``--resume``; returns the progress
    and the best weights so far (last.pt holds a copy, so a damaged best.pt loses nothing)."""
    from segtune.training.checkpoint import load_checkpoint

    last = load_checkpoint(run_dir / "last.pt")
    if "progress" not in last:
        raise SegtuneError(f"{run_dir / 'last.pt'} holds no training progress; it cannot be resumed")
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
        return _Progress(**last["progress"]), last["best_model"]
    # a last.pt without the copy (an older segtune): the best weights are in best.pt alone
    best = load_checkpoint(run_dir / "best.pt")["model"] if (run_dir / "best.pt").is_file() else None
    return _Progress(**last["progress"]), best


def resumable_history(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows of the epochs that a ``--resume`` of ``run_dir`` keeps: those in its last.pt."""
    from segtune.training.checkpoint import load_checkpoint

    if not (run_dir / "last.pt").is_file():
        return []
    return list(load_checkpoint(run_dir / "last.pt").get("progress", {}).get("history", []))


def _epoch_order(n: int, n_aug: int, augmenting: bool, generator: torch.Generator):
    """Shuffled (index, augment?) pairs: the data once, plus ``n_aug`` augmented copies.

    With an augmentation and ``n_aug == 0`` every sample is augmented on the fly.
    """
    index = torch.arange(n).repeat(1 + n_aug)
    flags = torch.zeros(len(index), dtype=torch.bool)
    if augmenting:
        flags[n:] = True
        if n_aug == 0:
            flags[:] = True
    order = torch.randperm(len(index), generator=generator)
    return index[order], flags[order]


def train(config: Config, *, out_dir: str | Path | None = None, data: SegData | None = None,
          callbacks: Iterable[EpochCallback] = (), verbose: bool = True, resume: bool = False) -> RunResult:
    """Train one model as ``config`` says and write its run directory.

    Args:
        config: a validated :class:`~segtune.config.Config`.
        out_dir: the run directory; default ``runs/<name>-<timestamp>``.
        data: already loaded data (a study loads it once for all trials); default: load it.
        callbacks: ``on_epoch(epoch, row)`` after each validation; an exception stops the run.
        verbose: print one line per epoch.
        resume: continue the unfinished run in ``out_dir`` from its ``last.pt`` (weights,
            optimizer, schedule, early-stopping state and random generators), ending with the
            same numbers as an uninterrupted run; ``config`` must equal the run's config.yaml.

    Returns:
        A :class:`RunResult` whose ``summary`` holds the best epoch, the val and test metrics
        of the restored best weights, and timing.

    Raises:
        TrainingDiverged: the training loss became NaN or infinite.
        SegtuneError: an unusable device, data or run directory.
    """
    t_start = time.perf_counter()
    cfg = config.train
    device = resolve_device(cfg.device)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use bf16 on a CPU")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = _check_resumable(out_dir, config) if resume else None
    torch.manual_seed(config.seed)
    data = data if data is not None else load_data(config)  # bad data fails before a run directory is made
    if run_dir is not None:
        resume = (run_dir / "last.pt").is_file()
        if not resume and verbose:  # stopped before its first epoch ended: nothing to keep
            print(f"{run_dir} has no checkpoint yet (stopped in epoch 1): starting from epoch 1", flush=True)
    else:
        run_dir = prepare_run_dir(Path(out_dir) if out_dir else default_run_dir(config))
        write_text_atomic(yaml.safe_dump(config.to_dict(), sort_keys=False), run_dir / "config.yaml")
    names = data.class_names
    model, loss_fn, optimizer = build_training(config, data, device)
    forward = compiled(model, device) if cfg.compile else model  # validation runs eagerly
    out_channels = model.out_channels
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    scheduler = build_scheduler(config.scheduler.name, config.scheduler.options, optimizer, n_epochs=cfg.epochs,
                                warmup_epochs=config.scheduler.warmup_epochs)
    augment = AUGMENTATIONS.build(config.augment.name, config.augment.options)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    # the weights file is not needed to rebuild the trained network, so it is left out
    model_options = {k: v for k, v in config.model.options.items() if k != "encoder_weights"}
    meta = {"model": config.model.name, "model_options": model_options,
            "in_channels": data.in_channels, "out_channels": out_channels, "class_names": names,
            "normalize": config.data.normalize, "normalize_stats": data.info.get("normalize_stats"),
            "resize": config.data.resize}

    columns = (["epoch", "train_loss", "val_loss", "val_dice_mean"]
               + [f"val_dice_{n}" for n in names[1:]] + ["lr", "seconds"])
    generator = torch.Generator().manual_seed(config.seed)
    state = _Progress()
    best_state = None
    if resume:
        state, best_state = _restore(run_dir, model, optimizer, scheduler, generator, scaler)
        if best_state is not None:  # best.pt again from last.pt's copy, whole whatever happened to it
            save_atomic({"model": best_state, "meta": meta, "epoch": state.best_epoch}, run_dir / "best.pt")
    log = MetricsLog(run_dir, columns, state.history)
    sign = 1.0 if cfg.monitor == "val.dice_mean" else -1.0
    train_x, train_y = data.train.images.to(device), data.train.masks.to(device)
    stopped_early = state.stopped_early
    if verbose:
        print(f"training {config.model.name} ({count_parameters(model) / 1e6:.2f} M parameters) on "
              f"{len(data.train)} train / {len(data.val)} val images, {device}, {cfg.precision} -> {run_dir}"
              + (f", resumed after epoch {len(state.history)}" if resume else ""), flush=True)
    try:
        for epoch in range(len(state.history) + 1, cfg.epochs + 1):
            if stopped_early:
                break
            t_epoch = time.perf_counter()
            unfreeze_after = config.model.unfreeze_encoder_after
            if config.model.freeze_encoder and unfreeze_after is not None and epoch > unfreeze_after:
                set_encoder_trainable(model, True)
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            index, flags = _epoch_order(len(data.train), config.augment.n_aug, augment is not None, generator)
            batch_starts = list(range(0, len(index), cfg.batch_size))
            if len(batch_starts) > 1 and len(index) - batch_starts[-1] == 1:
                batch_starts.pop()  # a batch of one breaks batch norm; its sample comes next epoch
            total, count = 0.0, 0
            for start in _progress_bar(batch_starts, f"epoch {epoch}/{cfg.epochs}", verbose):
                idx, aug = index[start:start + cfg.batch_size], flags[start:start + cfg.batch_size]
                x, y = train_x[idx], train_y[idx]
                if aug.any():
                    ax, ay = augment(x, y, generator)
                    aug = aug.to(device)
                    x = torch.where(aug[:, None, None, None], ax, x)
                    y = torch.where(aug[:, None, None], ay, y)
                x = x.contiguous(memory_format=fmt)
                with autocast(device, cfg.precision):
                    loss = loss_fn(forward(x).float(), y)
                loss_value = float(loss.detach())
                state.first_loss = state.first_loss if state.first_loss is not None else loss_value
                _check_divergence(loss_value, state.first_loss, cfg.divergence_factor, epoch, lr)
                backward_step(loss, optimizer, scaler)
                total += loss_value * len(idx)
                count += len(idx)
            row: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": lr}
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                val = evaluate_split(model, data.val, names, loss_fn=loss_fn, batch_size=cfg.batch_size * 2,
                                     device=device, precision=cfg.precision, channels_last=cfg.channels_last)
                row.update({"val_loss": val["loss"], "val_dice_mean": val["dice_mean"]})
                row.update({f"val_dice_{n}": val["dice_per_class"][n] for n in names[1:]})
                value = sign * (val["dice_mean"] if sign > 0 else val["loss"])
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    key = getattr(scheduler, "monitor", None) or cfg.monitor  # stepped with larger = better
                    scheduler.step(val["dice_mean"] if key == "val.dice_mean" else -val["loss"])
                if value > state.best + cfg.min_delta:
                    state.best, state.best_epoch, state.stale = value, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    save_atomic({"model": best_state, "meta": meta, "epoch": epoch}, run_dir / "best.pt")
                else:
                    state.stale += cfg.val_every
            if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step()
            row["seconds"] = time.perf_counter() - t_epoch
            state.history.append(row)
            stopped_early = state.stopped_early = bool(cfg.patience and state.stale >= cfg.patience)
            log.write(row)
            save_atomic({"model": model.state_dict(), "meta": meta, "epoch": epoch,
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "progress": state.to_dict(), "scaler": scaler.state_dict(), "best_model": best_state,
                         "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(),
                                 "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}},
                        run_dir / "last.pt")
            if verbose:
                _print_epoch(row, cfg.epochs)
            for callback in callbacks:
                callback(epoch, row)
            if stopped_early and verbose:
                print(f"early stop: no improvement of {cfg.monitor} for {state.stale} epochs", flush=True)
    finally:
        log.close()

    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    kwargs = dict(batch_size=cfg.batch_size * 2, device=device, precision=cfg.precision,
                  channels_last=cfg.channels_last)
    summary = {
        "name": config.name,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "stopped_early": stopped_early,
        "seconds": time.perf_counter() - t_start,
        "n_parameters": count_parameters(model),
        "device": str(device),
        "class_names": names,
        "val": evaluate_split(model, data.val, names, loss_fn=loss_fn, **kwargs),
        "test": evaluate_split(model, data.test, names, loss_fn=loss_fn, **kwargs),
    }
    write_json_atomic(summary, run_dir / "summary.json")
    return RunResult(run_dir=run_dir, summary=summary, history=state.history)


def build_training(config: Config, data: SegData, device: torch.device):
    """The model, loss and optimizer of ``config`` for ``data``, on ``device``, in the configured memory format.

    The model gets ``out_channels`` set (1 for single-channel losses, else the class count),
    the encoder weights of ``model.encoder_weights`` and, with ``model.freeze_encoder``, a
    frozen encoder. Every short training (the LR range test, pre-training) builds its parts here.

    Returns:
        ``(model, loss_fn, optimizer)``.
    """
    loss_fn = LOSSES.build(config.loss.name, config.loss.options, data.n_classes).to(device)
    out_channels = 1 if getattr(loss_fn, "single_channel", False) else data.n_classes
    model = build_model(config.model.name, config.model.options, data.in_channels, out_channels)
    model.out_channels = out_channels
    if config.model.freeze_encoder:
        set_encoder_trainable(model, False)
    fmt = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt)
    optimizer = OPTIMIZERS.build(config.optimizer.name, config.optimizer.options, model.parameters())
    return model, loss_fn, optimizer


def compiled(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)`` with static shapes (a run has at most two batch sizes)."""
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        raise ConfigError("train.compile=true needs a C++ compiler on a CPU (install g++); "
                          "or set train.compile=false")
    return torch.compile(model, dynamic=False)


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One optimizer step on ``loss``: zero the gradients, back-propagate (scaled for fp16), step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _progress_bar(items: list, label: str, verbose: bool):
    """A batch progress bar on an interactive terminal; the plain list elsewhere (logs, CI)."""
    if not (verbose and sys.stderr.isatty()):
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit="batch", leave=False)


def _check_divergence(loss: float, first: float, factor: float | None, epoch: int, lr: float) -> None:
    fix = f"lower optimizer.lr (now {lr:g}) or change the optimizer"
    if not math.isfinite(loss):
        raise TrainingDiverged(f"diverged at epoch {epoch}: the training loss is {loss}; {fix}")
    if factor is not None and loss > factor * first > 0:
        raise TrainingDiverged(f"diverged at epoch {epoch}: the training loss {loss:.4g} exceeds "
                               f"{factor:g}x its first value {first:.4g}; {fix}")


def _print_epoch(row: dict[str, Any], epochs: int) -> None:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_dice {row['val_dice_mean']:.4f}"]
    parts += [f"lr {row['lr']:.2e}", f"{row['seconds']:.1f}s"]
    print("  ".join(parts), flush=True)


__all__ = ["EpochCallback", "RunResult", "labels_from_logits", "load_data", "resolve_device", "train"]
