"""One run's report: its configuration, results, curves and pictures.

A run directory holds a segmentation run (``segtune train``) or an encoder pre-training run
(``segtune pretrain``: its summary names the encoder file, its metrics are reconstruction
errors). The run's kind picks, from the table ``_KINDS``, what its Results, Curves and
pictures sections hold, so :func:`run_report` is the same page for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from segtune.report.data import read_run
from segtune.report.document import Block, Figure, Heading, Table, Text, figure_block, section, write_document
from segtune.report.export import DEFAULT_FORMATS
from segtune.report.figures import CurveRun, curve_grid
from segtune.report.levels import Levels
from segtune.report.predictions import prediction_blocks
from segtune.training.metrics import dice_table_rows

_Metrics = list[dict[str, float]]  # metrics.csv, one row per epoch
_SECTIONS = ("model", "loss", "optimizer", "scheduler", "augment", "data", "train")  # of the config table


def curve_blocks(runs: list[CurveRun], *, rows: Levels | None, cols: Levels | None) -> list[Block]:
    """The loss, Dice and learning-rate grids of ``runs``, laid out by ``rows`` x ``cols``.

    Args:
        runs: the runs' histories, each placed at its row and column label.
        rows: the hyperparameter of the grid's rows, or None for one row.
        cols: the hyperparameter of its columns, or None for one column.

    Returns:
        Three figures, named ``loss``, ``dice`` and ``lr``.
    """
    row_labels, col_labels = (rows.labels if rows else [""]), (cols.labels if cols else [""])
    layout = dict(rows=row_labels, cols=col_labels, row_title=rows.path if rows else "",
                  col_title=cols.path if cols else "", legend=len({r.trial for r in runs}) > 1)
    where = f"; rows {rows.path}, columns {cols.path}" if rows and cols else (f"; columns {cols.path}" if cols else "")
    where += "; fainter lines are further seeds" if any(r.repeat for r in runs) else ""
    return [
        figure_block(curve_grid(runs, keys=["train_loss", "val_loss"], ylabel="loss", **layout), "loss",
                     f"Training (solid) and validation (dashed) loss per epoch{where}."),
        figure_block(curve_grid(runs, keys=["val_dice_mean"], ylabel="val Dice (mean)", **layout), "dice",
                     f"Validation mean Dice per epoch{where}."),
        figure_block(curve_grid(runs, keys=["lr"], ylabel="learning rate", log=True, **layout), "lr",
                     f"Learning rate per epoch{where}."),
    ]


# ----------------------------------------------------------------------------- a segmentation run

def _segmentation_results(summary: dict[str, Any], config: dict[str, Any]) -> list[Block]:
    splits = [s for s in ("val", "test") if s in summary]
    rows = dice_table_rows({s: summary[s] for s in splits}, summary["class_names"])
    return [Text(f"Best epoch {summary['best_epoch']} of {summary['epochs_run']}"
                 f"{' (stopped early)' if summary.get('stopped_early') else ''}, "
                 f"{summary['seconds']:.0f} s, {summary.get('n_parameters', 0) / 1e6:.2f} M parameters."),
            Table(["class"] + [f"{s} Dice" for s in splits] + [f"{s} IoU" for s in splits], rows)]


def _segmentation_curves(metrics: _Metrics) -> list[Block]:
    return curve_blocks([CurveRun("", "", 0, 0, metrics)], rows=None, cols=None)


def _predictions(run_dir: Path, n_images: int) -> list[Block]:
    return prediction_blocks({"prediction": run_dir}, n_images=n_images)


# ----------------------------------------------------------------------------- a pre-training run

def _pretraining_results(summary: dict[str, Any], config: dict[str, Any]) -> list[Block]:
    return [Text(f"Autoencoder pre-training of the {summary['model']} encoder. Best epoch "
                 f"{summary['best_epoch']} of {summary['epochs_run']}, {summary['seconds']:.0f} s: validation "
                 f"MSE {summary['val']['mse']:.4f}, MAE {summary['val']['mae']:.4f} (images normalised with "
                 f"data.normalize={config.get('data', {}).get('normalize')}). Encoder weights: "
                 f"`{summary['encoder']}`; use them with `--set model.encoder_weights=PATH`.")]


def _mse_curves(metrics: _Metrics) -> list[Block]:
    layout = dict(rows=[""], cols=[""], row_title="", col_title="", legend=False)
    fig = curve_grid([CurveRun("", "", 0, 0, metrics)], keys=["train_mse", "val_mse"], ylabel="MSE", **layout)
    return [figure_block(fig, "mse", "Training (solid) and validation (dashed) reconstruction MSE per epoch.")]


def _reconstructions(run_dir: Path, n_images: int) -> list[Block]:
    path = run_dir / "reconstructions.png"  # drawn by pretrain() itself, with its own number of images
    if not path.is_file():
        return []
    return [Figure("reconstructions", path.read_bytes(), "Validation images, their reconstructions and the "
                                                         "absolute error.")]


# ----------------------------------------------------------------------------- the kinds of run

@dataclass(frozen=True)
class _RunKind:
    """What the report of one kind of run shows beyond the configuration table."""

    title: str  # the page title's first word
    results: Callable[[dict[str, Any], dict[str, Any]], list[Block]]  # (summary, config) -> Results
    curves: Callable[[_Metrics], list[Block]]  # metrics rows (at least one) -> figures
    pictures_heading: str
    pictures: Callable[[Path, int], list[Block]]  # (run dir, n_images) -> figures, [] for none


_KINDS = {
    "segmentation": _RunKind("Run", _segmentation_results, _segmentation_curves, "Predictions", _predictions),
    "pretraining": _RunKind("Pre-training", _pretraining_results, _mse_curves, "Reconstructions", _reconstructions),
}


def _kind_of(summary: dict[str, Any] | None, metrics: _Metrics) -> str:
    """A pre-training run's summary names its encoder; before it has one, its metrics show the MSE."""
    if summary is not None:
        return "pretraining" if "encoder" in summary else "segmentation"
    return "pretraining" if metrics and "train_mse" in metrics[0] else "segmentation"


def _config_table(config: dict[str, Any]) -> Table:
    return Table(["section", "name", "settings"], [
        [s, config[s].get("name", ""), ", ".join(f"{k}={v}" for k, v in config[s].items() if k != "name")]
        for s in _SECTIONS if isinstance(config.get(s), dict)])


def run_report(run_dir: str | Path, out_dir: str | Path, *, n_images: int = 4,
               formats: Sequence[str] = DEFAULT_FORMATS) -> Path:
    """Write the report of one run directory: its configuration, results, curves and predictions
    (for a pre-training run: reconstruction errors, their curves and the reconstructions).

    Args:
        run_dir: the run directory (config.yaml; summary.json, metrics.csv and best.pt where written).
        out_dir: where report.html, report.md and figures/ go.
        n_images: validation images in the prediction panel.
        formats: the export formats (:data:`segtune.report.export.FORMATS`).

    Returns:
        The path of report.html.

    Raises:
        ConfigError: ``run_dir`` holds no config.yaml, or an unknown format.

    Example:
        >>> run_report("runs/tiny-20250101-120000", "runs/tiny-20250101-120000/report")  # doctest: +SKIP
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    config, summary, metrics = run["config"], run["summary"], run["metrics"]
    kind = _KINDS[_kind_of(summary, metrics)]
    name = config.get("name", run_dir.name)
    blocks: list[Block] = [Heading(f"Run {name}", 1), Heading("Configuration"), _config_table(config),
                           Heading("Results")]
    if summary is None:
        blocks.append(Text("The run has not finished (no summary.json): curves only."))
    else:
        blocks += kind.results(summary, config)
    blocks += section("Curves", kind.curves(metrics) if metrics else [])
    blocks += section(kind.pictures_heading, kind.pictures(run_dir, n_images))
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_document(blocks, out_dir, title=f"{kind.title} {name}", formats=formats)


__all__ = ["curve_blocks", "run_report"]
