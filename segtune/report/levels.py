"""The levels of the hyperparameters a study varied, and the two that lay out its curve grids.

A categorical hyperparameter's levels are its values; a numeric one with more than
``MAX_LEVELS`` distinct values is binned into quartiles (on a log scale when its values span
more than a factor of 20). A conditional hyperparameter that a trial did not sample is at the
level ``BASE_LEVEL``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Sequence

import numpy as np

from segtune.errors import ConfigError
from segtune.report.data import ReportedTrial
from segtune.report.figures import level_label

MAX_LEVELS = 6  # a numeric hyperparameter with more distinct values is binned for tables and grids
BASE_LEVEL = "(base)"  # a conditional hyperparameter a trial did not sample


class Levels:
    """The levels of one hyperparameter across trials: its values, or quantile bins of a numeric one.

    Args:
        path: the hyperparameter's dotted name, e.g. ``optimizer.lr``.
        records: the trials; those that did not sample ``path`` add the level ``BASE_LEVEL``.
        order: the values in the order to show them (a list in the study's space); others follow,
            sorted.

    Example:
        >>> Levels("optimizer.name", records, order=["adam", "sgd"]).labels  # doctest: +SKIP
        ['adam', 'sgd']
    """

    def __init__(self, path: str, records: Sequence[ReportedTrial], *, order: Sequence[Any] = ()) -> None:
        self.path = path
        values = [r.params[path] for r in records if path in r.params]
        rank = {json.dumps(v, sort_keys=True): k for k, v in enumerate(order)}
        distinct = sorted({json.dumps(v, sort_keys=True) for v in values}, key=lambda d: (rank.get(d, len(rank)), d))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        self.edges: list[float] | None = None
        if numeric and len(distinct) > MAX_LEVELS:
            nums = np.array(sorted(float(v) for v in values))
            log = nums.min() > 0 and nums.max() / nums.min() > 20
            scaled = np.log10(nums) if log else nums
            edges = np.quantile(scaled, np.linspace(0, 1, 5))
            self.edges = list(10 ** edges if log else edges)
            labels = [f"{level_label(a)}–{level_label(b)}" for a, b in zip(self.edges[:-1], self.edges[1:])]
        elif numeric:
            labels = [level_label(v) for v in sorted({v for v in values})]
        else:
            labels = [level_label(json.loads(d)) for d in distinct]
        self.labels = labels + ([BASE_LEVEL] if any(path not in r.params for r in records) else [])

    def of(self, record: ReportedTrial) -> str:
        """The label of ``record``'s level of this hyperparameter."""
        if self.path not in record.params:
            return BASE_LEVEL
        value = record.params[self.path]
        if self.edges is None:
            return level_label(value)
        k = int(np.searchsorted(self.edges, float(value), side="right")) - 1
        return self.labels[min(max(k, 0), len(self.edges) - 2)]


def varied_levels(records: Sequence[ReportedTrial], *, space: dict[str, Any] | None = None) -> list[Levels]:
    """The hyperparameters that took more than one level across ``records``.

    Args:
        records: the trials of a study.
        space: the study's space; the values of a list entry keep the list's order.

    Returns:
        One :class:`Levels` per varied hyperparameter, in the order of first appearance.

    Example:
        >>> [lv.path for lv in varied_levels(records, space={"optimizer.name": ["adam", "sgd"]})]  # doctest: +SKIP
        ['optimizer.name']
    """
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    space = space or {}
    levels = [Levels(p, records, order=space[p] if isinstance(space.get(p), list) else ()) for p in paths]
    return [lv for lv in levels if len(lv.labels) > 1]


def grid_axes(varied: Sequence[Levels], *, layout: Sequence[str] | None = None,
              records: Sequence[ReportedTrial] = ()) -> tuple[Levels | None, Levels | None]:
    """The (rows, columns) hyperparameters of the curve grids.

    Args:
        varied: the varied hyperparameters (:func:`varied_levels`).
        layout: the names to lay out by (one name: columns only); None chooses.
        records: the trials; without ``layout``, the pair whose grid they fill best is chosen (a
            learning rate given per optimizer leaves most optimizer x lr cells empty), of those
            the pair with the fewest levels.

    Returns:
        ``(rows, columns)``, either None where there is nothing to lay out by.

    Example:
        >>> rows, cols = grid_axes(varied_levels(records), layout=["optimizer.name", "loss.name"])  # doctest: +SKIP

    Raises:
        ConfigError: more than two names, or a name that is not a varied hyperparameter.
    """
    by_path = {lv.path: lv for lv in varied}
    if layout:
        unknown = [p for p in layout if p not in by_path]
        if unknown or len(layout) > 2:
            problem = f"{', '.join(unknown)} is not varied" if unknown else f"{len(layout)} names given, at most 2"
            raise ConfigError(f"cannot lay out the curves by {' x '.join(layout)} ({problem}); the varied "
                              f"hyperparameters are {', '.join(by_path) or 'none'}")
        chosen = [by_path[p] for p in layout]
    else:
        fewest_first = sorted(varied, key=lambda lv: len(lv.labels))

        def filled(pair: tuple[Levels, Levels]) -> float:
            a, b = pair
            return len({(a.of(r), b.of(r)) for r in records}) / (len(a.labels) * len(b.labels))

        pairs = list(itertools.combinations(fewest_first, 2))
        chosen = list(max(pairs, key=filled)) if pairs else fewest_first[:1]
    if len(chosen) == 1:
        return None, chosen[0]
    return (chosen[0], chosen[1]) if chosen else (None, None)


__all__ = ["BASE_LEVEL", "MAX_LEVELS", "Levels", "grid_axes", "varied_levels"]
