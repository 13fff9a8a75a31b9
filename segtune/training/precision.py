"""``train.precision: auto`` (the default): the precision and memory format a run trains in, chosen by timing.

On a CPU the first run of a model shape on a machine times a few training steps of the configured
model, loss and optimizer on one training batch in fp32 and in bf16 autocast, each with and without
channels_last, and trains in the fastest of the four; bf16 only where it is at least
:data:`BF16_MARGIN` faster than the best fp32 (it rounds, so it has to pay for itself), and only
timed where the CPU's flags show bf16 units (:func:`native_bf16`; elsewhere it is emulated, several
times slower, and timing it cost more than a short run's epochs). The choice is
kept in a small JSON cache, ``<cache dir>/precision.json`` (``$SEGTUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/segtune``, else ``~/.cache/segtune``), keyed by the machine (CPU model, CPU threads,
torch version) and the model shape (model and its options, channels in and out, sample size, batch
size; not the loss, whose share of a step is small, so a study over losses times once): every later run of that shape on that machine trains the same way without timing again, so
the same config and seed give the same numbers there. The timing runs on copies of the random
generators, so the run itself draws the same numbers whether it timed or read the cache.

``$SEGTUNE_PRECISION`` (``fp32``, ``bf16``, ``fp32+channels_last`` or ``bf16+channels_last``) is what
``auto`` means on a CPU without timing: for machines whose load makes a timing meaningless, and for
test suites, whose numbers must not depend on how busy the machine was when they first ran.

On a CUDA GPU: bf16 where the GPU computes it in hardware (Ampere and later; torch's own check
counts an emulated bf16 too, which a V100 or T4 runs several times slower), else fp16 (with the loss
scaler); the configured
memory format; no timing. On MPS: fp32. A set ``train.precision`` (fp32, bf16, fp16) is used as
given, with the configured ``train.channels_last``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from segtune.config import Config
from segtune.data import SegData
from segtune.errors import ConfigError
from segtune.training.runtime import build_training, cpu_model, grad_scaler, run_samples, train_on_batches

__all__ = ["BF16_MARGIN", "CACHE_ENV", "CHOICE_ENV", "Precision", "as_trained", "cache_path", "fastest",
           "gpu_precision", "native_bf16", "resolve_precision"]

CACHE_ENV = "SEGTUNE_CACHE_DIR"
CHOICE_ENV = "SEGTUNE_PRECISION"  # what auto is on a CPU, without timing
BF16_MARGIN = 0.10  # bf16 must be 10 % faster than fp32 to be chosen
N_STEPS = 3  # timed steps per candidate, after one warm-up; the fastest counts (others' load only slows)
CANDIDATES = (("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False))
# CPU flags of bf16 arithmetic in hardware (x86 AVX512-BF16 and AMX, Arm's BF16); without them bf16 is
# emulated in fp32 and slower (7 to 11x a step on an AVX2 EPYC), so it is not timed
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU computes in bf16 in hardware, from its flags; None where they cannot be read."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    flags = {f for line in lines if line.startswith(("flags", "Features")) for f in line.partition(":")[2].split()}
    return bool(flags & BF16_FLAGS) if flags else None


@dataclass(frozen=True)
class Precision:
    """How a run trains: ``precision`` (fp32, bf16, fp16), ``channels_last``, and how that was decided
    (``source``: ``set`` in the config, ``timed`` now, ``cached`` from an earlier timing, ``env``
    (``$SEGTUNE_PRECISION``), ``resumed`` (what the run trained in before its resume), or ``device``:
    the GPU's own); ``seconds_per_step``: the timing of each candidate, ``"bf16+channels_last": 0.21``."""

    precision: str
    channels_last: bool
    source: str
    seconds_per_step: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """``bf16, channels_last (auto: timed, 0.210 against fp32's 0.300 s per step)``, for a run's output."""
        text = f"{self.precision}, {'channels_last' if self.channels_last else 'default layout'}"
        if self.source == "set":
            return text
        if not self.seconds_per_step:
            return f"{text} (auto: {self.source})"
        timings = ", ".join(f"{k} {v:.3f}" for k, v in self.seconds_per_step.items())
        return f"{text} (auto, {self.source}: s per step {timings})"


def cache_path() -> Path:
    """The precision cache: ``$SEGTUNE_CACHE_DIR/precision.json``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segtune"
    return Path(root) / "precision.json"


def resolve_precision(config: Config, data: SegData, device: torch.device) -> tuple[Config, Precision]:
    """``config`` with a concrete ``train.precision`` and ``train.channels_last``, and how they were chosen.

    Args:
        config: a validated config; with ``train.precision: auto`` the choice is timed or read
            from the cache (see the module's docstring), otherwise kept.
        data: the run's data (its sample size and channels are part of the model shape).
        device: the run's device (:func:`~segtune.training.runtime.setup_device`: threads set).

    Returns:
        ``(config, choice)``: the config to train with and a :class:`Precision`.

    Example:
        >>> config, choice = resolve_precision(config, data, torch.device("cpu"))  # doctest: +SKIP
        >>> choice.describe()  # doctest: +SKIP
        'fp32, channels_last (auto, timed: s per step fp32+channels_last 0.171, ...)'
    """
    train = config.train
    if train.precision != "auto":
        choice = Precision(train.precision, train.channels_last, "set")
    elif device.type == "cuda":
        choice = Precision(gpu_precision(), train.channels_last, "device")
    elif device.type != "cpu":
        choice = Precision("fp32", train.channels_last, "device")
    elif os.environ.get(CHOICE_ENV):
        choice = _from_environment(os.environ[CHOICE_ENV])
    else:
        choice = _cached_or_timed(config, data, device)
    resolved = train.model_copy(update={"precision": choice.precision, "channels_last": choice.channels_last})
    return config.model_copy(update={"train": resolved}), choice


def gpu_precision() -> str:
    """``auto`` on a CUDA GPU: bf16 where the GPU has bf16 units, else fp16 (never emulated bf16)."""
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def fastest(timings: dict[tuple[str, bool], float]) -> tuple[str, bool]:
    """The ``(precision, channels_last)`` to train in from seconds per step of each candidate: the
    fastest fp32 layout, unless a bf16 one is at least :data:`BF16_MARGIN` faster than it."""
    best = min((t, p, cl) for (p, cl), t in timings.items() if p == "fp32")
    fast = min((t, p, cl) for (p, cl), t in timings.items())
    _, precision, channels_last = fast if fast[0] < (1 - BF16_MARGIN) * best[0] else best
    return precision, channels_last


def _from_environment(value: str) -> Precision:
    """The :data:`CHOICE_ENV` setting as a :class:`Precision`; a clear error for any other value."""
    precision, _, layout = value.strip().partition("+")
    if precision not in ("fp32", "bf16") or layout not in ("", "channels_last"):
        raise ConfigError(f"{CHOICE_ENV}={value!r}: not a precision for train.precision=auto on a CPU; use fp32, "
                          f"bf16, fp32+channels_last or bf16+channels_last, or unset it to time the choice")
    return Precision(precision, layout == "channels_last", "env")


def as_trained(config: Config, meta: dict[str, Any]) -> Config:
    """``config`` (a run's config.yaml) with the precision and memory format its run trained in
    (its checkpoint's ``meta``), so that evaluating it later predicts as the run did."""
    if config.train.precision != "auto":
        return config
    train = config.train.model_copy(update={"precision": meta.get("precision", "fp32"),
                                            "channels_last": meta.get("channels_last", config.train.channels_last)})
    return config.model_copy(update={"train": train})


def _machine_and_shape(config: Config, data: SegData) -> str:
    sample = tuple(config.train.patch_size or data.train.images.shape[2:])
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    shape = {"model": config.model.name, "options": config.model.options, "in": data.in_channels,
             "classes": data.n_classes, "sample": list(sample),
             "batch": min(config.train.batch_size, len(data.train))}
    return json.dumps({"machine": machine, "shape": shape}, sort_keys=True, default=str)


def _cached_or_timed(config: Config, data: SegData, device: torch.device) -> Precision:
    """The cached choice of this machine and shape, else a timing of every candidate, cached."""
    key, path = _machine_and_shape(config, data), cache_path()
    with _locked(path):  # workers of a study time one after the other, and the first choice stays
        entries = _read(path)
        cached = entries.get(key)
        if isinstance(cached, dict) and (cached.get("precision"), cached.get("channels_last")) in CANDIDATES:
            return Precision(cached["precision"], cached["channels_last"], "cached",
                             dict(cached.get("seconds_per_step") or {}))
        timings = _time_candidates(config, data, device)
        precision, channels_last = fastest(timings)
        choice = Precision(precision, channels_last, "timed",
                           {f"{p}{'+channels_last' if cl else ''}": t for (p, cl), t in timings.items()})
        entries[key] = {k: v for k, v in asdict(choice).items() if k != "source"}
        _write(path, entries)
    return choice


def _time_candidates(config: Config, data: SegData, device: torch.device) -> dict[tuple[str, bool], float]:
    """Seconds per training step of each candidate, the fastest of :data:`N_STEPS` after a warm-up;
    on copies of the random generators, so the run draws what it would have drawn without timing."""
    timings = {}
    bf16 = native_bf16() is not False
    candidates = [c for c in CANDIDATES if c[0] == "fp32" or bf16]
    with torch.random.fork_rng(devices=[]):
        for precision, channels_last in candidates:
            train = config.train.model_copy(update={"precision": precision, "channels_last": channels_last})
            candidate = config.model_copy(update={"train": train})
            model, loss_fn, optimizer = build_training(candidate, data, device)
            n = min(config.train.batch_size, len(data.train))
            x, y = run_samples(candidate, data, device)(torch.arange(n), torch.Generator().manual_seed(0))
            x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            model.train()
            steps = []
            for _ in range(N_STEPS + 1):
                t = time.perf_counter()
                train_on_batches([(x, y)], model=model, loss_fn=loss_fn, optimizer=optimizer,
                                 scaler=grad_scaler(precision), device=device, precision=precision)
                steps.append(time.perf_counter() - t)
            timings[(precision, channels_last)] = min(steps[1:])
    return timings


def _read(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: timed again and rewritten
        return {}
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice holds for this run only
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s lock file where the system has ``fcntl`` (and the directory
    can be made); none otherwise."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
