"""segtune: declarative, reproducible and cheap hyperparameter studies for U-Net segmentation.

The public API: load and validate a config, train one run, find a learning rate, run a study;
the registries that name every swappable component; the errors a user can fix.

Example:
    >>> import segtune
    >>> result = segtune.train(segtune.load_config("configs/demo.yaml"))  # doctest: +SKIP
"""

import os as _os  # ruff: noqa: E402 (the environment is set before torch is imported)

# OpenMP threads that spin at their barriers waiting for a descheduled sibling turn a busy machine's
# training 2 to 10x slower than one thread (measured with one competing process on 2 cores). The
# wait policy is read once, when torch loads its OpenMP runtime, hence here, before torch is imported;
# a user's own setting wins. KMP_BLOCKTIME is the same setting for Intel's OpenMP runtime.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("KMP_BLOCKTIME", "0")

from segtune.components import AUGMENTATIONS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS, build_model, build_scheduler
from segtune.config import Config, build_config, load_config
from segtune.data import SOURCES, SegData, Split
from segtune.errors import ConfigError, DataError, SegtuneError, StorageError, TrainingDiverged
from segtune.registry import Registry, RegistryError
from segtune.study import run_study
from segtune.training.loop import train
from segtune.training.lr_find import lr_range_test
from segtune.training.rundir import RunResult
from segtune.training.runtime import load_data

__version__ = "0.1.0"

__all__ = [
    "AUGMENTATIONS", "LOSSES", "MODELS", "OPTIMIZERS", "SCHEDULERS", "SOURCES", "Config", "ConfigError", "DataError",
    "Registry", "RegistryError", "RunResult", "SegData", "SegtuneError", "Split", "StorageError", "TrainingDiverged",
    "build_config", "build_model", "build_scheduler", "load_config", "load_data", "lr_range_test", "run_study",
    "train",
]
