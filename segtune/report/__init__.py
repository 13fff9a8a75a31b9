"""Study and run reports: the tables and figures of a paper, as HTML and Markdown.

:func:`write_report` reads a study directory (its ``study.db``), a shared storage
(``storage=URL, study_name=NAME``) or a single run directory and writes into ``out``
(default ``<dir>/report``)::

    report.html      one self-contained page, figures embedded (readable offline)
    report.md        the same in Markdown, with figures/*.png beside it
    trials.csv       one row per trial: parameters, objective mean and 95% interval, state, time
    runs.csv         one row per run (trial x seed): objective, epochs, test Dice, run directory

A study report answers its question: what was varied, the best configuration and how sure we
are of it (a paired comparison over the seeds says when the top configurations differ by less
than the noise), a leaderboard, pivot tables and marginal charts, importances, curves laid out
by two hyperparameters, and predictions of the best trials.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna

from segtune.errors import ConfigError, DataError
from segtune.report.data import TrialRecord, load_report_study, read_metrics, read_run, trial_records
from segtune.report.document import Block, Figure, Heading, Table, Text, figure_block, write_document
from segtune.report.figures import (CurveRun, curve_grid, importance_chart, level_label, marginal_chart,
                                    objective_bars, prediction_panel)
from segtune.report.stats import MeanCI, importances, mean_ci, paired_comparison

_MAX_LEVELS = 6  # a numeric hyperparameter with more distinct values is binned for tables and grids
_BASE_LEVEL = "(base)"  # a conditional hyperparameter a trial did not sample


# ----------------------------------------------------------------------------- levels of a hyperparameter

class Levels:
    """The levels of one hyperparameter across trials: its values, or quantile bins of a numeric one."""

    def __init__(self, path: str, records: Sequence[TrialRecord], *, order: Sequence[Any] = ()) -> None:
        self.path = path
        values = [r.params[path] for r in records if path in r.params]
        rank = {json.dumps(v, sort_keys=True): k for k, v in enumerate(order)}
        distinct = sorted({json.dumps(v, sort_keys=True) for v in values}, key=lambda d: (rank.get(d, len(rank)), d))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        self.edges: list[float] | None = None
        if numeric and len(distinct) > _MAX_LEVELS:
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
        self.labels = labels + ([_BASE_LEVEL] if any(path not in r.params for r in records) else [])

    def of(self, record: TrialRecord) -> str:
        if self.path not in record.params:
            return _BASE_LEVEL
        value = record.params[self.path]
        if self.edges is None:
            return level_label(value)
        k = int(np.searchsorted(self.edges, float(value), side="right")) - 1
        return self.labels[min(max(k, 0), len(self.edges) - 2)]


def varied_levels(records: Sequence[TrialRecord], space: dict[str, Any] | None = None) -> list[Levels]:
    """The hyperparameters that took more than one level, in the order of first appearance;
    the values of a list in the study's ``space`` keep the list's order."""
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    space = space or {}
    levels = [Levels(p, records, order=space[p] if isinstance(space.get(p), list) else ()) for p in paths]
    return [lv for lv in levels if len(lv.labels) > 1]


# ----------------------------------------------------------------------------- study sections

def _objective(study: optuna.Study) -> str:
    return study.user_attrs.get("spec", {}).get("objective", "objective")


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


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


def _question(study: optuna.Study, records: Sequence[TrialRecord]) -> list[Block]:
    spec = study.user_attrs.get("spec", {})
    base = spec.get("base", {})
    data = base.get("data", {})
    data_text = ", ".join(f"{k}={v}" for k, v in data.items() if k != "options" and not isinstance(v, dict))
    varied = [f"{p} {_values_text(v)}" for p, v in spec.get("space", {}).items()]
    method = spec.get("method", {})
    counts = {s: sum(r.state == s for r in records) for s in ("complete", "pruned", "failed", "died", "running")}
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
        Text(f"**Objective:** {_objective(study)} ({'maximised' if _maximize(study) else 'minimised'}); "
             f"intervals are 95% t-intervals over the seeds of a configuration."),
    ]


def _answer(study: optuna.Study, records: Sequence[TrialRecord]) -> list[Block]:
    blocks: list[Block] = [Heading("The answer")]
    done = [r for r in records if r.state == "complete" and r.values]
    if not done:
        return blocks + [Text("No trial has completed yet, so there is no best configuration.")]
    best, objective = done[0], _objective(study)
    blocks.append(Text(f"**Best: trial {best.number}** ({_config_text(best.params)}) with {objective} "
                       f"**{best.ci.text()}** over {best.ci.n} seed(s)."))
    if best.ci.n < 2:
        return blocks + [Text("Each configuration ran with one seed, so the noise between seeds is unknown and "
                              "the ranking may be noise; set `repeats: 3` or more in the study file to know.")]
    comparisons = [c for c in (paired_comparison(best.values, r.values, other_number=r.number,
                                                 maximize=_maximize(study)) for r in done[1:5]) if c]
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


def _leaderboard(study: optuna.Study, records: Sequence[TrialRecord], varied: Sequence[Levels]) -> list[Block]:
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    header = ["trial"] + paths + [_objective(study), "95% interval", "seeds", "epochs", "state", "seconds", "reason"]
    rows = []
    for r in records:
        ci = r.ci
        interval = "–" if ci is None or ci.low is None else f"{ci.low:.4f} – {ci.high:.4f}"
        rows.append([r.number] + [level_label(r.params[p]) if p in r.params else _BASE_LEVEL for p in paths]
                    + [ci.mean if ci else r.value, interval, len(r.values), r.epochs, r.state, round(r.seconds),
                       r.reason[:80]])
    bold = frozenset({(0, len(paths) + 1)}) if records and records[0].state == "complete" else frozenset()
    blocks: list[Block] = [Heading("Leaderboard"), Table(header, rows, bold=bold, caption=(
        "All trials: completed ones best first (mean over seeds), then pruned ones (their last reported value) "
        "and failed ones with the reason."))]
    done = [r for r in records if r.state == "complete" and r.values][:30]
    if done:
        labels = [f"#{r.number} " + " ".join(lv.of(r) for lv in varied) for r in done]
        fig = objective_bars(labels, [r.ci for r in done], objective=_objective(study))
        blocks.append(figure_block(fig, "leaderboard", f"{_objective(study)} of the completed trials, mean and "
                                                       f"95% interval over seeds."))
    return blocks


def _test_table(records: Sequence[TrialRecord], varied: Sequence[Levels], *, n_rows: int = 10) -> list[Block]:
    """Final test loss and Dice per class of the best completed trials, mean over their seeds."""
    done = [r for r in records if r.state == "complete" and r.test][:n_rows]
    classes = list(dict.fromkeys(c for r in done for t in r.test for c in t.get("dice_per_class", {})))[1:]
    if not done or not classes:
        return []

    def mean_of(r: TrialRecord, get) -> float | None:
        values = [v for v in (get(t) for t in r.test) if v is not None]
        return sum(values) / len(values) if values else None

    rows = [[r.number] + [lv.of(r) for lv in varied]
            + [mean_of(r, lambda t: t.get("loss")), mean_of(r, lambda t: t.get("dice_mean"))]
            + [mean_of(r, lambda t, c=c: t.get("dice_per_class", {}).get(c)) for c in classes] for r in done]
    header = ["trial"] + [lv.path for lv in varied] + ["test loss", "test Dice (mean)"] + [f"Dice {c}" for c in classes]
    return [Heading("Final test metrics"), Table(header, rows, caption="Held-out test split, best weights of each run, mean over seeds: the final "
                                        "loss, the mean foreground Dice and the Dice of each class.")]


def _cell_ci(records: Sequence[TrialRecord]) -> MeanCI | None:
    values = [v for r in records for v in r.values.values()]
    return mean_ci(values) if values else None


def _pivot(a: Levels, b: Levels, done: Sequence[TrialRecord], pruned: Sequence[TrialRecord],
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


def _pivots_and_marginals(study: optuna.Study, records: Sequence[TrialRecord],
                          varied: Sequence[Levels]) -> list[Block]:
    done = [r for r in records if r.state == "complete" and r.values]
    if not done or not varied:
        return []
    objective = _objective(study)
    blocks: list[Block] = [Heading("Hyperparameters: pairs and marginals")]
    pruned = [r for r in records if r.state == "pruned" and r.value is not None]
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


def grid_axes(varied: Sequence[Levels], layout: Sequence[str] | None,
              records: Sequence[TrialRecord] = ()) -> tuple[Levels | None, Levels | None]:
    """The (rows, columns) hyperparameters of the curve grids: ``layout`` (one name: columns only),
    else the two varied ones whose grid ``records`` fill best (a learning rate given per optimizer
    leaves most optimizer x lr cells empty), of those the pair with the fewest levels.

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


def curve_blocks(runs: list[CurveRun], *, rows: Levels | None, cols: Levels | None) -> list[Block]:
    """The loss, Dice and learning-rate grids of ``runs``, laid out by ``rows`` x ``cols``."""
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


def _curves(records: Sequence[TrialRecord], rows: Levels | None, cols: Levels | None) -> list[Block]:
    runs = [CurveRun(rows.of(r) if rows else "", cols.of(r) if cols else "", r.number, k, read_metrics(d),
                     note="" if r.state == "complete" else r.state)
            for r in records for k, d in enumerate(r.run_dirs)]
    runs = [run for run in runs if run.history]
    if not runs:
        return [Heading("Curves"), Text("No run directory with metrics.csv was found for this study's trials.")]
    return [Heading("Curves")] + curve_blocks(runs, rows=rows, cols=cols)


# ----------------------------------------------------------------------------- predictions

def _data_key(config: dict[str, Any]) -> str:
    return json.dumps({"data": config.get("data"), "seed": config.get("seed")}, sort_keys=True)


def _fixed_indices(masks: np.ndarray, n_images: int) -> list[int]:
    """Evenly spaced validation images, among those with some foreground when there are enough."""
    candidates = [i for i in range(len(masks)) if masks[i].any()]
    if len(candidates) < n_images:
        candidates = list(range(len(masks)))
    picks = np.linspace(0, len(candidates) - 1, min(n_images, len(candidates))).round().astype(int)
    return [candidates[k] for k in sorted(set(picks.tolist()))]


def prediction_blocks(run_dirs: dict[str, Path], *, n_images: int = 4, name: str = "predictions") -> list[Block]:
    """Panels of validation image / ground truth / prediction of each run (its ``best.pt``).

    Runs on the same data share one panel (one column each); runs on different data get one
    panel per data setting.

    Args:
        run_dirs: column title -> run directory holding ``config.yaml`` and ``best.pt``.
        n_images: validation images per panel, the same fixed ones for every run.
        name: the figure name (file stem).
    """
    from segtune.training.checkpoint import load_checkpoint, model_from_checkpoint
    from segtune.config import build_config
    from segtune.training.evaluate import predict_labels
    from segtune.training.runtime import load_data

    groups: dict[str, dict[str, dict]] = {}
    configs = {}
    blocks: list[Block] = []
    for title, run_dir in run_dirs.items():
        if (run_dir / "best.pt").is_file() and (run_dir / "config.yaml").is_file():
            try:  # a damaged best.pt leaves its run out, with a line saying so, and spoils nothing else
                checkpoint = load_checkpoint(run_dir / "best.pt")
            except DataError as err:
                print(f"warning: {err}", file=sys.stderr)
                blocks.append(Text(f"No predictions of {title}: {err}."))
                continue
            configs[title] = read_run(run_dir)["config"]
            groups.setdefault(_data_key(configs[title]), {})[title] = checkpoint
    for g, group in enumerate(groups.values()):
        data = load_data(build_config(configs[next(iter(group))]))
        masks = data.val.masks.numpy()
        index = _fixed_indices(masks, n_images)
        images = data.val.images[index]
        predictions = {title: predict_labels(model_from_checkpoint(ckpt), images).numpy()
                       for title, ckpt in group.items()}
        fig = prediction_panel(images.numpy(), masks[index], predictions, class_names=data.class_names)
        blocks.append(figure_block(fig, f"{name}{g or ''}", f"Validation images {index}: image, ground truth and "
                                                            f"the prediction of {', '.join(group)} (best.pt)."))
    return blocks


def _predictions(records: Sequence[TrialRecord], *, n_best: int, n_images: int) -> list[Block]:
    best = [r for r in records if r.state == "complete" and r.run_dirs][:n_best]
    blocks = prediction_blocks({f"trial {r.number}": r.run_dirs[0] for r in best}, n_images=n_images)
    if not blocks:
        return []
    return [Heading("Predictions of the best trials")] + blocks


# ----------------------------------------------------------------------------- CSV

def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_trial_tables(study: optuna.Study, records: Sequence[TrialRecord], out_dir: Path) -> None:
    """``trials.csv`` (one row per trial) and ``runs.csv`` (one row per trial and seed)."""
    paths = list(dict.fromkeys(p for r in records for p in r.params))
    objective = _objective(study)
    rows = []
    for r in records:
        ci = r.ci
        rows.append([r.number, r.state] + [r.params.get(p, "") for p in paths]
                    + [ci.mean if ci else r.value, ci.low if ci else None, ci.high if ci else None, len(r.values),
                       r.epochs, round(r.seconds, 1), r.reason])
    _write_csv(out_dir / "trials.csv", ["trial", "state"] + paths + [objective, "ci95_low", "ci95_high", "seeds",
                                                                      "epochs", "seconds", "reason"], rows)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    run_rows = []
    for r in records:
        for run in trials[r.number].user_attrs.get("runs", []):
            run_rows.append([r.number, run["seed"]] + [r.params.get(p, "") for p in paths]
                            + [run["value"], run["epochs_run"], run["best_epoch"],
                               run.get("test", {}).get("dice_mean"), run["run_dir"]])
    _write_csv(out_dir / "runs.csv", ["trial", "seed"] + paths + [objective, "epochs_run", "best_epoch",
                                                                  "test_dice_mean", "run_dir"], run_rows)


# ----------------------------------------------------------------------------- public entry points

def _stored_study_dir(study: optuna.Study) -> Path | None:
    """The study directory of the run directories stored on the trials, where it exists here."""
    for t in study.get_trials(deepcopy=False):
        for run in t.user_attrs.get("runs", []):
            trials = Path(run["run_dir"]).parent
            if trials.name == "trials" and trials.is_dir():
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
    varied = varied_levels(records, study.user_attrs.get("spec", {}).get("space"))
    rows, cols = grid_axes(varied, layout, records)
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


def run_report(run_dir: str | Path, out_dir: str | Path, *, n_images: int = 4) -> Path:
    """Write the report of one training run: its configuration, results, curves and predictions.

    Returns:
        The path of report.html.

    Raises:
        ConfigError: ``run_dir`` holds no config.yaml.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    config, summary = run["config"], run["summary"]
    blocks: list[Block] = [Heading(f"Run {config.get('name', run_dir.name)}", 1), Heading("Configuration")]
    sections = ("model", "loss", "optimizer", "scheduler", "augment", "data", "train")
    blocks.append(Table(["section", "name", "settings"], [
        [s, config[s].get("name", ""), ", ".join(f"{k}={v}" for k, v in config[s].items() if k != "name")]
        for s in sections if isinstance(config.get(s), dict)]))
    blocks.append(Heading("Results"))
    if summary is None:
        blocks.append(Text("The run has not finished (no summary.json): curves only."))
    elif "encoder" in summary:  # a pre-training run (segtune pretrain): reconstruction, no classes
        return _pretrain_report(run_dir, out_dir, blocks, summary, run["metrics"], config)
    else:
        names = summary["class_names"][1:]
        splits = [s for s in ("val", "test") if s in summary]
        rows = [[n] + [summary[s]["dice_per_class"][n] for s in splits] + [summary[s]["iou_per_class"][n]
                                                                          for s in splits] for n in names]
        rows.append(["mean (foreground)"] + [summary[s]["dice_mean"] for s in splits]
                    + [summary[s]["iou_mean"] for s in splits])
        blocks.append(Text(f"Best epoch {summary['best_epoch']} of {summary['epochs_run']}"
                           f"{' (stopped early)' if summary.get('stopped_early') else ''}, "
                           f"{summary['seconds']:.0f} s, {summary.get('n_parameters', 0) / 1e6:.2f} M parameters."))
        blocks.append(Table(["class"] + [f"{s} Dice" for s in splits] + [f"{s} IoU" for s in splits], rows))
    if run["metrics"]:
        blocks += [Heading("Curves")] + curve_blocks([CurveRun("", "", 0, 0, run["metrics"])], rows=None, cols=None)
    predictions = prediction_blocks({"prediction": run_dir}, n_images=n_images)
    if predictions:
        blocks += [Heading("Predictions")] + predictions
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_document(blocks, out_dir, title=f"Run {config.get('name', run_dir.name)}")


def _pretrain_report(run_dir: Path, out_dir: Path, blocks: list[Block], summary: dict[str, Any],
                     metrics: list[dict[str, float]], config: dict[str, Any]) -> Path:
    """The rest of a pre-training run's report: MSE and MAE, their curves, the reconstructions."""
    blocks.append(Text(f"Autoencoder pre-training of the {summary['model']} encoder. Best epoch "
                       f"{summary['best_epoch']} of {summary['epochs_run']}, {summary['seconds']:.0f} s: validation "
                       f"MSE {summary['val']['mse']:.4f}, MAE {summary['val']['mae']:.4f} (images normalised with "
                       f"data.normalize={config.get('data', {}).get('normalize')}). Encoder weights: "
                       f"`{summary['encoder']}`; use them with `--set model.encoder_weights=PATH`."))
    if metrics:
        layout = dict(rows=[""], cols=[""], row_title="", col_title="", legend=False)
        blocks += [Heading("Curves"), figure_block(
            curve_grid([CurveRun("", "", 0, 0, metrics)], keys=["train_mse", "val_mse"], ylabel="MSE", **layout),
            "mse", "Training (solid) and validation (dashed) reconstruction MSE per epoch.")]
    if (run_dir / "reconstructions.png").is_file():
        blocks += [Heading("Reconstructions"), Figure("reconstructions", (run_dir / "reconstructions.png").read_bytes(),
                                                      "Validation images, their reconstructions and the absolute error.")]
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_document(blocks, out_dir, title=f"Pre-training {config.get('name', run_dir.name)}")


def write_report(path: str | Path | None = None, *, storage: str | None = None, study_name: str | None = None,
                 out: str | Path | None = None, layout: Sequence[str] | None = None) -> Path:
    """The report of a study directory, a stored study or a single run directory.

    Args:
        path: a study directory (holding study.db) or a run directory (holding config.yaml);
            with ``storage``, optionally the study directory holding the trials' runs.
        storage: an SQLAlchemy URL of a shared study storage instead of ``study.db``.
        study_name: the study in the storage (needed when it holds several).
        out: the report folder; default ``<path>/report`` (for a storage with no path, the
            study directory of the stored runs, else ``./<study name>-report``).
        layout: the two hyperparameters laying out the curve grids (rows, columns).

    Returns:
        The path of report.html.

    Raises:
        ConfigError: no study or run there, an unknown study, or an unknown layout name.
    """
    path = Path(path) if path is not None else None
    if storage is None and path is not None and not (path / "study.db").is_file() and (path / "config.yaml").is_file():
        return run_report(path, out or path / "report")
    study = load_report_study(path, storage=storage, study_name=study_name)
    return study_report(study, out, study_dir=path, layout=layout)


__all__ = ["curve_blocks", "prediction_blocks", "run_report", "study_report", "varied_levels", "write_report",
           "write_trial_tables"]
