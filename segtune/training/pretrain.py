"""Autoencoder pre-training of a segmentation network's encoder, for transfer learning.

:func:`pretrain` builds the configured segmentation model, puts a light decoder on its encoder
(:class:`Autoencoder`: no skip connections, so the encoder alone must carry the image) and
trains it to reconstruct the training images with a mean squared error. It writes a run
directory::

    config.yaml            the resolved config
    metrics.csv            per epoch (with train.steps: per validation, with its step and epochs):
                           train_mse, val_mse, val_mae, seconds (and TensorBoard events)
    encoder.pt             the encoder's weights at the best validation MSE (a plain state dict)
    reconstructions.png    validation images, their reconstructions and the absolute error
    summary.json           best epoch, validation MSE and MAE, time

``segtune pretrain`` then writes report.html and report.md there (the numbers, the MSE curves
and the reconstructions), as ``segtune report RUN`` does.

Then ``segtune train CONFIG --set model.encoder_weights=RUN/encoder.pt`` starts from it, with
``model.freeze_encoder=true`` (and ``model.unfreeze_encoder_after=N``) to keep it fixed.
The data, model, optimizer and ``train`` sections of the config are used (``epochs``, or
``steps`` validated every ``val_every_steps``, batch size, device, precision); the loss,
schedule and augmentation are not.

A run's ``pretrain`` section (``pretrain.steps: 500``) asks for the pre-training as part of the
run: :func:`pretrained_config` pre-trains ``config.pretraining()`` once per distinct setting in a
cache folder (a study's ``pretrain/``) and returns the run's config starting from its encoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segtune.components.models import (PadToMultiple, build_model, count_parameters, encoder_modules, encoder_state,
                                       load_pretrained_encoder)
from segtune.components.optim import OPTIMIZERS
from segtune.config import Config, TrainConfig, apply_changes, build_config
from segtune.data import SegData, Split
from segtune.errors import TrainingDiverged
from segtune.training.checkpoint import save_atomic
from segtune.training.clock import Clock
from segtune.training.early_stopping import EarlyStopping
from segtune.training.evaluate import autocast, batches
from segtune.training.rundir import MetricsLog, RunResult, create_run_dir, write_json_atomic
from segtune.training.precision import resolve_precision
from segtune.training.runtime import (epoch_batches, epoch_order, evaluation_options, grad_scaler, load_data,
                                      memory_format, setup_device, train_on_batches)

__all__ = ["Autoencoder", "plot_reconstructions", "pretrain", "pretrained_config", "reconstruction_errors"]


class _EncoderDone(Exception):
    def __init__(self, features: torch.Tensor) -> None:
        self.features = features


class Autoencoder(nn.Module):
    """The encoder of a segmentation network followed by an upsampling decoder without skips.

    Args:
        model: a network from :func:`~segtune.components.models.build_model`; only its encoder runs (the
            forward pass stops at the deepest encoder module), so its weights are the encoder's.
        in_channels: image channels, reconstructed by the decoder.

    Shape:
        ``(B, in_channels, H, W) -> (B, in_channels, H, W)``, any H and W.
    """

    def __init__(self, model: PadToMultiple, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.deepest = encoder_modules(model)[-1]
        probe = torch.zeros(1, in_channels, 4 * model.multiple, 4 * model.multiple)
        was_training = model.training
        with torch.no_grad():
            channels, size = self.encode(model.eval().net, probe).shape[1:3]
        model.train(was_training)
        n_up = round(math.log2(probe.shape[-1] / size))
        layers: list[nn.Module] = []
        for _ in range(n_up):
            out = max(channels // 2, 8)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, in_channels, 1))
        self.decoder = nn.Sequential(*layers)

    def encode(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Deepest encoder features of ``net`` for ``x`` (H, W multiples of the net's size multiple)."""
        name = self.deepest.removeprefix("net.")

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _EncoderDone(output[-1] if isinstance(output, (list, tuple)) else output)

        handle = net.get_submodule(name).register_forward_hook(stop)
        try:
            net(x)
        except _EncoderDone as done:
            return done.features
        finally:
            handle.remove()
        raise RuntimeError(f"{name} did not run in the forward pass")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.model.multiple
        padded = F.pad(x, (0, -w % m, 0, -h % m))
        return self.decoder(self.encode(self.model.net, padded))[..., :h, :w]


@torch.inference_mode()
def reconstruction_errors(autoencoder: Autoencoder, split: Split, *, batch_size: int, device: torch.device,
                          precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """Mean squared and mean absolute error of the reconstructions of ``split``'s images."""
    autoencoder.eval()
    sq, ab, n = 0.0, 0.0, 0
    for x, _ in batches(split, batch_size, device, channels_last):
        with autocast(device, precision):
            diff = autoencoder(x).float() - x
        sq, ab, n = sq + float(diff.square().sum()), ab + float(diff.abs().sum()), n + diff.numel()
    return {"mse": sq / max(n, 1), "mae": ab / max(n, 1)}


def plot_reconstructions(autoencoder: Autoencoder, images: torch.Tensor, path: Path, device: torch.device) -> Path:
    """A figure of images ``(N, C, H, W)`` (first channel), their reconstructions and the absolute error."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay as they are

    autoencoder.eval()
    with torch.inference_mode():
        recon = autoencoder(images.to(device)).float().cpu()
    n = len(images)
    fig = Figure(figsize=(2 * n, 6))
    axes = fig.subplots(3, n, squeeze=False)
    for i in range(n):
        lo, hi = float(images[i, 0].min()), float(images[i, 0].max())
        for row, (picture, title) in enumerate([(images[i, 0], "image"), (recon[i, 0], "reconstruction"),
                                                ((recon[i, 0] - images[i, 0]).abs(), "|error|")]):
            ax = axes[row, i]
            ax.imshow(picture, cmap="gray", vmin=lo if row < 2 else 0, vmax=hi if row < 2 else hi - lo)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def pretrain(config: Config, *, out_dir: str | Path | None = None, data: SegData | None = None,
             verbose: bool = True, n_images: int = 6) -> RunResult:
    """Train an autoencoder on ``config``'s model encoder to reconstruct the training images.

    The epochs (or steps) are those of :func:`~segtune.training.loop.train` without its
    augmentation, schedule and early stopping: the whole budget runs, validated every epoch (or
    every ``train.val_every_steps`` steps), and the encoder of the validation with the lowest MSE
    is kept.

    Args:
        config: the segmentation run's config (data, model, optimizer, train.epochs or train.steps, batch size).
        out_dir: the run directory; default ``runs/<name>-pretrain-<timestamp>``.
        data: already loaded data; default: load it.
        verbose: print one line per epoch.
        n_images: validation images shown in ``reconstructions.png``.

    Returns:
        A :class:`~segtune.training.rundir.RunResult`; ``summary["encoder"]`` is the path of
        ``encoder.pt`` and ``summary["val"]`` its validation ``mse`` and ``mae``. The report
        (``segtune report RUN``) is written by whoever wants one.

    Raises:
        ConfigError: the model names no encoder.
        TrainingDiverged: no epoch reached a finite validation MSE.
        SegtuneError: an unusable device or run directory.

    Example:
        >>> result = pretrain(load_config("configs/tissue.yaml"), out_dir="runs/pre")  # doctest: +SKIP
        >>> train(load_config("configs/tissue.yaml", [f"model.encoder_weights={result.summary['encoder']}"]))  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    cfg = config.train
    device = setup_device(cfg)
    torch.manual_seed(config.seed)
    data = data if data is not None else load_data(config)  # bad data fails before a run directory is made
    run_dir = create_run_dir(config, out_dir, suffix="-pretrain")
    config, _ = resolve_precision(config, data, device)  # train.precision auto: the segmentation model's choice
    cfg = config.train
    model = build_model(config.model.name, config.model.options, data.in_channels, data.n_classes)
    autoencoder = Autoencoder(model, data.in_channels).to(device).to(memory_format=memory_format(cfg.channels_last))
    optimizer = OPTIMIZERS.build(config.optimizer.name, config.optimizer.options, autoencoder.parameters())
    if verbose:
        print(f"pre-training the encoder of {config.model.name} ({count_parameters(autoencoder) / 1e6:.2f} M "
              f"parameters with the decoder) on {len(data.train)} images, {device} -> {run_dir}", flush=True)
    (clock, best), history = _fit(autoencoder, data, run_dir=run_dir, optimizer=optimizer, config=config,
                               device=device, verbose=verbose)
    row = next(r for r in history if r.get("step", r["epoch"]) == best)
    summary = {"name": config.name, "model": config.model.name, "unit": clock.unit,
               "best_epoch": row["epoch"], "epochs_run": history[-1]["epoch"],
               "best_step": row.get("step", best * clock.per_epoch), "steps_run": clock.total_steps,
               "seconds": time.perf_counter() - t_start, "encoder": str(run_dir / "encoder.pt"),
               "val": {"mse": row["val_mse"], "mae": row["val_mae"]}}
    shown = data.val.images[torch.linspace(0, len(data.val) - 1, min(n_images, len(data.val))).long()]
    plot_reconstructions(autoencoder, shown, run_dir / "reconstructions.png", device)
    write_json_atomic(summary, run_dir / "summary.json")
    return RunResult(run_dir=run_dir, summary=summary, history=history)


def _fit(autoencoder: Autoencoder, data: SegData, *, run_dir: Path, optimizer: torch.optim.Optimizer,
         config: Config, device: torch.device, verbose: bool) -> tuple[tuple[Clock, int], list[dict[str, Any]]]:
    """The whole budget, metrics.csv and encoder.pt at the best validation MSE; the clock and the best
    validation's position on it (its weights loaded into ``autoencoder``), and the history."""
    cfg = config.train
    scaler, generator = grad_scaler(cfg.precision), torch.Generator().manual_seed(config.seed)
    stopping, best_state, history = EarlyStopping("val.mse", mode="min"), None, []
    images = data.train.images.to(device)
    clock = Clock.of(cfg, len(epoch_batches(len(images), cfg.batch_size)))
    log = MetricsLog(run_dir, ["step"] * (clock.unit == "step") + ["epoch", "train_mse", "val_mse", "val_mae",
                                                                     "seconds"])
    steps, order = 0, torch.empty(0, dtype=torch.long)
    try:
        while steps < clock.total_steps:
            t_period, end, total, count = time.perf_counter(), clock.period_end(steps), 0.0, 0
            for _, first, parts, n in clock.spans(steps, end, len(images), cfg.batch_size):
                if first == 0:
                    order, _ = epoch_order(len(images), 0, False, generator)
                total += n * _reconstruction_epoch(autoencoder, images, order, parts, optimizer=optimizer,
                                                   scaler=scaler, device=device, train=cfg)
                count, steps = count + n, steps + len(parts)
            at = clock.position(end)
            val = reconstruction_errors(autoencoder, data.val, **evaluation_options(cfg, device))
            if stopping.step(val["mse"], epoch=at):
                best_state = {k: v.detach().clone() for k, v in autoencoder.state_dict().items()}
                save_atomic(encoder_state(autoencoder.model), run_dir / "encoder.pt")
            place = {"step": end, "epoch": clock.epochs(end)} if clock.unit == "step" else {"epoch": at}
            history.append({**place, "train_mse": total / max(count, 1), "val_mse": val["mse"],
                            "val_mae": val["mae"], "seconds": time.perf_counter() - t_period})
            log.write(history[-1])
            if verbose:
                print(f"{clock.unit} {at:>3}/{clock.length}  train_mse {history[-1]['train_mse']:.4f}  "
                      f"val_mse {val['mse']:.4f}  val_mae {val['mae']:.4f}  {history[-1]['seconds']:.1f}s", flush=True)
    finally:
        log.close()
    if best_state is None:
        raise TrainingDiverged(f"pre-training {run_dir}: the validation MSE was {history[-1]['val_mse']} in every "
                               f"one of {len(history)} validations, never a number; lower optimizer.lr (now "
                               f"{optimizer.param_groups[0]['lr']:g}) or check the validation "
                               f"images for NaN or infinite values")
    autoencoder.load_state_dict(best_state)
    return (clock, stopping.best_epoch), history


def _reconstruction_epoch(autoencoder: Autoencoder, images: torch.Tensor, order: torch.Tensor, parts: list[slice], *,
                          optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
                          train: TrainConfig) -> float:
    """The batches ``parts`` of the shuffle ``order`` of ``images`` (on ``device``), each batch its own target;
    their mean MSE."""
    autoencoder.train()
    fmt = memory_format(train.channels_last)
    batches = (images[order[part]].contiguous(memory_format=fmt) for part in parts)
    return train_on_batches(((x, x) for x in batches), model=autoencoder, loss_fn=F.mse_loss, optimizer=optimizer,
                            scaler=scaler, device=device, precision=train.precision)


def pretrained_config(config: Config, cache_dir: str | Path, *, data: SegData | None = None,
                      verbose: bool = True) -> tuple[Config, dict[str, Any] | None]:
    """``config`` starting from the encoder its ``pretrain`` section asks for, pre-trained once per setting.

    The pre-training (``config.pretraining()``) runs in ``cache_dir/<budget>-<hash of its config>/``
    unless that folder holds a finished one; several processes may ask at once: each pre-trains
    in its own folder and the first to finish keeps its result, the others take it.

    Args:
        config: a run's config; without a ``pretrain`` budget it is returned as it is.
        cache_dir: the folder of the pre-training runs (a study's ``pretrain/``).
        data: the run's loaded data, used when the pre-training reads the same data.
        verbose: print the pre-training's lines.

    Returns:
        The config with ``model.encoder_weights`` set to the pre-trained ``encoder.pt`` (and no
        ``pretrain`` budget), and the pre-training's summary.json (its ``val`` holds the
        reconstruction ``mse`` and ``mae``); ``(config, None)`` without a budget.

    Raises:
        DataError: the pre-trained encoder does not fit the run's model (the levels are named).

    Example:
        >>> run_config, pre = pretrained_config(config, "runs/study/pretrain")  # doctest: +SKIP
        >>> pre["val"]["mse"]  # doctest: +SKIP
        0.0079
    """
    pre = config.pretraining()
    if pre is None:
        return config, None
    key = {k: v for k, v in pre.to_dict().items() if k != "name"}
    key["train"] = {k: v for k, v in key["train"].items() if k != "num_threads"}  # the result does not depend on it
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    budget = f"steps{pre.train.steps}" if pre.train.steps is not None else f"epochs{pre.train.epochs}"
    folder = Path(cache_dir) / f"{budget}-{digest}"
    run_config = build_config(apply_changes({k: v for k, v in config.to_dict().items() if k != "pretrain"},
                                            {"model.encoder_weights": str(folder / "encoder.pt")}), origin="pretrain")
    # the encoder's levels must fit the run's model before anything is pre-trained
    _check_levels(pre, run_config, data)
    if not (folder / "summary.json").is_file():
        same_data = data is not None and pre.data == config.data and pre.seed == config.seed  # (the split is seeded)
        _pretrain_into(pre, folder, data=data if same_data else None, verbose=verbose)
    return run_config, json.loads((folder / "summary.json").read_text())


def _check_levels(pre: Config, run: Config, data: SegData | None) -> None:
    """Raise the error :func:`load_pretrained_encoder` would give the run for the pre-training's encoder."""
    in_channels, n_classes = (data.in_channels, data.n_classes) if data is not None else (1, 2)
    encoder = build_model(pre.model.name, pre.model.options, in_channels, n_classes)
    with tempfile.TemporaryDirectory() as tmp:
        save_atomic(encoder_state(encoder), Path(tmp) / "encoder.pt")
        options = {**run.model.options, "encoder_weights": None}
        net = build_model(run.model.name, options, in_channels, n_classes).net
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            load_pretrained_encoder(net, Path(tmp) / "encoder.pt")


def _pretrain_into(pre: Config, folder: Path, *, data: SegData | None, verbose: bool) -> None:
    """Pre-train ``pre`` in a folder of this process's own, then move it to ``folder`` (unless another got there first)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    own = folder.parent / f".{folder.name}-{os.getpid()}"
    if own.exists():
        shutil.rmtree(own)  # an earlier attempt of this process id, cut short
    result = pretrain(pre, out_dir=own, data=data, verbose=verbose)
    try:
        os.rename(own, folder)
    except OSError:  # another process finished the same pre-training first: keep its result
        shutil.rmtree(own, ignore_errors=True)
        return
    write_json_atomic({**result.summary, "encoder": str(folder / "encoder.pt")}, folder / "summary.json")
