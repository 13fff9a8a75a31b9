"""Autoencoder pre-training of a segmentation network's encoder, for transfer learning.

:func:`pretrain` builds the configured segmentation model, puts a light decoder on its encoder
(:class:`Autoencoder`: no skip connections, so the encoder alone must carry the image) and
trains it to reconstruct the training images with a mean squared error. It writes a run
directory::

    config.yaml            the resolved config
    metrics.csv            per epoch: train_mse, val_mse, val_mae, seconds (and TensorBoard events)
    encoder.pt             the encoder's weights at the best validation MSE (a plain state dict)
    reconstructions.png    validation images, their reconstructions and the absolute error
    report.html, report.md the numbers, the MSE curves and the reconstructions (figures/ beside them)
    summary.json           best epoch, validation MSE and MAE, time

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
import yaml
from torch import nn

from segtune.training.checkpoint import save_atomic
from segtune.training.rundir import write_json_atomic, write_text_atomic
from segtune.config import Config
from segtune.data import SegData, Split
from segtune.training.evaluate import autocast, batches
from segtune.components.models import PadToMultiple, build_model, count_parameters, encoder_modules, encoder_state
from segtune.components.optim import OPTIMIZERS
from segtune.training.rundir import MetricsLog, RunResult, default_run_dir, prepare_run_dir
from segtune.training.runtime import backward_step, load_data, resolve_device


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    autoencoder.eval()
    with torch.inference_mode():
        recon = autoencoder(images.to(device)).float().cpu()
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(2 * n, 6), squeeze=False)
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
    plt.close(fig)
    return path


def pretrain(config: Config, *, out_dir: str | Path | None = None, data: SegData | None = None,
             verbose: bool = True, n_images: int = 6) -> RunResult:
    """Train an autoencoder on ``config``'s model encoder to reconstruct the training images.

    Args:
        config: the segmentation run's config (data, model, optimizer, train.epochs and batch size).
        out_dir: the run directory; default ``runs/<name>-pretrain-<timestamp>``.
        data: already loaded data; default: load it.
        verbose: print one line per epoch.
        n_images: validation images shown in ``reconstructions.png``.

    Returns:
        A :class:`~segtune.training.loop.RunResult`; ``summary["encoder"]`` is the path of ``encoder.pt``
        and ``summary["val"]`` its validation ``mse`` and ``mae``.

    Raises:
        ConfigError: the model names no encoder.
        SegtuneError: an unusable device or run directory.

    Example:
        >>> result = pretrain(load_config("configs/tissue.yaml"), out_dir="runs/pre")  # doctest: +SKIP
        >>> train(load_config("configs/tissue.yaml", [f"model.encoder_weights={result.summary['encoder']}"]))  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    cfg = config.train
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    default = default_run_dir(config)
    default = default.with_name(default.name.replace(config.name, f"{config.name}-pretrain", 1))
    run_dir = prepare_run_dir(Path(out_dir) if out_dir else default)
    write_text_atomic(yaml.safe_dump(config.to_dict(), sort_keys=False), run_dir / "config.yaml")
    torch.manual_seed(config.seed)
    data = data if data is not None else load_data(config)
    model = build_model(config.model.name, config.model.options, data.in_channels, data.n_classes)
    autoencoder = Autoencoder(model, data.in_channels).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    autoencoder = autoencoder.to(memory_format=fmt)
    optimizer = OPTIMIZERS.build(config.optimizer.name, config.optimizer.options, autoencoder.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    generator = torch.Generator().manual_seed(config.seed)
    log = MetricsLog(run_dir, ["epoch", "train_mse", "val_mse", "val_mae", "seconds"], [])
    images = data.train.images.to(device)
    kwargs = dict(batch_size=cfg.batch_size * 2, device=device, precision=cfg.precision,
                  channels_last=cfg.channels_last)
    best, best_epoch, history = math.inf, 0, []
    if verbose:
        print(f"pre-training the encoder of {config.model.name} ({count_parameters(autoencoder) / 1e6:.2f} M "
              f"parameters with the decoder) on {len(data.train)} images, {device} -> {run_dir}", flush=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            autoencoder.train()
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                x = images[order[start:start + cfg.batch_size]].contiguous(memory_format=fmt)
                with autocast(device, cfg.precision):
                    loss = F.mse_loss(autoencoder(x).float(), x)
                backward_step(loss, optimizer, scaler)
                total += float(loss.detach()) * len(x)
            val = reconstruction_errors(autoencoder, data.val, **kwargs)
            row = {"epoch": epoch, "train_mse": total / len(images), "val_mse": val["mse"], "val_mae": val["mae"],
                   "seconds": time.perf_counter() - t_epoch}
            if val["mse"] < best:
                best, best_epoch = val["mse"], epoch
                best_state = {k: v.detach().clone() for k, v in autoencoder.state_dict().items()}
                save_atomic(encoder_state(model), run_dir / "encoder.pt")
            history.append(row)
            log.write(row)
            if verbose:
                print(f"epoch {epoch:>3}/{cfg.epochs}  train_mse {row['train_mse']:.4f}  val_mse {val['mse']:.4f}  "
                      f"val_mae {val['mae']:.4f}  {row['seconds']:.1f}s", flush=True)
    finally:
        log.close()
    encoder = run_dir / "encoder.pt"
    autoencoder.load_state_dict(best_state)
    summary = {"name": config.name, "model": config.model.name, "best_epoch": best_epoch, "epochs_run": len(history),
               "seconds": time.perf_counter() - t_start, "encoder": str(encoder),
               "val": {"mse": history[best_epoch - 1]["val_mse"], "mae": history[best_epoch - 1]["val_mae"]}}
    shown = data.val.images[torch.linspace(0, len(data.val) - 1, min(n_images, len(data.val))).long()]
    plot_reconstructions(autoencoder, shown, run_dir / "reconstructions.png", device)
    write_json_atomic(summary, run_dir / "summary.json")
    from segtune.report import run_report

    run_report(run_dir, run_dir)  # report.html and report.md (figures/ beside them), as `segtune report` writes
    return RunResult(run_dir=run_dir, summary=summary, history=history)


__all__ = ["Autoencoder", "plot_reconstructions", "pretrain", "reconstruction_errors"]
