"""The figures of a report; each function returns a :class:`matplotlib.figure.Figure`.

The figures are made as ``Figure`` objects, not through pyplot, so drawing a report neither
switches the caller's backend nor leaves figures open in pyplot's list; ``savefig`` renders them
with Agg.

Curves are small multiples: one panel per (row level, column level) of two hyperparameters,
every trial in a panel drawn in its own colour, its repeats in the same colour, fainter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from segtune.study.stats import MeanCI

_LINE_STYLES = ("-", "--", ":", "-.")
# background black, then well-separated colours for the classes
_CLASS_COLOURS = ["#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                  "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000"]


@dataclass(frozen=True)
class CurveRun:
    """One run's per-epoch history placed in the grid: its panel, trial and repeat."""

    row: str
    col: str
    trial: int
    repeat: int
    history: list[dict[str, float]]
    note: str = ""  # shown after the trial number in the legend, e.g. "pruned"


def _series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _draw_panel(ax: Axes, here: Sequence[CurveRun], *, keys: Sequence[str], legend: bool) -> None:
    """The curves of one panel: a colour per trial, a line style per key, further repeats fainter."""
    colours = matplotlib.colormaps["tab10"].colors
    trials = sorted({r.trial for r in here})
    for run in here:
        colour = colours[trials.index(run.trial) % len(colours)]
        for k, key in enumerate(keys):
            x, y = _series(run.history, key)
            if not x:
                continue
            label = f"#{run.trial} {run.note}".strip() if run.repeat == 0 and k == 0 else None
            ax.plot(x, y, _LINE_STYLES[k % len(_LINE_STYLES)], color=colour, label=label,
                    alpha=1.0 if run.repeat == 0 else 0.45, lw=1.4 if run.repeat == 0 else 0.9,
                    marker="." if len(x) < 4 else None)
    if not here:
        ax.text(0.5, 0.5, "no trial", ha="center", va="center", transform=ax.transAxes, color="#999")
    elif legend and len(trials) <= 8:
        ax.legend(fontsize=7, loc="best", frameon=False, title="trial", title_fontsize=7)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)


def curve_grid(runs: Sequence[CurveRun], *, keys: Sequence[str], rows: Sequence[str], cols: Sequence[str],
               row_title: str = "", col_title: str = "", ylabel: str = "", log: bool = False,
               legend: bool = True) -> Figure:
    """Per-epoch curves as small multiples, ``rows`` x ``cols`` panels sharing their axes.

    Args:
        runs: the runs to draw; each in the panel of its ``row`` and ``col``.
        keys: metrics columns to draw, one line style each (e.g. train_loss solid, val_loss dashed).
        rows: the row levels, top to bottom; cols: the column levels, left to right.
        row_title: the hyperparameter of the rows; col_title: that of the columns.
        ylabel: the y axis label; log: a log y axis (the learning rate).
        legend: name the trials in each panel (up to 8).

    Returns:
        The figure; a panel no run falls in says "no trial".

    Example:
        >>> fig = curve_grid([CurveRun("", "", 0, 0, history)], keys=["train_loss", "val_loss"],
        ...                  rows=[""], cols=[""], ylabel="loss")  # doctest: +SKIP
    """
    n_rows, n_cols = max(len(rows), 1), max(len(cols), 1)
    fig = Figure(figsize=(min(3.2 * n_cols, 16) + 0.6, 2.4 * n_rows + 0.6))
    axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)
    for i, row in enumerate(rows or [""]):
        for j, col in enumerate(cols or [""]):
            ax = axes[i][j]
            _draw_panel(ax, [r for r in runs if r.row == row and r.col == col], keys=keys, legend=legend)
            if log:
                ax.set_yscale("log")
            if i == 0 and col_title:
                ax.set_title(f"{col_title} = {col}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{row_title} = {row}\n{ylabel}" if row_title else ylabel, fontsize=8)
            if i == n_rows - 1:
                ax.set_xlabel("epoch", fontsize=8)
    if len(keys) > 1:
        handles = [Line2D([], [], color="#333", ls=_LINE_STYLES[k % len(_LINE_STYLES)]) for k in range(len(keys))]
        fig.legend(handles, keys, loc="upper center", ncol=len(keys), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout(rect=(0, 0, 1, 0.97 if n_rows > 1 else 0.9))
    else:
        fig.tight_layout()
    return fig


def _bars(ax: Axes, x: Sequence[float], cis: Sequence[MeanCI], *, width: float = 0.8, **style: Any) -> None:
    """Bars at ``x`` of the means of ``cis``, with error bars only where there is an interval (one
    seed has none: no bar of zero width pretends to be one)."""
    ax.bar(x, [ci.mean for ci in cis], width=width, **style)
    known = [(xi, ci) for xi, ci in zip(x, cis) if ci.half_width is not None]
    if known:
        ax.errorbar([xi for xi, _ in known], [ci.mean for _, ci in known], yerr=[ci.half_width for _, ci in known],
                    fmt="none", ecolor="#222", capsize=3, lw=1)


def _bar_axis(ax: Axes, cis: Sequence[MeanCI], objective: str) -> None:
    """A bar chart's y axis from zero (a bar's height is its value: no truncated axis), up to the
    highest interval, within the objective's possible values (Dice and IoU at most 1)."""
    highs = [ci.high if ci.high is not None else ci.mean for ci in cis]
    if not highs:
        return
    bounded = "dice" in objective or "iou" in objective  # 0..1: an interval beyond is cut at the frame
    lowest = min(ci.mean if bounded or ci.low is None else ci.low for ci in cis)
    top = min(max(max(highs), 0.0) * 1.08 or 1.0, 1.02 if bounded else np.inf)
    ax.set_ylim(min(0.0, lowest * 1.08), top)


def _tick_labels(ax: Axes, labels: Sequence[str], x: Sequence[float] | None = None) -> None:
    long = max(map(len, labels), default=0) > 6
    ax.set_xticks(list(x) if x is not None else range(len(labels)), labels, rotation=30 if long else 0,
                  ha="right" if long else "center", fontsize=8)


def marginal_chart(marginals: dict[str, list[tuple[str, MeanCI]]], *, objective: str) -> Figure:
    """One panel per hyperparameter: the objective per value, mean and 95% interval as error bars.

    Args:
        marginals: hyperparameter -> (level label, objective over that level's runs) per level.
        objective: the objective's name, the y label; a Dice or IoU keeps the y axis in 0..1.

    Returns:
        The figure; every y axis starts at zero, each bar says over how many values it is.
    """
    n = max(len(marginals), 1)
    fig = Figure(figsize=(min(3.6 * n, 16), 3.2))
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    for ax, (param, levels) in zip(axes[0], marginals.items()):
        cis = [ci for _, ci in levels]
        _bars(ax, range(len(levels)), cis, color="#4c72b0", alpha=0.85)
        for k, ci in enumerate(cis):
            ax.text(k, ci.mean / 2, f"n={ci.n}", ha="center", va="center", fontsize=7, color="white")
        _tick_labels(ax, [lab for lab, _ in levels])
        ax.set_title(param, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(objective, fontsize=8)
    _bar_axis(axes[0][0], [ci for levels in marginals.values() for _, ci in levels], objective)
    fig.tight_layout()
    return fig


def grouped_bars(groups: dict[str, dict[str, MeanCI]], *, group_title: str, bar_title: str,
                 objective: str) -> Figure:
    """Bars of the objective by one hyperparameter, grouped by another, with 95% intervals.

    Args:
        groups: group level (the x axis) -> {bar level: objective over its runs}.
        group_title: the hyperparameter of the groups; bar_title: that of the bars (the legend).
        objective: the y label.

    Returns:
        The figure, its y axis from zero.

    Example:
        >>> fig = grouped_bars({"adam": {"dice": mean_ci([0.8, 0.82])}}, group_title="optimizer.name",
        ...                    bar_title="loss.name", objective="val.dice_mean")  # doctest: +SKIP
    """
    bar_levels = list(dict.fromkeys(b for bars in groups.values() for b in bars))
    colours = matplotlib.colormaps["tab10"].colors
    width = 0.8 / max(len(bar_levels), 1)
    fig = Figure(figsize=(min(1.2 + len(groups) * (0.5 + 0.3 * len(bar_levels)), 16), 3.4))
    ax = fig.subplots()
    for k, level in enumerate(bar_levels):
        here = [(g, bars[level]) for g, (_, bars) in enumerate(groups.items()) if level in bars]
        _bars(ax, [g - 0.4 + width * (k + 0.5) for g, _ in here], [ci for _, ci in here], width=width,
              color=colours[k % len(colours)], label=level)
    _tick_labels(ax, list(groups))
    ax.set_xlabel(group_title, fontsize=8)
    ax.set_ylabel(objective, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title=bar_title, fontsize=7, title_fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    _bar_axis(ax, [ci for bars in groups.values() for ci in bars.values()], objective)
    fig.tight_layout()
    return fig


def objective_bars(labels: Sequence[str], cis: Sequence[MeanCI], *, objective: str) -> Figure:
    """The objective of each completed trial, best first: mean and 95% interval over repeats.

    Args:
        labels: one bar label per trial.
        cis: the objective over each trial's repeats, in the order of ``labels``.
        objective: the objective's name, the y label.

    Returns:
        The figure, its y axis from zero.
    """
    fig = Figure(figsize=(min(0.45 * len(labels) + 2.5, 16), 3.2))
    ax = fig.subplots()
    _bars(ax, range(len(labels)), cis, color="#55a868")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(objective, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _bar_axis(ax, cis, objective)
    fig.tight_layout()
    return fig


def importance_chart(importance: dict[str, dict[str, float]]) -> Figure:
    """Horizontal bars: each hyperparameter's importance, one bar per evaluator.

    Args:
        importance: evaluator name -> {hyperparameter: importance}, as
            :func:`segtune.study.stats.importances` gives them.

    Returns:
        The figure, the most important hyperparameter on top.
    """
    params = sorted({p for imp in importance.values() for p in imp},
                    key=lambda p: -max(imp.get(p, 0.0) for imp in importance.values()))
    fig = Figure(figsize=(6.5, 0.28 * len(params) * len(importance) + 1.2))
    ax = fig.subplots()
    height = 0.8 / max(len(importance), 1)
    for k, (name, imp) in enumerate(importance.items()):
        ax.barh(np.arange(len(params)) + k * height, [imp.get(p, 0.0) for p in params], height=height, label=name)
    ax.set_yticks(np.arange(len(params)) + height * (len(importance) - 1) / 2, params, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("importance (sums to 1 per evaluator)", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A ``(C, H, W)`` image scaled to 0..1 for display: RGB as is, otherwise the first channel in grey."""
    img = image[:3].transpose(1, 2, 0) if image.shape[0] >= 3 else image[0]
    lo, hi = np.percentile(img, [1, 99])
    img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return img, (None if img.ndim == 3 else "gray")


@dataclass(frozen=True)
class PanelRow:
    """One row of a prediction panel: an image, its ground truth (drawn once) and predictions of it."""

    title: str  # left of the row, e.g. "optimizer.name = adam\nimage 12"
    image: np.ndarray  # (C, H, W) network input
    truth: np.ndarray  # (H, W) labels
    predictions: dict[str, np.ndarray]  # column title -> (H, W) labels; a missing column stays blank
    notes: dict[str, str] = dataclass_field(default_factory=dict)  # column title -> text under the panel


def prediction_grid(rows: Sequence[PanelRow], columns: Sequence[str], *, class_names: Sequence[str]) -> Figure:
    """Rows of image, ground truth and the prediction of each column, per-class colours and a legend.

    Args:
        rows: the rows, top to bottom.
        columns: the prediction columns, left to right (after image and ground truth).
        class_names: the label of each class index (index 0 the background).

    Returns:
        The figure; a column a row has no prediction for says "no trial".
    """
    n_classes = len(class_names)
    colours = [_CLASS_COLOURS[i % len(_CLASS_COLOURS)] for i in range(n_classes)]
    cmap = ListedColormap(colours)
    titles = ["image", "ground truth", *columns]
    n = len(rows)
    fig = Figure(figsize=(1.9 * len(titles) + 0.6, 1.9 * n + 0.7))
    axes = fig.subplots(n, len(titles), squeeze=False)
    for i, row in enumerate(rows):
        for j, title in enumerate(titles):
            ax = axes[i][j]
            labels = row.truth if j == 1 else row.predictions.get(title)
            if j == 0:
                img, cm = _display_image(row.image)
                ax.imshow(img, cmap=cm, interpolation="nearest")
                ax.set_ylabel(row.title, fontsize=7)
            elif labels is None:
                ax.text(0.5, 0.5, "no trial", ha="center", va="center", transform=ax.transAxes, color="#999")
            else:
                ax.imshow(labels, cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5, interpolation="nearest")
            if title in row.notes:
                ax.set_xlabel(row.notes[title], fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    handles = [Patch(facecolor=c, edgecolor="#888", label=name) for c, name in zip(colours, class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n_classes, 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / (1.9 * n + 0.7) + 0.03, 1, 1))
    return fig


def prediction_panel(images: np.ndarray, truths: np.ndarray, predictions: dict[str, np.ndarray], *,
                     class_names: Sequence[str]) -> Figure:
    """Rows of image / ground truth / each prediction (:func:`prediction_grid`, one row per image).

    Args:
        images: ``(N, C, H, W)`` network inputs; truths: ``(N, H, W)`` labels.
        predictions: column title -> ``(N, H, W)`` predicted labels.
        class_names: the label of each class index (index 0 the background).
    """
    rows = [PanelRow("", images[i], truths[i], {t: p[i] for t, p in predictions.items()}) for i in range(len(images))]
    return prediction_grid(rows, list(predictions), class_names=class_names)


def level_label(value: Any) -> str:
    """A hyperparameter value as a short axis label: floats to 3 significant digits.

    Example:
        >>> level_label(0.00031622), level_label("adam")
        ('0.000316', 'adam')
    """
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


__all__ = ["CurveRun", "PanelRow", "curve_grid", "grouped_bars", "importance_chart", "level_label", "marginal_chart",
           "objective_bars", "prediction_grid", "prediction_panel"]
