"""A study's pre-training section: reconstruction errors per encoder, reconstructions side by side.

A trial started from a pre-trained encoder is found by its pre-training run directory (one that
``segtune pretrain`` wrote: a ``summary.json`` naming an ``encoder``), looked for in this order:

1. ``<run dir>/pretrain/``: a pre-training run made as part of the trial's run;
2. the folder of the trial's ``model.encoder_weights`` (its parameter, else its resolved config):
   a study whose space lists encoders pre-trained for 500, 1000 and 3000 steps.

Trials sharing one encoder share its row; the table gives its validation MSE and MAE and the
objective of the trials fine-tuned from it, and the figure puts its reconstructions side by side.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib.image
from matplotlib.figure import Figure

from segtune.report.data import ReportedTrial
from segtune.report.document import Block, Heading, Table, figure_block
from segtune.report.levels import Levels
from segtune.study.stats import mean_ci

PRETRAIN_DIR = "pretrain"  # a trial run's own pre-training run, inside its run directory


def _summary(folder: Path) -> dict[str, Any] | None:
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if "encoder" in summary else None


def pretraining_dir(record: ReportedTrial) -> Path | None:
    """The pre-training run ``record`` fine-tuned from, or None (see the module's order)."""
    candidates = [d / PRETRAIN_DIR for d in record.run_dirs]
    weights = record.params.get("model.encoder_weights") or ((record.config or {}).get("model") or {}).get(
        "encoder_weights")
    if weights:
        candidates.append(Path(weights).parent)
    return next((c for c in candidates if _summary(c) is not None), None)


def _reconstructions(folders: Sequence[Path], titles: Sequence[str]) -> Figure | None:
    shown = [(t, f / "reconstructions.png") for t, f in zip(titles, folders) if (f / "reconstructions.png").is_file()]
    if not shown:
        return None
    fig = Figure(figsize=(min(3.2 * len(shown), 16), 3.6))
    for ax, (title, path) in zip(fig.subplots(1, len(shown), squeeze=False)[0], shown):
        ax.imshow(matplotlib.image.imread(io.BytesIO(path.read_bytes()), format="png"))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def pretraining_blocks(records: Sequence[ReportedTrial], varied: Sequence[Levels], *, objective: str) -> list[Block]:
    """The "Pre-training" section: one row per pre-trained encoder the trials used; [] where none did."""
    by_dir: dict[Path, list[ReportedTrial]] = {}
    for r in records:
        folder = pretraining_dir(r)
        if folder is not None:
            by_dir.setdefault(folder, []).append(r)
    if not by_dir:
        return []
    rows, titles = [], []
    for folder, trials in by_dir.items():
        summary = _summary(folder) or {}
        values = [v for r in trials for v in r.values.values()]
        settings = "; ".join(dict.fromkeys(", ".join(lv.of(r) for lv in varied) for r in trials))
        name = f"{folder.parent.name}/{folder.name}" if folder.name == PRETRAIN_DIR else folder.name
        titles.append(f"{name} (val MSE {summary.get('val', {}).get('mse', float('nan')):.4f})")
        rows.append([name, settings, summary.get("epochs_run"), summary.get("best_epoch"),
                     summary.get("val", {}).get("mse"), summary.get("val", {}).get("mae"),
                     " ".join(str(r.number) for r in trials), mean_ci(values).text() if values else "–"])
    blocks: list[Block] = [Heading("Pre-training"), Table(
        ["pre-training run", "trial settings", "epochs", "best epoch", "val MSE", "val MAE", "trials",
         f"{objective} after fine-tuning"], rows, name="pretraining",
        caption="Each pre-trained encoder the trials started from: its reconstruction errors on the validation "
                "images (at its best epoch) and the objective of the trials fine-tuned from it.")]
    fig = _reconstructions(list(by_dir), titles)
    if fig is not None:
        blocks.append(figure_block(fig, "reconstructions", "The reconstructions of each pre-trained encoder side by "
                                                           "side (validation images, reconstruction, error)."))
    return blocks


__all__ = ["PRETRAIN_DIR", "pretraining_blocks", "pretraining_dir"]
