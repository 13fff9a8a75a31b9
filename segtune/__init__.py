"""segtune: declarative, reproducible and cheap hyperparameter studies for U-Net segmentation.

The public API: load and validate a config, train one run, find a learning rate, run a study;
the registries that name every swappable component; the errors a user can fix.

Example:
    >>> import segtune
    >>> result = segtune.train(segtune.load_config("configs/demo.yaml"))  # doctest: +SKIP
"""

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
