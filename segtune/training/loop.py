"""The one training loop: ``train(config) -> RunResult``.

Every experiment (a single run, each trial of a study, the demo) goes through :func:`train`.
Studies hook in with ``callbacks``: callables ``on_epoch(at, row)`` called after each period
(an epoch, or with ``train.steps`` the steps up to a validation) with its metrics row, ``at``
its position on the run's clock (the epoch, or the step: :mod:`segtune.training.clock`);
raising from one stops the run (a pruned trial). This module never imports Optuna.

A run writes its directory::

    config.yaml      the resolved config, every default filled in
    metrics.csv      one row per epoch (with train.steps: per validation, with its step and
                     epochs): losses, Dice per class and mean, lr, seconds; the train Dice is that
                     of the period's training batches as they were trained (augmented, with the
                     weights of each batch's own step), counted on the device at no extra pass
    events.out.tfevents.*   the same as TensorBoard scalars (at the epoch, or the step)
    last.pt, best.pt checkpoints (atomic writes; weights_only-loadable)
    summary.json     best epoch (and step), epochs (and steps) run, why it stopped, time, val and test metrics

A run ends after ``train.epochs`` epochs or ``train.steps`` steps, or earlier by early stopping
(``train.patience`` validations) or by its time budget (``train.max_minutes``, counted over the
periods of all its parts); either way it ends as a finished run: best weights restored and
evaluated, summary.json written.

The set-up and the optimisation step come from :mod:`segtune.training.runtime`, the run
directory from :mod:`segtune.training.rundir`, the checkpoints from :mod:`segtune.training.checkpoint`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from segtune.components.augment import AUGMENTATIONS
from segtune.components.models import count_parameters, set_encoder_trainable
from segtune.components.optim import build_scheduler
from segtune.components.transfer import to_device
from segtune.config import Config
from segtune.data import SegData, Split
from segtune.errors import TrainingDiverged
from segtune.training.clock import Clock
from segtune.training.checkpoint import (checkpoint_meta, load_checkpoint, restore_checkpoint, write_best,
                                         write_checkpoint)
from segtune.training.early_stopping import EarlyStopping
from segtune.training.evaluate import evaluate_split, final_distances
from segtune.training.patches import TrainingSamples
from segtune.training.pretrain import pretrained_config
from segtune.training.rundir import MetricsLog, RunResult, check_resumable, create_run_dir, write_json_atomic
from segtune.training.metrics import summarize
from segtune.training.precision import Precision, as_trained, resolve_precision
from segtune.training.runtime import (EpochTally, build_training, compiled, device_and_threads, epoch_batches,
                                      epoch_order, evaluation_options, grad_scaler, load_data, memory_format,
                                      run_samples, train_on_batches)
from segtune.training.threads import Threads

__all__ = ["EpochCallback", "train"]

EpochCallback = Callable[[int, dict[str, Any]], None]


def train(config: Config, *, out_dir: str | Path | None = None, data: SegData | None = None,
          callbacks: Iterable[EpochCallback] = (), verbose: bool = True, resume: bool = False) -> RunResult:
    """Train one model as ``config`` says and write its run directory.

    Args:
        config: a validated :class:`~segtune.config.Config`; with a ``pretrain`` budget its encoder is
            pre-trained first, once per setting, in ``pretrain/`` beside the run directory
            (:func:`~segtune.training.pretrain.pretrained_config`), and the run starts from it.
        out_dir: the run directory; default ``runs/<name>-<timestamp>``.
        data: already loaded data (a study loads it once for all trials); default: load it.
        callbacks: ``on_epoch(at, row)`` after each epoch (with ``train.steps``: each validation, ``at``
            its step); an exception stops the run.
        verbose: print one line per epoch.
        resume: continue the unfinished run in ``out_dir`` from its ``last.pt`` (weights,
            optimizer, schedule, early-stopping state, random generators and, mid-epoch, the
            epoch's shuffle), ending with the same numbers as an uninterrupted run; ``config``
            must equal the run's config.yaml.

    Returns:
        A :class:`~segtune.training.rundir.RunResult` whose ``summary`` holds the best epoch,
        the val and test metrics of the restored best weights, why the run stopped
        (``stopped``: None after the whole budget) and timing (``seconds``: the wall time of all its
        parts, ``train_seconds``: their epochs' time, which ``train.max_minutes`` budgets).

    Raises:
        TrainingDiverged: the training loss became NaN or infinite.
        SegtuneError: an unusable device, data or run directory.

    Example:
        >>> result = train(load_config("configs/tissue.yaml"), out_dir="runs/tissue")  # doctest: +SKIP
        >>> result.summary["test"]["dice_mean"]  # doctest: +SKIP
        0.83
    """
    # a `pretrain` budget: the encoder pre-trained first (once per setting, cached beside the run directory)
    config, pretrained = pretrained_config(config, _pretrain_cache(out_dir), data=data, verbose=verbose)
    run = _start(config, out_dir=out_dir, data=data, resume=resume, verbose=verbose)
    run.pretrained = pretrained
    try:
        while run.steps < run.clock.total_steps and not (run.stopping.stopped or run.out_of_time):
            _run_period(run, callbacks=callbacks, verbose=verbose)
    finally:
        run.log.close()
    return _finish(run, verbose=verbose)


@dataclass
class _Run:
    """A training in progress: its parts, where it writes, and what it has reached."""

    config: Config
    device: torch.device
    data: SegData
    samples: TrainingSamples  # the training split's whole images, or random crops of them (train.patch_size)
    run_dir: Path
    model: torch.nn.Module
    forward: torch.nn.Module  # the model, compiled with train.compile (validation runs eagerly)
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    augment: Any
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # shuffles and augments
    meta: dict[str, Any]  # how to rebuild the network, in every checkpoint
    stopping: EarlyStopping
    clock: Clock
    evaluate: Callable[[torch.nn.Module, Split], dict[str, Any]]  # every evaluation of the run, one way
    threads: Threads  # train.num_threads: fixed (default every CPU but one), or auto: the CPUs free, between periods
    started: float = field(default_factory=time.perf_counter)  # when this part of the run started
    earlier_seconds: float = 0.0  # the wall time of the parts before a resume
    out_of_time: bool = False  # train.max_minutes was spent: the last epoch was the budget's last
    log: MetricsLog | None = None
    best_state: dict[str, torch.Tensor] | None = None
    first_loss: float | None = None  # the divergence check's reference
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0  # optimizer steps done
    order: tuple[torch.Tensor, torch.Tensor] | None = None  # the current epoch's shuffle (index, augment?)
    pretrained: dict[str, Any] | None = None  # the summary of the pre-training the run started from (pretrain.*)
    precision: Precision | None = None  # how train.precision (auto: timed or cached) was decided

    def progress(self) -> dict[str, Any]:
        """What a resumed run needs besides the weights (last.pt's ``progress``)."""
        mid_epoch = self.steps % self.clock.per_epoch != 0
        return {**self.stopping.state_dict(), "first_loss": self.first_loss, "history": self.history,
                "seconds": self.seconds(), "out_of_time": self.out_of_time, "steps": self.steps,
                "order": list(self.order) if mid_epoch and self.order is not None else None}

    def seconds(self) -> float:
        """The wall time of the run so far, the parts before a resume included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def train_seconds(self) -> float:
        """The time of the run's periods so far, those before a resume included: what ``train.max_minutes`` budgets."""
        return sum(row["seconds"] for row in self.history)


def _start(config: Config, *, out_dir: str | Path | None, data: SegData | None, resume: bool,
           verbose: bool) -> _Run:
    """Check the device, load the data (before any run directory is made), build the parts, resume."""
    started = time.perf_counter()
    cfg = config.train
    device, threads = device_and_threads(cfg)
    run_dir = check_resumable(out_dir, config) if resume else None
    torch.manual_seed(config.seed)
    data = data if data is not None else load_data(config)  # bad data fails before a run directory is made
    if run_dir is None:
        run_dir = create_run_dir(config, out_dir)  # config.yaml as given: train.precision auto stays auto
    elif not (run_dir / "last.pt").is_file():
        resume = False
        if verbose:  # stopped before its first epoch ended: nothing to keep
            print(f"{run_dir} has no checkpoint yet (stopped in epoch 1): starting from epoch 1", flush=True)
    if resume and config.train.precision == "auto":  # a resumed run keeps what its first part trained in
        meta = load_checkpoint(run_dir / "last.pt")["meta"]
        config = as_trained(config, meta)
        choice = Precision(config.train.precision, config.train.channels_last, "resumed")
    else:
        config, choice = resolve_precision(config, data, device)  # the run trains in a concrete precision
    cfg = config.train
    model, loss_fn, optimizer = build_training(config, data, device)
    per_epoch = len(epoch_batches(len(data.train) * (1 + config.augment.n_aug), cfg.batch_size))
    clock = Clock.of(cfg, per_epoch)
    warmup = config.scheduler.warmup_steps if clock.unit == "step" else config.scheduler.warmup_epochs
    run = _Run(config=config, precision=choice, device=device, threads=threads, data=data,
               samples=run_samples(config, data, device), run_dir=run_dir, model=model, started=started,
               forward=compiled(model, device) if cfg.compile else model, loss_fn=loss_fn, optimizer=optimizer,
               scheduler=build_scheduler(config.scheduler.name, config.scheduler.options, optimizer,
                                         length=clock.length, warmup=warmup, unit=f"{clock.unit}s"),
               augment=AUGMENTATIONS.build(config.augment.name, config.augment.options),
               scaler=grad_scaler(cfg.precision), generator=torch.Generator().manual_seed(config.seed),
               meta=checkpoint_meta(config, data, model.out_channels),
               stopping=EarlyStopping(cfg.monitor, patience=cfg.patience, min_delta=cfg.min_delta), clock=clock,
               evaluate=functools.partial(evaluate_split, class_names=data.class_names, loss_fn=loss_fn,
                                          patch_size=cfg.patch_size, **evaluation_options(cfg, device)))
    if resume:
        _resume(run)
    names = data.class_names
    columns = (["step"] * (clock.unit == "step") + ["epoch", "train_loss", "train_dice_mean"]
               + [f"train_dice_{n}" for n in names[1:]] + ["val_loss", "val_dice_mean"]
               + [f"val_dice_{n}" for n in names[1:]] + ["lr", "seconds"])
    run.log = MetricsLog(run_dir, columns, run.history)
    if verbose:
        print(f"training {config.model.name} ({count_parameters(model) / 1e6:.2f} M parameters) on "
              f"{len(data.train)} train / {len(data.val)} val images, {device}, {choice.describe()}, "
              f"{_describe_threads(threads, device)} -> {run_dir}"
              + (f", resumed after {clock.unit} {clock.position(run.steps)}" if resume else ""), flush=True)
    return run


def _resume(run: _Run) -> None:
    """Continue from last.pt; best.pt is written again from last.pt's copy, whole whatever happened to it."""
    progress, run.best_state = restore_checkpoint(run.run_dir, model=run.model, optimizer=run.optimizer,
                                                  scheduler=run.scheduler, scaler=run.scaler, generator=run.generator)
    run.stopping.load_state_dict(progress)
    run.first_loss, run.history = progress["first_loss"], list(progress["history"])
    run.earlier_seconds, run.out_of_time = progress["seconds"], progress.get("out_of_time", False)
    # checkpoints of epoch budgets from before the step clock hold no step count: whole epochs
    run.steps = progress.get("steps", len(run.history) * run.clock.per_epoch)
    order = progress.get("order")
    run.order = tuple(order) if order is not None else None
    if run.best_state is not None:
        write_best(run.run_dir / "best.pt", weights=run.best_state, meta=run.meta, epoch=run.stopping.best_epoch)


def _run_period(run: _Run, *, callbacks: Iterable[EpochCallback], verbose: bool) -> None:
    """Train one period (an epoch, or the steps up to the next validation), validate when the clock
    says so, log and checkpoint it."""
    clock, t_period = run.clock, time.perf_counter()
    start, end = run.steps, clock.period_end(run.steps)
    per_step = clock.unit == "step" and not _steps_on_validation(run.scheduler)
    lr, cfg = run.optimizer.param_groups[0]["lr"], run.config.train
    # the period's loss sum, train Dice counts and divergence check, on the device: read once, at its end
    tally = EpochTally(run.data.n_classes, run.device, first_loss=run.first_loss,
                       divergence_factor=cfg.divergence_factor)
    n_samples = len(run.data.train) * (1 + run.config.augment.n_aug)
    for epoch, first, parts, _ in clock.spans(start, end, n_samples, run.config.train.batch_size):
        if first == 0 or run.order is None:  # an epoch starts: its shuffle, from the run's generator
            run.order = epoch_order(len(run.data.train), run.config.augment.n_aug, run.augment is not None,
                                    run.generator)
        for chunk in ([p] for p in parts) if per_step else [parts]:  # a step schedule steps after each batch
            _train_epoch(run, epoch + 1, run.order, chunk, tally, verbose=verbose and not per_step)
            run.steps += len(chunk)
            if per_step:
                run.scheduler.step()
        if clock.unit == "epoch" and not _steps_on_validation(run.scheduler):
            run.scheduler.step()
    at = clock.position(end)
    diverged = tally.diverged()  # checked once a period, on the device's record of every batch
    if diverged is not None:
        _check_divergence(*diverged, cfg.divergence_factor, math.ceil(clock.epochs(end)), lr)
    if run.first_loss is None and tally.first is not None:
        run.first_loss = float(tally.first)
    train_dice = summarize(tally.counts(), run.data.class_names)
    row = ({"step": end, "epoch": clock.epochs(end)} if clock.unit == "step" else {"epoch": at})
    row.update(train_loss=tally.mean_loss(), train_dice_mean=train_dice["dice_mean"],
               **{f"train_dice_{n}": train_dice["dice_per_class"][n] for n in run.data.class_names[1:]}, lr=lr)
    run.out_of_time = _over_budget(run, time.perf_counter() - t_period)  # then this period is the last: validated
    if clock.validates(end) or run.out_of_time:
        row.update(_validate(run, at))
    row["seconds"], row["threads"] = time.perf_counter() - t_period, torch.get_num_threads()
    run.threads.adapt()  # with auto, the next period's count from the CPUs other processes left free in this one
    run.history.append(row)
    run.log.write(row)
    _write_last(run, at)
    if verbose:
        _print_period(row, clock)
    for callback in callbacks:
        callback(at, row)
    if run.stopping.stopped and verbose:
        print(f"early stop: no improvement of {run.config.train.monitor} in {run.stopping.stale} validations "
              f"(at {clock.unit} {at})", flush=True)


def _over_budget(run: _Run, extra_seconds: float) -> bool:
    """Whether the periods so far, plus ``extra_seconds`` of the one in progress, spent ``train.max_minutes``."""
    budget = run.config.train.max_minutes
    return budget is not None and run.train_seconds() + extra_seconds >= 60 * budget


def _stop_reason(run: _Run) -> str | None:
    """Why the run ended before its budget (summary.json's ``stopped``); None when it did not."""
    cfg = run.config.train
    if run.stopping.stopped:
        return f"early stopping (patience={cfg.patience}, monitor={cfg.monitor})"
    if run.out_of_time and run.steps < run.clock.total_steps:
        return f"time budget (max_minutes={cfg.max_minutes:g})"
    return None


def _train_epoch(run: _Run, epoch: int, order: tuple[torch.Tensor, torch.Tensor], parts: list[slice],
                 tally: EpochTally, *, verbose: bool) -> None:
    """The batches ``parts`` of epoch ``epoch``'s shuffle ``order`` (all of them: one pass over the
    (augmented) training images), each one step, added to the period's ``tally``."""
    config, cfg = run.config, run.config.train
    unfreeze_after = config.model.unfreeze_encoder_after
    if config.model.freeze_encoder and unfreeze_after is not None and run.clock.periods(run.steps) >= unfreeze_after:
        set_encoder_trainable(run.model, True)
    run.model.train()
    index, flags = order
    parts = _progress_bar(parts, f"epoch {epoch}" + (f"/{cfg.epochs}" if cfg.epochs else ""), verbose)
    train_on_batches(_augmented_batches(run, index, flags, parts), model=run.forward, loss_fn=run.loss_fn,
                     optimizer=run.optimizer, scaler=run.scaler, device=run.device, precision=cfg.precision,
                     tally=tally)


def _augmented_batches(run: _Run, index: torch.Tensor, flags: torch.Tensor,
                       parts: Iterable[slice]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of ``index`` (whole images or crops), those flagged augmented, in the configured
    memory format."""
    fmt = memory_format(run.config.train.channels_last)
    for part in parts:
        idx, aug = index[part], flags[part]
        x, y = run.samples(idx, run.generator)
        if aug.any():
            ax, ay = run.augment(x, y, run.generator)
            aug = to_device(aug, run.device)
            x = torch.where(aug[:, None, None, None], ax, x)
            y = torch.where(aug[:, None, None], ay, y)
        yield x.contiguous(memory_format=fmt), y


def _validate(run: _Run, at: int) -> dict[str, Any]:
    """Evaluate on the validation split, step a plateau schedule, keep the best weights; the row's val entries."""
    cfg, names = run.config.train, run.data.class_names
    val = run.evaluate(run.model, run.data.val)
    if _steps_on_validation(run.scheduler):
        key = getattr(run.scheduler, "monitor", None) or cfg.monitor  # stepped with larger = better
        run.scheduler.step(val["dice_mean"] if key == "val.dice_mean" else -val["loss"])
    value = val["dice_mean"] if cfg.monitor == "val.dice_mean" else val["loss"]
    if run.stopping.step(value, epoch=at):
        run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        write_best(run.run_dir / "best.pt", weights=run.best_state, meta=run.meta, epoch=at)
    return {"val_loss": val["loss"], "val_dice_mean": val["dice_mean"],
            **{f"val_dice_{n}": val["dice_per_class"][n] for n in names[1:]}}


def _write_last(run: _Run, epoch: int) -> None:
    write_checkpoint(run.run_dir / "last.pt", model=run.model, meta=run.meta, epoch=epoch, optimizer=run.optimizer,
                     scheduler=run.scheduler, scaler=run.scaler, generator=run.generator, device=run.device,
                     progress=run.progress(), best_model=run.best_state)


def _finish(run: _Run, *, verbose: bool) -> RunResult:
    """Restore the best weights (``train.restore_best``), evaluate them and write summary.json."""
    seconds, stopped = run.seconds(), _stop_reason(run)
    clock, best = run.clock, run.stopping.best_epoch
    if verbose and stopped and not run.stopping.stopped:
        print(f"stopped after {clock.unit} {clock.position(run.steps)}: {run.train_seconds():.1f} s of training "
              f"spent the {stopped}", flush=True)
    if run.config.train.restore_best and run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    summary = {
        "name": run.config.name,
        "best_epoch": best if clock.unit == "epoch" else clock.epochs(best),
        "epochs_run": len(run.history) if clock.unit == "epoch" else clock.epochs(run.steps),
        "best_step": best * clock.per_epoch if clock.unit == "epoch" else best,
        "steps_run": run.steps,
        "unit": clock.unit,  # the clock of the positions reported to callbacks (and so to a study's pruner)
        "stopped": stopped,
        "stopped_early": run.stopping.stopped,
        "seconds": seconds,
        "train_seconds": run.train_seconds(),
        "n_parameters": count_parameters(run.model),
        "device": str(run.device),
        "precision": asdict(run.precision) if run.precision else None,  # what it trained in, and why
        # the CPU threads of each period; fixed: the count of every period, or None with num_threads: auto
        "threads": {"fixed": run.threads.fixed, "per_period": [r.get("threads") for r in run.history]},
        "class_names": run.data.class_names,
        "data_split": run.data.info.get("split"),  # where each split came from (segtune.data.splits)
        "val": run.evaluate(run.model, run.data.val, distances=final_distances(run.config)),
        "test": run.evaluate(run.model, run.data.test, distances=final_distances(run.config)),
        "train_dice_mean": _train_dice_at_best(run),
    }
    if run.pretrained is not None:  # the reconstruction errors of the encoder it started from
        summary["pretrain"] = {k: run.pretrained[k] for k in ("encoder", "unit", "steps_run", "epochs_run", "val")}
    write_json_atomic(summary, run.run_dir / "summary.json")
    return RunResult(run_dir=run.run_dir, summary=summary, history=run.history)


def _pretrain_cache(out_dir: str | Path | None) -> Path:
    """Where a run's ``pretrain`` runs are cached: ``pretrain/`` beside its run directory (``runs/pretrain``)."""
    return (Path(out_dir).parent if out_dir is not None else Path("runs")) / "pretrain"


def _train_dice_at_best(run: _Run) -> float | None:
    """The train Dice of the best validation's period (the last without one), over its batches as trained."""
    at = run.stopping.best_epoch
    key = "step" if run.clock.unit == "step" else "epoch"
    rows = [r for r in run.history if r.get(key) == at] or run.history[-1:]
    return rows[0].get("train_dice_mean") if rows else None


def _steps_on_validation(scheduler: Any) -> bool:
    """A plateau schedule steps on each validation's value; the others once a tick of the run's clock."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _progress_bar(items: list, label: str, verbose: bool):
    """A batch progress bar on an interactive terminal (tqdm's own check); the plain list when not verbose."""
    if not verbose:
        return items
    return tqdm(items, desc=label, unit="batch", leave=False, disable=None)


def _describe_threads(threads: Threads, device: torch.device) -> str:
    """The start line's thread count: fixed, or following the CPUs other processes leave free (auto)."""
    count = torch.get_num_threads()
    if threads.fixed is not None or device.type != "cpu":
        return f"{count} CPU thread(s)"
    return f"{count} CPU thread(s) of {threads.most}, following the CPUs other processes leave free (auto)"


def _check_divergence(loss: float, first: float, factor: float | None, epoch: int, lr: float) -> None:
    fix = f"lower optimizer.lr (now {lr:g}) or change the optimizer"
    if not math.isfinite(loss):
        raise TrainingDiverged(f"diverged at epoch {epoch}: the training loss is {loss}; {fix}")
    if factor is not None and loss > factor * first > 0:
        raise TrainingDiverged(f"diverged at epoch {epoch}: the training loss {loss:.4g} exceeds "
                               f"{factor:g}x its first value {first:.4g}; {fix}")


def _print_period(row: dict[str, Any], clock: Clock) -> None:
    at = row["step"] if clock.unit == "step" else row["epoch"]
    parts = [f"{clock.unit} {at:>3}/{clock.length}", f"train_loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_dice {row['val_dice_mean']:.4f}"]
    parts += [f"lr {row['lr']:.2e}", f"{row['seconds']:.1f}s"]
    print("  ".join(parts), flush=True)
