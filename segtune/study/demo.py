"""The built-in demo: its shipped config files and the study it runs on them.

``segtune demo`` runs :func:`run_demo`: a grid study of optimizer x learning rate x loss with
median pruning (``segtune/configs/demo_study.yaml``) on the demo data, brain tissue of the MNI
ICBM152 2009 template, held-out contiguous blocks of axial slices. ``segtune demo --single``
trains ``demo.yaml`` once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import optuna

from segtune.study import best_trial, run_study
from segtune.study.records import RunRecord, TrialRecord

__all__ = ["DemoResult", "default_demo_dir", "demo_config_path", "demo_study_path", "run_demo"]


def demo_config_path() -> Path:
    """The demo's training config, ``demo.yaml``, shipped with the package."""
    return Path(str(resources.files("segtune") / "configs" / "demo.yaml"))


def demo_study_path() -> Path:
    """The demo's study file, ``demo_study.yaml``, beside :func:`demo_config_path`."""
    return demo_config_path().with_name("demo_study.yaml")


def default_demo_dir() -> Path:
    """Where a demo study goes unless told: ``runs/demo-study-<timestamp>``."""
    return Path("runs") / f"demo-study-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class DemoResult:
    """A finished demo study.

    Attributes:
        study: the Optuna study.
        study_dir: its directory (study.db, trials/).
        seconds: wall time of the study.
        best_trial: the best complete trial, or None when none completed.
        best_run: the best repeat of ``best_trial`` (its ``run_dir``, ``class_names`` and
            ``test`` metrics), or None.
    """

    study: optuna.Study
    study_dir: Path
    seconds: float
    best_trial: TrialRecord | None
    best_run: RunRecord | None


def run_demo(*, study_dir: str | Path | None = None, overrides: Sequence[str] = (),
             progress: bool = True) -> DemoResult:
    """Run the demo study (``demo_study.yaml``) and pick its best run.

    Args:
        study_dir: the study directory; default :func:`default_demo_dir`.
        overrides: ``KEY=VALUE`` changes to every trial's config, e.g. ``["train.epochs=1"]``.
        progress: print one line per finished trial.

    Returns:
        A :class:`DemoResult`.

    Raises:
        SegtuneError: an override or the data is unusable, or the study cannot be stored.

    Example:
        >>> result = run_demo(study_dir="runs/demo", overrides=["train.epochs=1"])  # doctest: +SKIP
        >>> result.best_run.test["dice_mean"]  # doctest: +SKIP
    """
    study_dir = Path(study_dir) if study_dir is not None else default_demo_dir()
    t0 = time.perf_counter()
    study = run_study(demo_study_path(), study_dir=study_dir, overrides=list(overrides), verbose=False,
                      progress=progress)
    seconds = time.perf_counter() - t0
    best = best_trial(study)
    best_run = max(best.runs, key=lambda r: r.value) if best is not None and best.runs else None
    return DemoResult(study=study, study_dir=study_dir, seconds=seconds, best_trial=best, best_run=best_run)
