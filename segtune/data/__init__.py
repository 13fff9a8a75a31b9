"""Data sources, all producing an in-memory :class:`SegData`, and their shared preprocessing.

Every source is registered in :data:`SOURCES` (``data.source`` in a config); importing this
package registers the built-in ones.
"""

from segtune.data import demo, folder, nifti, oxford_pet, synthetic  # noqa: F401  (registers the sources)
from segtune.data.base import (SOURCES, CaseSpan, SegData, Split, convert_channels, dataset_stats, drop_empty_slices,
                               foreground_stats, merge_rare_classes, normalize_images, prepare, remap_labels,
                               resize_split)
from segtune.data.download import DATASETS, download
from segtune.data.fingerprint import detect_source, fingerprint, format_fingerprint, survey
from segtune.data.plan import PlanReport, format_plan, plan

__all__ = [
    "DATASETS", "SOURCES", "CaseSpan", "PlanReport", "SegData", "Split", "convert_channels", "dataset_stats", "detect_source",
    "download", "drop_empty_slices", "fingerprint", "foreground_stats", "format_fingerprint", "format_plan",
    "merge_rare_classes", "normalize_images", "plan", "prepare", "remap_labels", "resize_split", "survey",
]
