"""Autoencoder pre-training of a segmentation network's encoder, for transfer learning.

:func:`pretrain` builds the configured segmentation model, puts a light decoder on its encoder
(:class:`Autoencoder`: no skip connections, so the encoder alone must carry the image) and
trains it to reconstruct the training images with a mean squared error. It writes a run
directory::

    config.yaml            the resolved config
    metrics.csv            per epoch: train_mse, val_mse, val_mae, seconds (and TensorBoard events)
    encoder.pt             the encoder's weights at the best validation MSE (a plain state dict)
    reconstructions.png    validation images, their reconstructions and the absolute error
    summary.json           best epoch, validation MSE and MAE, time

``segtune pretrain`` then writes report.html and report.md there (the numbers, the MSE curves
and the reconstructions), as ``segtune report RUN`` does.

Then ``segtune train CONFIG --set model.encoder_weights=RUN/encoder.pt`` starts from it, with
``model.freeze_encoder=true`` (and ``model.unfreeze_encoder_after=N``) to keep it fixed.
The data, model, optimizer and ``train`` sections of the config are used (epochs, batch size,
device, precision); the loss, schedule and augmentation are not.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segtune.components.models import PadToMultiple, build_model, count_parameters, encoder_modules, encoder_state
from segtune.components.optim import OPTIMIZERS
from segtune.config import Config, TrainConfig
from segtune.data import SegData, Split
from segtune.errors import TrainingDiverged
from segtune.training.checkpoint import save_atomic
from segtune.training.early_stopping import EarlyStopping
from segtune.training.evaluate import autocast, batches
from segtune.training.rundir import MetricsLog, RunResult, create_run_dir, write_json_atomic
from segtune.training.precision import resolve_precision
from segtune.training.runtime import (epoch_batches, epoch_order, evaluation_options, grad_scaler, load_data,
                                      memory_format, setup_device, train_on_batches)

__all__ = ["Autoencoder", "plot_reconstructions", "pretrain", "reconstruction_errors"]


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

    The epochs are those of :func:`~segtune.training.loop.train` without its augmentation,
    schedule and early stopping: every epoch runs, and the encoder of the epoch with the lowest
    validation MSE is kept.

    Args:
        config: the segmentation run's config (data, model, optimizer, train.epochs and batch size).
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
    best_epoch, history = _fit(autoencoder, data, run_dir=run_dir, optimizer=optimizer, config=config,
                               device=device, verbose=verbose)
    summary = {"name": config.name, "model": config.model.name, "best_epoch": best_epoch,
               "epochs_run": len(history), "seconds": time.perf_counter() - t_start,
               "encoder": str(run_dir / "encoder.pt"),
               "val": {"mse": history[best_epoch - 1]["val_mse"], "mae": history[best_epoch - 1]["val_mae"]}}
    shown = data.val.images[torch.linspace(0, len(data.val) - 1, min(n_images, len(data.val))).long()]
    plot_reconstructions(autoencoder, shown, run_dir / "reconstructions.png", device)
    write_json_atomic(summary, run_dir / "summary.json")
    return RunResult(run_dir=run_dir, summary=summary, history=history)


def _fit(autoencoder: Autoencoder, data: SegData, *, run_dir: Path, optimizer: torch.optim.Optimizer,
         config: Config, device: torch.device, verbose: bool) -> tuple[int, list[dict[str, Any]]]:
    """Every epoch, metrics.csv and encoder.pt at the best validation MSE; the best epoch (its weights
    loaded into ``autoencoder``) and the history."""
    cfg = config.train
    scaler, generator = grad_scaler(cfg.precision), torch.Generator().manual_seed(config.seed)
    stopping, best_state, history = EarlyStopping("val.mse", mode="min"), None, []
    log = MetricsLog(run_dir, ["epoch", "train_mse", "val_mse", "val_mae", "seconds"])
    images = data.train.images.to(device)
    try:
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            train_mse = _reconstruction_epoch(autoencoder, images, optimizer=optimizer, scaler=scaler,
                                              generator=generator, device=device, train=cfg)
            val = reconstruction_errors(autoencoder, data.val, **evaluation_options(cfg, device))
            if stopping.step(val["mse"], epoch=epoch):
                best_state = {k: v.detach().clone() for k, v in autoencoder.state_dict().items()}
                save_atomic(encoder_state(autoencoder.model), run_dir / "encoder.pt")
            history.append({"epoch": epoch, "train_mse": train_mse, "val_mse": val["mse"], "val_mae": val["mae"],
                            "seconds": time.perf_counter() - t_epoch})
            log.write(history[-1])
            if verbose:
                print(f"epoch {epoch:>3}/{cfg.epochs}  train_mse {train_mse:.4f}  val_mse {val['mse']:.4f}  "
                      f"val_mae {val['mae']:.4f}  {history[-1]['seconds']:.1f}s", flush=True)
    finally:
        log.close()
    if best_state is None:
        raise TrainingDiverged(f"pre-training {run_dir}: the validation MSE was {history[-1]['val_mse']} in every "
                               f"one of {len(history)} epochs, never a number; lower optimizer.lr (now "
                               f"{optimizer.param_groups[0]['lr']:g}) or check the validation "
                               f"images for NaN or infinite values")
    autoencoder.load_state_dict(best_state)
    return stopping.best_epoch, history


def _reconstruction_epoch(autoencoder: Autoencoder, images: torch.Tensor, *, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler, generator: torch.Generator, device: torch.device,
                          train: TrainConfig) -> float:
    """One shuffled pass over ``images`` (on ``device``), each batch its own target; the mean MSE."""
    autoencoder.train()
    order, _ = epoch_order(len(images), 0, False, generator)
    fmt = memory_format(train.channels_last)
    batches = (images[order[part]].contiguous(memory_format=fmt) for part in epoch_batches(len(order), train.batch_size))
    return train_on_batches(((x, x) for x in batches), model=autoencoder, loss_fn=F.mse_loss, optimizer=optimizer,
                            scaler=scaler, device=device, precision=train.precision)
