"""A study's report: the question, the answer and how sure it is, the tables and the figures.

:func:`study_report` reads the trials of a stored study (and their run directories) and writes
one page with: the question (what was varied, on what data, with what budget), the answer (the
best configuration and a paired comparison over the seeds with the next ones), a leaderboard,
the final test metrics, pivot tables of every pair of hyperparameters and their marginals,
importances, the curves laid out by two hyperparameters, and predictions of the best trials;
``trials.csv`` and ``runs.csv`` beside it.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import optuna

from segtune.report.data import ReportedTrial, read_metrics, trial_records
from segtune.report.document import Block, Heading, Table, Text, figure_block, section, write_document
from segtune.report.figures import CurveRun, importance_chart, level_label, marginal_chart, objective_bars
from segtune.report.levels import BASE_LEVEL, Levels, grid_axes, varied_levels
from segtune.report.predictions import prediction_blocks
from segtune.report.run import curve_blocks
from segtune.study.stats import MeanCI, importances, mean_ci, paired_comparison
from segtune.study.records import (REASON_WIDTH, RUNS, SPEC, TRIALS_DIR, RunRecord, Status, maximizes,
                                   objective_name)


def _config_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={level_label(v)}" for k, v in params.items()) or "the base configuration"


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
        Text(f"**Data:** {data_text or 'the base config'}. **Model:** {base.get('model', {}).get('name', '?')}. "
             f"**Loss:** {base.get('loss', {}).get('name', '?')}."),
        Text(f"**Budget:** {base.get('train', {}).get('epochs', '?')} epochs per run, "
             f"{spec.get('repeats', 1)} seed(s) per configuration, method {method.get('name', '?')}; "
             f"{len(records)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}), "
             f"{hours:.2f} hours of training in all."),
        Text(f"**Objective:** {objective_name(study)} ({'maximised' if maximizes(study) else 'minimised'}); "
             f"intervals are 95% t-intervals over the seeds of a configuration."),
    ]


def _answer(study: optuna.Study, records: Sequence[ReportedTrial]) -> list[Block]:
    blocks: list[Block] = [Heading("The answer")]
    done = [r for r in records if r.state == Status.COMPLETE and r.values]
    if not done:
        return blocks + [Text("No trial has completed yet, so there is no best configuration.")]
    best, objective = done[0], objective_name(study)
    blocks.append(Text(f"**Best: trial {best.number}** ({_config_text(best.params)}) with {objective} "
                       f"**{best.ci.text()}** over {best.ci.n} seed(s)."))
    if best.ci.n < 2:
        return blocks + [Text("Each configuration ran with one seed, so the noise between seeds is unknown and "
                              "the ranking may be noise; set `repeats: 3` or more in the study file to know.")]
    comparisons = [c for c in (paired_comparison(best.values, r.values, other_number=r.number,
                                                 maximize=maximizes(study)) for r in done[1:5]) if c]
    if not comparisons:
        return blocks + [Text("No other completed trial shares two seeds with the best, so it cannot be compared.")]
    tied = [c for c in comparisons if c.within_noise]
    if tied:
        numbers = ", ".join(str(c.other) for c in tied)
        who = f"trial {numbers} differs" if len(tied) == 1 else f"trials {numbers} differ"
        blocks.append(Text(f"**No clear winner:** {who} from the best by less than the noise "
                           f"between seeds (the 95% interval of the paired difference contains 0), so the data do "
                           f"not single one out; more seeds (`repeats`) would tell them apart."))
    else:
        c = comparisons[0]
        blocks.append(Text(f"The best beats the runner-up, trial {c.other}, by {c.difference.mean:.4f} "
                           f"(95% interval {c.difference.low:.4f} to {c.difference.high:.4f}) over the same "
                           f"{len(c.seeds)} seeds."))
    rows = [[c.other, len(c.seeds), c.difference.mean, c.difference.low, c.difference.high,
             c.p_value, "within noise" if c.within_noise else "best is better"] for c in comparisons]
    blocks.append(Table(["trial", "shared seeds", "difference", "95% low", "95% high", "p (paired t)", "verdict"],
                        rows, caption=f"The best (trial {best.number}) against the next configurations, seed by "
                                      f"seed; a positive difference favours the best."))
    return blocks


def _leaderboard(study: optuna.Study, records: Sequence[ReportedTrial], varied: Sequence[Levels]) -> list[Block]:
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    header = ["trial"] + paths + [objective_name(study), "95% interval", "seeds", "epochs", "state", "seconds", "reason"]
    rows = []
    for r in records:
        ci = r.ci
        interval = "–" if ci is None or ci.low is None else f"{ci.low:.4f} – {ci.high:.4f}"
        rows.append([r.number] + [level_label(r.params[p]) if p in r.params else BASE_LEVEL for p in paths]
                    + [ci.mean if ci else r.value, interval, len(r.values), r.epochs, r.state, round(r.seconds),
                       r.reason[:REASON_WIDTH]])
    bold = frozenset({(0, len(paths) + 1)}) if records and records[0].state == Status.COMPLETE else frozenset()
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


def _test_table(records: Sequence[ReportedTrial], varied: Sequence[Levels], *, n_rows: int = 10) -> list[Block]:
    """Final test loss and Dice per class of the best completed trials, mean over their seeds."""
    done = [r for r in records if r.state == Status.COMPLETE and r.test][:n_rows]
    classes = list(dict.fromkeys(c for r in done for t in r.test for c in t.get("dice_per_class", {})))[1:]
    if not done or not classes:
        return []

    def mean_of(r: ReportedTrial, get) -> float | None:
        values = [v for v in (get(t) for t in r.test) if v is not None]
        return sum(values) / len(values) if values else None

    rows = [[r.number] + [lv.of(r) for lv in varied]
            + [mean_of(r, lambda t: t.get("loss")), mean_of(r, lambda t: t.get("dice_mean"))]
            + [mean_of(r, lambda t, c=c: t.get("dice_per_class", {}).get(c)) for c in classes] for r in done]
    header = ["trial"] + [lv.path for lv in varied] + ["test loss", "test Dice (mean)"] + [f"Dice {c}" for c in classes]
    return [Heading("Final test metrics"), Table(header, rows, caption="Held-out test split, best weights of each run, mean over seeds: the final "
                                        "loss, the mean foreground Dice and the Dice of each class.")]


def _cell_ci(records: Sequence[ReportedTrial]) -> MeanCI | None:
    values = [v for r in records for v in r.values.values()]
    return mean_ci(values) if values else None


def _pivot(a: Levels, b: Levels, done: Sequence[ReportedTrial], pruned: Sequence[ReportedTrial],
           objective: str) -> Table:
    """Rows ``a``, columns ``b``: the best trial of each cell, else its furthest pruned one; the
    study's best in bold."""
    rows, bold = [], set()
    for i, la in enumerate(a.labels):
        row: list[Any] = [la]
        for j, lb in enumerate(b.labels):
            here = [r for r in done if a.of(r) == la and b.of(r) == lb]  # ranked: the first is the cell's best
            stopped = max((r for r in pruned if a.of(r) == la and b.of(r) == lb),
                          key=lambda r: r.epochs or 0, default=None)
            if here:
                row.append(here[0].ci.text())
            elif stopped is not None:
                row.append(f"pruned at epoch {stopped.epochs}: {stopped.value:.4f}")
            else:
                row.append("–")
            if here and here[0] is done[0]:
                bold.add((i, j + 1))
        rows.append(row)
    return Table([f"{a.path} \\ {b.path}"] + b.labels, rows, bold=frozenset(bold), caption=(
        f"{objective} of the best trial in each cell (mean ± 95% half-width over seeds); a cell whose "
        f"trials were all pruned shows the one that got furthest, with its last reported value; "
        f"rows {a.path}, columns {b.path}."))


def _pivots_and_marginals(study: optuna.Study, records: Sequence[ReportedTrial],
                          varied: Sequence[Levels]) -> list[Block]:
    done = [r for r in records if r.state == Status.COMPLETE and r.values]
    if not done or not varied:
        return []
    objective = objective_name(study)
    blocks: list[Block] = [Heading("Hyperparameters: pairs and marginals")]
    pruned = [r for r in records if r.state == Status.PRUNED and r.value is not None]
    blocks += [_pivot(a, b, done, pruned, objective) for a, b in itertools.combinations(varied, 2)]
    marginals = {}
    for lv in varied:
        pairs = [(label, _cell_ci([r for r in done if lv.of(r) == label])) for label in lv.labels]
        marginals[lv.path] = [(label, ci) for label, ci in pairs if ci is not None]
    fig = marginal_chart(marginals, objective=objective)
    blocks.append(figure_block(fig, "marginals", f"{objective} per value of each hyperparameter: mean and 95% "
                                                 f"interval over every completed run (all seeds) with that value."))
    return blocks


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


def _predictions(records: Sequence[ReportedTrial], *, n_best: int, n_images: int) -> list[Block]:
    best = [r for r in records if r.state == Status.COMPLETE and r.run_dirs][:n_best]
    return section("Predictions of the best trials",
                   prediction_blocks({f"trial {r.number}": r.run_dirs[0] for r in best}, n_images=n_images))


# ----------------------------------------------------------------------------- CSV

def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_trial_tables(study: optuna.Study, records: Sequence[ReportedTrial], out_dir: Path) -> None:
    """``trials.csv`` (one row per trial) and ``runs.csv`` (one row per trial and seed)."""
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
            run_rows.append([r.number, run.seed] + [r.params.get(p, "") for p in paths]
                            + [run.value, run.epochs_run, run.best_epoch, run.test.get("dice_mean"), str(run.run_dir)])
    _write_csv(out_dir / "runs.csv", ["trial", "seed"] + paths + [objective, "epochs_run", "best_epoch",
                                                                  "test_dice_mean", "run_dir"], run_rows)


# ----------------------------------------------------------------------------- public entry points

def _stored_study_dir(study: optuna.Study) -> Path | None:
    """The study directory of the run directories stored on the trials, where it exists here."""
    for t in study.get_trials(deepcopy=False):
        for run in t.user_attrs.get(RUNS, []):
            trials = Path(RunRecord.from_attr(run).run_dir).parent
            if trials.name == TRIALS_DIR and trials.is_dir():
                return trials.parent
    return None


def study_report(study: optuna.Study, out_dir: str | Path | None = None, *, study_dir: str | Path | None = None,
                 layout: Sequence[str] | None = None, n_best: int = 3, n_images: int = 4) -> Path:
    """Write the report of ``study`` into ``out_dir``.

    Args:
        study: a stored Optuna study made by :func:`segtune.study.run_study`.
        out_dir: where report.html, report.md, figures/, trials.csv and runs.csv go; default
            ``<study_dir>/report`` (``./<study name>-report`` when the study directory is unknown).
        study_dir: the study directory holding ``trials/`` (the run directories); default the
            one of the run directories stored on the trials.
        layout: the two hyperparameters (rows, columns) of the curve grids; default the two
            varied ones with the fewest levels.
        n_best: trials shown in the prediction panel.
        n_images: validation images in the prediction panel.

    Returns:
        The path of report.html.

    Example:
        >>> study_report(study, "runs/optim-x-sched/report", layout=["optimizer.name", "scheduler.name"])  # doctest: +SKIP
    """
    study_dir = Path(study_dir) if study_dir is not None else _stored_study_dir(study)
    out_dir = Path(out_dir) if out_dir else (study_dir / "report" if study_dir else Path(f"{study.study_name}-report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    records = trial_records(study, study_dir=study_dir)
    varied = varied_levels(records, space=study.user_attrs.get(SPEC, {}).get("space"))
    rows, cols = grid_axes(varied, layout=layout, records=records)
    blocks: list[Block] = [Heading(f"Study {study.study_name}", 1)]
    blocks += _question(study, records)
    blocks += _answer(study, records)
    blocks += _leaderboard(study, records, varied)
    blocks += _test_table(records, varied)
    blocks += _pivots_and_marginals(study, records, varied)
    blocks += _importance(study)
    blocks += _curves(records, rows, cols)
    blocks += _predictions(records, n_best=n_best, n_images=n_images)
    blocks += [Heading("Data files"), Text("trials.csv: one row per trial; runs.csv: one row per trial and seed; "
                                           "figures/: every figure as PNG.")]
    write_trial_tables(study, records, out_dir)
    return write_document(blocks, out_dir, title=f"Study {study.study_name}")


__all__ = ["study_report", "write_trial_tables"]
