"""A study's report: the question, the answer and how sure it is, the tables and the figures.

:func:`study_report` reads the trials of a stored study (and their run directories) and writes
one page with: the question (what was varied, on what data, with what budget), the answer (the
best configuration, a ranking of the leaders with ties from paired verdicts: :mod:`.verdicts`), a
leaderboard, the final test metrics (with a common test loss if asked) and the leaders' metrics, the
pivots, metrics per cell and averages of the hyperparameters (:mod:`segtune.report.pivots`), the
pre-training section, importances, the curves laid out by two hyperparameters, and predictions (by
setting, of the best trials, the worst cases of the best); ``trials.csv``, ``runs.csv`` and
``tables/`` beside it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import optuna

from segtune.report.cells import class_names, metric_headers, metric_values, trial_runs
from segtune.report.data import ReportedTrial, read_metrics, trial_records
from segtune.report.document import Block, Heading, Table, Text, figure_block, section, write_document
from segtune.report.figures import CurveRun, importance_chart, level_label, objective_bars
from segtune.report.levels import BASE_LEVEL, Levels, grid_axes, varied_levels
from segtune.report.options import ReportOptions
from segtune.report.pivots import pivot_blocks
from segtune.report.predictions import grid_blocks, prediction_blocks, worst_case_blocks
from segtune.report.pretraining import pretraining_blocks
from segtune.report.run import curve_blocks
from segtune.report.test_loss import common_test_losses
from segtune.report.verdicts import answer_blocks, leader_metrics, seeds_text
from segtune.study.stats import importances
from segtune.study.records import (REASON_WIDTH, RUNS, SPEC, TRIALS_DIR, RunRecord, Status, best_of, maximizes,
                                   objective_name, runs_cell)


def _values_text(values: Any) -> str:
    """A space entry in words: a list, a range, or a conditional entry with its cases."""
    if isinstance(values, list):
        return "∈ {" + ", ".join(level_label(v) for v in values) + "}"
    if isinstance(values, dict) and "cases" in values:
        cases = "; ".join(f"{case} {_values_text(v)}" for case, v in values["cases"].items())
        return f"per {values.get('when')} ({cases})"
    if isinstance(values, dict) and "low" in values:
        kind = " log scale" if values.get("log") else (f" step {values['step']}" if values.get("step") else "")
        return f"from {level_label(values['low'])} to {level_label(values['high'])}{kind}"
    return json.dumps(values)


def _base_text(spec: dict[str, Any], path: str) -> str:
    """A setting of the base config in the header; a varied one says so and names its base value."""
    section_name, key = path.split(".", 1)
    value = spec.get("base", {}).get(section_name, {}).get(key, "?")
    return f"varied (base {value})" if path in spec.get("space", {}) else str(value)


def _question(study: optuna.Study, records: Sequence[ReportedTrial]) -> list[Block]:
    spec = study.user_attrs.get(SPEC, {})
    base = spec.get("base", {})
    data = base.get("data", {})
    data_text = ", ".join(f"{k}={v}" for k, v in data.items() if k != "options" and not isinstance(v, dict))
    varied = [f"{p} {_values_text(v)}" for p, v in spec.get("space", {}).items()]
    method = spec.get("method", {})
    counts = {s: sum(r.state == s for r in records) for s in Status}
    hours = sum(r.seconds for r in records) / 3600
    return [
        Heading("The question"),
        Text("**Varied:** " + ("; ".join(varied) or "nothing") + "."),
        Text(f"**Data:** {data_text or 'the base config'}. **Model:** {_base_text(spec, 'model.name')}. "
             f"**Loss:** {_base_text(spec, 'loss.name')}."),
        Text(f"**Budget:** {base.get('train', {}).get('epochs', '?')} epochs per run, "
             f"{seeds_text(spec)} per configuration, method {method.get('name', '?')}; "
             f"{len(records)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}), "
             f"{hours:.2f} hours of training in all."),
        Text(f"**Objective:** {objective_name(study)} ({'maximised' if maximizes(study) else 'minimised'}); "
             f"intervals are 95% t-intervals over the seeds of a configuration."),
    ]


def _leaderboard(study: optuna.Study, records: Sequence[ReportedTrial], varied: Sequence[Levels],
                 best: ReportedTrial | None) -> list[Block]:
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    header = ["trial"] + paths + [objective_name(study), "95% interval", "runs", "epochs", "state", "seconds", "reason"]
    rows = []
    for r in records:
        ci = r.ci
        interval = "–" if ci is None or ci.low is None else f"{ci.low:.4f} – {ci.high:.4f}"
        rows.append([r.number] + [level_label(r.params[p]) if p in r.params else BASE_LEVEL for p in paths]
                    + [ci.mean if ci else r.value, interval, runs_cell(r), r.epochs, r.state, round(r.seconds),
                       r.reason[:REASON_WIDTH]])
    bold = frozenset({(0, len(paths) + 1)}) if records and records[0] is best else frozenset()
    blocks: list[Block] = [Heading("Leaderboard"), Table(header, rows, bold=bold, caption=(
        "All trials: completed ones best first (mean over seeds), then running ones (they may still complete), "
        "pruned ones, failed ones with the reason, trials stopped by Ctrl-C and trials whose worker died (both run "
        "again on resume); each unfinished one by its last reported value."))]
    done = [r for r in records if r.state == Status.COMPLETE and r.values][:30]
    if done:
        labels = [f"#{r.number} " + " ".join(lv.of(r) for lv in varied) for r in done]
        fig = objective_bars(labels, [r.ci for r in done], objective=objective_name(study))
        blocks.append(figure_block(fig, "leaderboard", f"{objective_name(study)} of the completed trials, mean and "
                                                       f"95% interval over seeds."))
    return blocks


def _test_table(records: Sequence[ReportedTrial], varied: Sequence[Levels], *, test_losses: dict[Path, float],
                test_loss: str | None, n_rows: int = 10) -> list[Block]:
    """Final test losses and Dice per class of the best completed trials, mean over their seeds."""
    done = [r for r in records if r.state == Status.COMPLETE and r.test][:n_rows]
    classes = class_names(done)
    if not done or not classes:
        return []
    names = ["test_loss"] + (["test_common_loss"] if test_loss or any("dice_loss" in t for r in done for t in r.test)
                             else []) + ["test_dice", "test_classes"]
    rows = [[r.number] + [lv.of(r) for lv in varied] + metric_values(trial_runs(r, test_losses=test_losses), names,
                                                                     classes) for r in done]
    common = f"; test loss (common): the {test_loss or 'dice'} loss of every trial's predictions, so it compares " \
             f"across losses" if "test_common_loss" in names else ""
    return [Heading("Final test metrics"), Table(
        ["trial"] + [lv.path for lv in varied] + metric_headers(names, classes), rows, name="test",
        caption=f"Held-out test split, best weights of each run, mean over seeds: the run's own loss (its training "
                f"loss, not comparable across losses){common}, the mean foreground Dice and the Dice of each class.")]


def _importance(study: optuna.Study) -> list[Block]:
    blocks: list[Block] = [Heading("Hyperparameter importance")]
    result, reason = importances(study)
    if reason:
        return blocks + [Text(reason)]
    params = sorted({p for imp in result.values() for p in imp}, key=lambda p: -next(iter(result.values()))[p])
    rows = [[p] + [imp.get(p, 0.0) for imp in result.values()] for p in params]
    blocks.append(Table(["parameter"] + list(result), rows, caption=(
        "Share of the objective's variance explained (Optuna's fANOVA and mean-decrease-in-impurity "
        "evaluators, completed trials, parameters every trial sampled).")))
    blocks.append(figure_block(importance_chart(result), "importance", "Hyperparameter importance."))
    return blocks


def _curves(records: Sequence[ReportedTrial], rows: Levels | None, cols: Levels | None) -> list[Block]:
    runs = [CurveRun(rows.of(r) if rows else "", cols.of(r) if cols else "", r.number, k, read_metrics(d),
                     note="" if r.state == Status.COMPLETE else r.state)
            for r in records for k, d in enumerate(r.run_dirs)]
    runs = [run for run in runs if run.history]
    if not runs:
        return [Heading("Curves"), Text("No run directory with metrics.csv was found for this study's trials.")]
    return [Heading("Curves")] + curve_blocks(runs, rows=rows, cols=cols)


def _predictions(records: Sequence[ReportedTrial], rows: Levels | None, cols: Levels | None,
                 options: ReportOptions, best: ReportedTrial | None) -> list[Block]:
    """The best trial of every (rows, cols) cell, the best trials side by side, the best one's worst cases
    (none where the study has no best: a race that ended with no configuration left)."""
    done = [r for r in records if r.state == Status.COMPLETE and r.run_dirs]
    shown = dict(n_images=options.n_images, images=options.images)
    blocks: list[Block] = []
    if cols is not None:
        cells: dict[tuple[str, str], Path] = {}
        for r in done:  # ranked: the first of a cell is its best
            row = f"{rows.path} = {rows.of(r)}" if rows else ""
            cells.setdefault((row, f"{cols.path} = {cols.of(r)}"), r.run_dirs[0])
        where = f"rows {rows.path}, columns {cols.path}" if rows else f"columns {cols.path}"
        blocks += section("Predictions by setting", grid_blocks(cells, name="prediction-grid", **shown,
                                                               what=f"the best trial of each cell ({where})"))
    title = "Predictions of the best trials" if best is not None else \
        "Predictions of the top-ranked trials (the study names no best)"
    blocks += section(title, prediction_blocks({f"trial {r.number}": r.run_dirs[0] for r in done[:options.n_best]},
                                               **shown))
    if best is not None and best.run_dirs:
        blocks += section(f"Worst cases of the best trial ({best.number})",
                          worst_case_blocks(f"trial {best.number}", best.run_dirs[0], n_images=options.n_images))
    return blocks


# ----------------------------------------------------------------------------- CSV

def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_trial_tables(study: optuna.Study, records: Sequence[ReportedTrial], out_dir: Path) -> None:
    """``trials.csv`` (one row per trial) and ``runs.csv`` (one row per run: trial, seed and, with ``cv``,
    fold; the fold cell is empty without cross-validation)."""
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    objective = objective_name(study)
    rows = []
    for r in records:
        ci = r.ci
        rows.append([r.number, r.state] + [r.params.get(p, "") for p in paths]
                    + [ci.mean if ci else r.value, ci.low if ci else None, ci.high if ci else None, len(r.values),
                       r.epochs, round(r.seconds, 1), r.reason])
    _write_csv(out_dir / "trials.csv", ["trial", "state"] + paths + [objective, "ci95_low", "ci95_high", "seeds",
                                                                      "epochs", "seconds", "reason"], rows)
    run_rows = []
    for r in records:
        for run in r.runs:
            run_rows.append([r.number, run.seed, run.fold] + [r.params.get(p, "") for p in paths]
                            + [run.value, run.epochs_run, run.best_epoch, run.test.get("dice_mean"), str(run.run_dir)])
    _write_csv(out_dir / "runs.csv", ["trial", "seed", "fold"] + paths + [objective, "epochs_run", "best_epoch",
                                                                  "test_dice_mean", "run_dir"], run_rows)


# ----------------------------------------------------------------------------- public entry points

_FILES_TEXT = ("trials.csv: one row per trial; runs.csv: one row per run (trial, seed, cross-validation fold); "
               "figures/: every figure as PNG "
               "(and PDF/SVG with --format pdf svg); tables/: every table as CSV and as a LaTeX booktabs tabular.")

def _stored_study_dir(study: optuna.Study) -> Path | None:
    """The study directory of the run directories stored on the trials, where it exists here."""
    for t in study.get_trials(deepcopy=False):
        for run in t.user_attrs.get(RUNS, []):
            trials = Path(RunRecord.from_attr(run).run_dir).parent
            if trials.name == TRIALS_DIR and trials.is_dir():
                return trials.parent
    return None


def study_report(study: optuna.Study, out_dir: str | Path | None = None, *, study_dir: str | Path | None = None,
                 layout: Sequence[str] | None = None, options: ReportOptions | None = None) -> Path:
    """Write the report of ``study`` into ``out_dir``.

    Args:
        study: a stored Optuna study made by :func:`segtune.study.run_study`.
        out_dir: where report.html, report.md, figures/, trials.csv and runs.csv go; default
            ``<study_dir>/report`` (``./<study name>-report`` when the study directory is unknown).
        study_dir: the study directory holding ``trials/`` (the run directories); default the
            one of the run directories stored on the trials.
        layout: the two hyperparameters (rows, columns) of the curve grids and the prediction
            grid (the same as ``options.layout``); default the pair that fills the grid best.
        options: what else to show and write (:class:`segtune.report.options.ReportOptions`).

    Returns:
        The path of report.html.

    Example:
        >>> study_report(study, "runs/optim-x-sched/report", layout=["optimizer.name", "scheduler.name"])  # doctest: +SKIP
    """
    study_dir = Path(study_dir) if study_dir is not None else _stored_study_dir(study)
    out_dir = Path(out_dir) if out_dir else (study_dir / "report" if study_dir else Path(f"{study.study_name}-report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    options = options or ReportOptions(layout=layout)
    records = trial_records(study, study_dir=study_dir)
    space = study.user_attrs.get(SPEC, {}).get("space")
    varied = varied_levels(records, space=space)
    rows, cols = grid_axes(varied, layout=layout or options.layout, records=records)
    test_losses = common_test_losses(records, options.test_loss) if options.test_loss else {}
    blocks: list[Block] = [Heading(f"Study {study.study_name}", 1)]
    blocks += _question(study, records)
    blocks += answer_blocks(study, records)
    best = best_of(study, records)
    blocks += _leaderboard(study, records, varied, best)
    blocks += _test_table(records, varied, test_losses=test_losses, test_loss=options.test_loss)
    blocks += leader_metrics(records)
    blocks += pivot_blocks(records, varied, objective=objective_name(study), space=space, metrics=options.metrics,
                           test_losses=test_losses, best=best)
    blocks += pretraining_blocks(records, varied, objective=objective_name(study))
    blocks += _importance(study)
    blocks += _curves(records, rows, cols)
    blocks += _predictions(records, rows, cols, options, best)
    blocks += [Heading("Data files"), Text(_FILES_TEXT)]
    write_trial_tables(study, records, out_dir)
    return write_document(blocks, out_dir, title=f"Study {study.study_name}", formats=options.formats)


__all__ = ["study_report", "write_trial_tables"]
