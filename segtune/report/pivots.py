"""The tables and bar charts of a study's hyperparameters: pivots, metrics per cell, averages.

For every pair of varied hyperparameters that are independent (neither is a conditional entry of
the space on the other, as a learning rate given per optimizer is), a pivot of the objective and
a table of a paper's metrics per cell (:mod:`segtune.report.cells`, chosen by ``metrics``); for
every varied hyperparameter, its averages (a table and the marginal chart); for the first pair,
the objective by one grouped by the other as bars.

The averages count every trial that reported a value: a completed trial with the final value of
each seed, a pruned one with its last reported value (a study that pruned most trials still shows
every level); the tables say how many of each. Every bar chart's y axis starts at zero.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

from segtune.report.cells import class_names, metric_headers, metric_values, trial_runs
from segtune.report.data import ReportedTrial
from segtune.report.document import Block, Heading, Table, Text, figure_block
from segtune.report.figures import grouped_bars, marginal_chart
from segtune.report.levels import Levels
from segtune.study.records import Status
from segtune.study.stats import MeanCI, mean_ci


def independent_pairs(varied: Sequence[Levels], space: Mapping[str, Any] | None) -> list[tuple[Levels, Levels]]:
    """The pairs of ``varied`` that a pivot can cross: neither is conditional on the other.

    Example:
        >>> space = {"optimizer.name": ["adam", "sgd"], "optimizer.lr": {"when": "optimizer.name", "cases": {}}}
        >>> independent_pairs([], space)
        []
    """
    space = space or {}

    def when(path: str) -> str | None:
        entry = space.get(path)
        return entry.get("when") if isinstance(entry, dict) else None

    return [(a, b) for a, b in itertools.combinations(varied, 2) if when(a.path) != b.path and when(b.path) != a.path]


def reported_values(record: ReportedTrial) -> list[float]:
    """The values a completed or pruned trial reported: each finished seed's finite objective, else its
    last reported value if finite; none for a failed, stopped or running trial (its value is no result)."""
    if record.state not in (Status.COMPLETE, Status.PRUNED):
        return []
    if record.values:
        return list(record.values.values())
    return [record.value] if record.value is not None and math.isfinite(record.value) else []


def _ci(records: Sequence[ReportedTrial]) -> MeanCI | None:
    values = [v for r in records for v in reported_values(r)]
    return mean_ci(values) if values else None


def _cell_text(here: Sequence[ReportedTrial], stopped: ReportedTrial | None) -> str:
    if here:
        return here[0].ci.text()
    if stopped is not None:
        return f"pruned at epoch {stopped.epochs}: {stopped.value:.4f}"
    return "–"


def pivot(a: Levels, b: Levels, done: Sequence[ReportedTrial], pruned: Sequence[ReportedTrial],
          objective: str, *, best: ReportedTrial | None) -> Table:
    """Rows ``a``, columns ``b``: the best trial of each cell, else its furthest pruned one; the
    study's ``best`` (None: no cell) in bold."""
    rows, bold = [], set()
    for i, la in enumerate(a.labels):
        row: list[Any] = [la]
        for j, lb in enumerate(b.labels):
            here = [r for r in done if a.of(r) == la and b.of(r) == lb]  # ranked: the first is the cell's best
            stopped = max((r for r in pruned if a.of(r) == la and b.of(r) == lb),
                          key=lambda r: r.epochs or 0, default=None)
            row.append(_cell_text(here, stopped))
            if here and here[0] is best:
                bold.add((i, j + 1))
        rows.append(row)
    return Table([f"{a.path} \\ {b.path}"] + b.labels, rows, bold=frozenset(bold), name=f"pivot-{a.path}-{b.path}",
                 caption=f"{objective} of the best trial in each cell (mean ± 95% half-width over seeds; one "
                         f"seed: the value alone); a cell whose trials were all pruned shows the one that got "
                         f"furthest, with its last reported value; rows {a.path}, columns {b.path}.")


def cell_metrics_table(a: Levels, b: Levels, records: Sequence[ReportedTrial], metrics: Sequence[str], *,
                       test_losses: Mapping[Any, float] | None = None) -> Table:
    """One row per (``a``, ``b``) cell: the metrics of its best trial (the first of ``records`` in
    the cell), mean over that trial's seeds."""
    classes = class_names(records)
    rows = []
    for la, lb in itertools.product(a.labels, b.labels):
        best = next((r for r in records if a.of(r) == la and b.of(r) == lb), None)
        if best is None:
            continue
        runs = trial_runs(best, test_losses=dict(test_losses or {}))
        rows.append([la, lb, best.number, best.state, len(best.values) or "–"]
                    + metric_values(runs, metrics, classes))
    return Table([a.path, b.path, "trial", "state", "seeds"] + metric_headers(metrics, classes), rows,
                 name=f"metrics-{a.path}-{b.path}",
                 caption=f"The metrics of the best trial of each {a.path} x {b.path} cell, mean over its seeds, "
                         f"at each run's best epoch (train Dice: on the batches seen during that epoch); a "
                         f"pruned trial's at its last epoch; test loss (own) is each run's training loss, so "
                         f"only the common one compares across losses.")


def averages_table(lv: Levels, records: Sequence[ReportedTrial], objective: str) -> Table:
    """The objective per value of one hyperparameter, over every trial that reported."""
    rows = []
    for label in lv.labels:
        here = [r for r in records if lv.of(r) == label and reported_values(r)]
        ci = _ci(here)
        interval = "–" if ci is None or ci.low is None else f"{ci.low:.4f} – {ci.high:.4f}"
        rows.append([label, ci.mean if ci else None, interval, ci.n if ci else 0,
                     sum(r.state == Status.COMPLETE for r in here), sum(r.state == Status.PRUNED for r in here)])
    return Table([lv.path, f"mean {objective}", "95% interval", "values", "completed", "pruned"], rows,
                 name=f"averages-{lv.path}",
                 caption=f"Average {objective} per value of {lv.path}: every completed seed's final value and every "
                         f"pruned trial's last reported value; one value has no interval (–).")


def pivot_blocks(records: Sequence[ReportedTrial], varied: Sequence[Levels], *, objective: str,
                 space: Mapping[str, Any] | None, metrics: Sequence[str],
                 best: ReportedTrial | None, test_losses: Mapping[Any, float] | None = None) -> list[Block]:
    """The section "Hyperparameters: pairs and averages" of a study's report.

    Args:
        records: the trials, ranked.
        varied: the varied hyperparameters.
        objective: the objective's name.
        space: the study's space (to leave dependent pairs out of the pivots).
        metrics: the columns of the per-cell metrics tables (:data:`segtune.report.cells.METRICS`).
        test_losses: run directory -> the common test loss computed for it.
        best: the study's best trial, in bold in the pivots (None: the study names no best).

    Returns:
        [] where no trial reported a value or nothing was varied.
    """
    reported = [r for r in records if reported_values(r)]
    if not reported or not varied:
        return []
    done = [r for r in records if r.state == Status.COMPLETE and r.values]
    pruned = [r for r in records if r.state == Status.PRUNED and r.value is not None]
    blocks: list[Block] = [Heading("Hyperparameters: pairs and averages")]
    pairs = independent_pairs(varied, space)
    skipped = len(list(itertools.combinations(varied, 2))) - len(pairs)
    if skipped:
        blocks.append(Text(f"{skipped} pair(s) of hyperparameters have no pivot: one is set per value of the "
                           f"other (a conditional entry of the space), so most cells could not exist."))
    for a, b in pairs:
        if done:
            blocks.append(pivot(a, b, done, pruned, objective, best=best))
        if metrics:
            blocks.append(cell_metrics_table(a, b, records, metrics, test_losses=test_losses))
    if pairs:
        a, b = pairs[0]
        groups = {la: {lb: ci for lb in b.labels
                       if (ci := _ci([r for r in reported if a.of(r) == la and b.of(r) == lb])) is not None}
                  for la in a.labels}
        fig = grouped_bars(groups, group_title=a.path, bar_title=b.path, objective=objective)
        blocks.append(figure_block(fig, "grouped", f"{objective} by {a.path}, grouped by {b.path}: mean and 95% "
                                                   f"interval over every value reported (as the averages)."))
    blocks += [averages_table(lv, reported, objective) for lv in varied]
    marginals = {lv.path: [(label, ci) for label in lv.labels
                           if (ci := _ci([r for r in reported if lv.of(r) == label])) is not None] for lv in varied}
    blocks.append(figure_block(marginal_chart(marginals, objective=objective), "marginals",
                               f"{objective} per value of each hyperparameter: mean and 95% interval over every "
                               f"completed seed and every pruned trial's last value (n per bar); axes from zero."))
    return blocks


__all__ = ["averages_table", "cell_metrics_table", "independent_pairs", "pivot", "pivot_blocks", "reported_values"]
