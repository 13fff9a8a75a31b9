"""The report of ``segtune lr-find``: the range-test curves, the suggestion of every rule, and
(``--refine``) the table of trainings with validation Dice against the learning rate.

:func:`lr_find_report` writes ``report.html``/``report.md`` into the lr-find folder, from what
the search wrote there: ``lr_find.json`` (the range tests) and ``lr_refine.json`` (the refine
searches, written here from their results). ``segtune report LR_FIND_DIR`` writes it again.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from segtune.errors import ConfigError
from segtune.report.document import Block, Heading, Table, Text, figure_block, write_document
from segtune.report.export import DEFAULT_FORMATS
from segtune.training.lr_find import LR_RULES, RangeTest, RefineResult, explain_rule, range_test_figure

RANGE_TESTS = "lr_find.json"
REFINED = "lr_refine.json"


def is_lr_find_dir(path: Path) -> bool:
    """Whether ``path`` holds the output of ``segtune lr-find``."""
    return (path / RANGE_TESTS).is_file() or (path / REFINED).is_file()


def _range_test_blocks(curves: Sequence[RangeTest]) -> list[Block]:
    rules = LR_RULES.names()
    rows = [[c.optimizer, c.suggestion, *(c.suggestions.get(r) for r in rules), len(c.lrs), round(c.seconds, 1),
             c.stopped] for c in curves]
    rule = curves[0].rule
    return [Heading("Range test"),
            Text(f"Each optimizer trained a fresh model while the learning rate grew exponentially; a rule reads a "
                 f"learning rate off the smoothed loss. **Suggested by the {rule} rule** (the one asked for)."),
            Table(["optimizer", f"suggested lr ({rule})", *rules, "steps", "seconds", "stopped"], rows,
                  name="range-test", caption="The learning rate each rule reads off each optimizer's curve."),
            Table(["rule", "what it reads off the curve"], [[r, explain_rule(r)] for r in rules], name="rules"),
            figure_block(range_test_figure(list(curves)), "lr_find",
                         "Smoothed training loss against the learning rate, one panel per optimizer, the y axis "
                         "clipped at twice the starting loss (the test stops once the loss diverges); the dot is "
                         "the suggestion.")]


def _refine_figure(results: Sequence[RefineResult]) -> Figure:
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.subplots()
    for r in results:
        points = sorted((t["lr"], t["val_dice"]) for t in r.trials)
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{r.optimizer}: {r.best_lr:.3g}")
        ax.plot([r.best_lr], [r.best_dice], "*", ms=12, color=line.get_color())
    ax.set(xscale="log", xlabel="learning rate", ylabel="val Dice (mean)", ylim=(0, 1.02))
    ax.legend(fontsize=8, frameon=False, title="best lr")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _refine_blocks(results: Sequence[RefineResult]) -> list[Block]:
    rows = [[r.optimizer, t["stage"], t["lr"], t["val_dice"], round(t["seconds"], 1), t["status"]]
            for r in results for t in r.trials]
    best = [[r.optimizer, r.best_lr, r.best_dice, len(r.trials), r.budget, round(r.seconds)] for r in results]
    return [Heading("Refine: trainings on validation Dice"),
            Table(["optimizer", "best lr", "val Dice", "trainings", "each training", "seconds"], best, name="refine-best",
                  caption="The best learning rate of each optimizer and what finding it cost."),
            Table(["optimizer", "stage", "lr", "val Dice", "seconds", "status"], rows, name="refine",
                  caption="Every training, in the order run: one per decade, then bisection around the best; a "
                          "diverged training scores 0."),
            figure_block(_refine_figure(results), "refine", "Validation Dice against the learning rate; the star "
                                                            "is each optimizer's best.")]


def lr_find_report(folder: str | Path, out_dir: str | Path | None = None, *, curves: Sequence[RangeTest] | None = None,
                   refined: Sequence[RefineResult] | None = None, formats: Sequence[str] = DEFAULT_FORMATS) -> Path:
    """Write the report of an lr-find folder.

    Args:
        folder: the folder ``segtune lr-find`` wrote.
        out_dir: where report.html, report.md, figures/ and tables/ go; default ``folder``.
        curves: the range tests; default those in ``lr_find.json``.
        refined: the refine searches, stored as ``lr_refine.json``; default those stored there.
        formats: the export formats (:data:`segtune.report.export.FORMATS`).

    Returns:
        The path of report.html.

    Raises:
        ConfigError: neither range tests nor refine searches there.

    Example:
        >>> lr_find_report("runs/lr-find-tissue-20250101-120000")  # doctest: +SKIP
    """
    folder = Path(folder)
    if refined is not None:
        (folder / REFINED).write_text(json.dumps([asdict(r) for r in refined]))
    if curves is None and (folder / RANGE_TESTS).is_file():
        curves = [RangeTest(**c) for c in json.loads((folder / RANGE_TESTS).read_text())]
    if refined is None and (folder / REFINED).is_file():
        refined = [RefineResult(**r) for r in json.loads((folder / REFINED).read_text())]
    if not curves and not refined:
        raise ConfigError(f"{folder}: no {RANGE_TESTS} or {REFINED} here; run segtune lr-find CONFIG --out {folder}")
    blocks: list[Block] = [Heading(f"Learning rate search {folder.name}", 1)]
    blocks += _range_test_blocks(curves) if curves else []
    blocks += _refine_blocks(refined) if refined else []
    return write_document(blocks, Path(out_dir or folder), title=f"Learning rate search {folder.name}",
                          formats=formats)


__all__ = ["RANGE_TESTS", "REFINED", "is_lr_find_dir", "lr_find_report"]
