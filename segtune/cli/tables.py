"""Plain-text tables the commands print: aligned columns, floats with 4 decimals."""

from __future__ import annotations

from typing import Any

__all__ = ["print_dice_table", "print_table"]


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    """Print an aligned plain-text table (floats with 4 decimals).

    Args:
        rows: the table's rows, each as long as ``header``.
        header: the column titles.
    """
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def print_dice_table(metrics: dict[str, dict], class_names: list[str]) -> None:
    """Print per-class Dice (and IoU) of each split in ``metrics``, foreground classes and their mean.

    Args:
        metrics: split name -> metrics with ``dice_per_class``, ``iou_per_class``, ``dice_mean``
            and ``iou_mean``.
        class_names: every class, background first (it is left out).
    """
    from segtune.training.metrics import dice_table_rows

    header = ["class"] + [f"{s} dice" for s in metrics] + [f"{s} iou" for s in metrics]
    print_table(dice_table_rows(metrics, class_names), header)
