"""segtune: declarative, reproducible and cheap hyperparameter studies for U-Net segmentation."""

from segtune.config import Config, build_config, load_config
from segtune.data import SegData, Split
from segtune.errors import ConfigError, DataError, SegtuneError, StorageError, TrainingDiverged
from segtune.registry import Registry, RegistryError
from segtune.training.lr_find import lr_range_test
from segtune.study import run_study
from segtune.training.loop import train
from segtune.training.rundir import RunResult
from segtune.training.runtime import load_data

__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "DataError", "Registry", "RegistryError", "RunResult", "SegData",
    "SegtuneError", "Split", "StorageError", "TrainingDiverged", "build_config", "load_config", "load_data",
    "lr_range_test", "run_study", "train",
]
