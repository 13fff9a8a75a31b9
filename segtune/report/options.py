"""What a report shows and writes, beyond the study itself: one typed set of options, checked once.

``segtune report`` builds a :class:`ReportOptions` from its flags; every check runs when it is
made, so a misspelt metric or format fails before any figure is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from segtune.errors import ConfigError
from segtune.report.cells import DEFAULT_METRICS, check_metrics
from segtune.report.export import DEFAULT_FORMATS, check_formats
from segtune.report.test_loss import check_test_loss


@dataclass(frozen=True)
class ReportOptions:
    """The options of a study's report.

    Args:
        layout: one or two varied hyperparameters (columns, or rows then columns) laying out the
            curve grids and the prediction grid; None chooses the pair that fills the grid best.
        metrics: the columns of the per-cell metrics tables
            (:data:`segtune.report.cells.METRICS`); () leaves those tables out.
        formats: the export formats (:data:`segtune.report.export.FORMATS`).
        test_loss: a registered loss computed on every trial's test predictions (a common test
            loss, so losses compare); None shows only each run's own loss.
        n_best: trials in the panel of the best trials.
        n_images: validation images per prediction panel (and worst cases shown).
        images: the validation images to show (indices) instead of ``n_images`` chosen ones.

    Example:
        >>> ReportOptions(metrics=("val_dice", "epochs"), formats=("pdf",)).formats
        ('png', 'pdf')
    """

    layout: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = DEFAULT_METRICS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    test_loss: str | None = None
    n_best: int = 3
    n_images: int = 4
    images: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", _layout(self.layout))
        object.__setattr__(self, "metrics", check_metrics(tuple(self.metrics)))
        object.__setattr__(self, "formats", check_formats(tuple(self.formats)))
        if self.test_loss is not None:
            check_test_loss(self.test_loss)
        for name in ("n_best", "n_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"report: {name} must be at least 1, got {getattr(self, name)}")
        if self.images is not None:
            object.__setattr__(self, "images", tuple(int(i) for i in self.images))


def _layout(layout: Sequence[str] | None) -> tuple[str, ...] | None:
    """The layout's names; ``rows x cols`` may be written with the ``x`` (``--layout a x b``)."""
    if not layout:
        return None
    return tuple(n for part in layout for n in part.replace(" x ", " ").split() if n != "x")


__all__ = ["ReportOptions"]
