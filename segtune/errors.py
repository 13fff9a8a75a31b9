"""Errors a user can fix. The CLI prints their message and exits non-zero, with no traceback."""

from __future__ import annotations

from segtune.registry import RegistryError

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "SegtuneError", "StorageError", "TrainingDiverged"]


class SegtuneError(Exception):
    """Base class of every error caused by the user's input rather than by a bug."""


class ConfigError(SegtuneError):
    """The config (file, ``--set`` overrides or study space) is invalid."""


class DataError(SegtuneError):
    """A data file or dataset layout is missing, unreadable or inconsistent."""


class StorageError(SegtuneError):
    """A result file could not be written (disk full, quota, permissions) or read back (a damaged study.db)."""


class TrainingDiverged(SegtuneError):
    """The loss became NaN or infinite; the run cannot continue."""


USER_ERRORS = (SegtuneError, RegistryError)
