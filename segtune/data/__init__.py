"""Data sources, all producing an in-memory :class:`SegData`, and their shared preprocessing."""

from segtune.data.base import SOURCES, SegData, Split, normalize_images, prepare, resize_split
from segtune.data import demo, folder, nifti, oxford_pet, synthetic  # noqa: F401  (registers the sources)

__all__ = ["SOURCES", "SegData", "Split", "normalize_images", "prepare", "resize_split"]
