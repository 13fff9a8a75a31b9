"""The answer of a study's report: the best configuration, a ranking with ties, the paired verdicts
behind it, the runs the repeats spent, the leaders' metrics and a per-case scatter.

The tests are :func:`segtune.study.stats.verdict`'s: case by case (bootstrap interval, Wilcoxon
signed-rank) where two trials share enough cases, else seed by seed (paired t).
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any, Sequence

import optuna
from matplotlib.figure import Figure as MplFigure

from segtune.report.data import ReportedTrial
from segtune.report.document import Block, Heading, Table, Text, figure_block
from segtune.report.figures import level_label
from segtune.study.records import RACE, RACE_END, SPEC, Status, can_be_best, maximizes, no_winner, objective_name
from segtune.study.stats import mean_ci, ranking
from segtune.training.distances import DISTANCE_METRICS

__all__ = ["answer_blocks", "leader_metrics", "runs_spent", "seeds_text"]

N_LEADERS = 5  # trials ranked and compared in the answer


def _config_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={level_label(v)}" for k, v in params.items()) or "the base configuration"


def seeds_text(spec: dict[str, Any]) -> str:
    """``3 seed(s)``, ``2 to 5 seeds (racing)``, with ``x 5 folds`` for a cross-validated study."""
    repeats = spec.get("repeats", 1)
    margin = f", margin {repeats['margin']:g}" if isinstance(repeats, dict) and repeats.get("margin") else ""
    text = (f"{repeats['min']} to {repeats['max']} seeds (racing, alpha {repeats.get('alpha', 0.05)}{margin})"
            if isinstance(repeats, dict) else f"{repeats} seed(s)")
    return text + (f" x {spec['cv']} cross-validation folds" if spec.get("cv") else "")


def runs_spent(spec: dict[str, Any], records: Sequence[ReportedTrial],
               race: dict[str, str] | None = None) -> str | None:
    """With racing repeats: the runs the completed configurations spent against a fixed ``max`` for each,
    and how the race ended for them (``race``: the study's {home trial: standing})."""
    repeats = spec.get("repeats")
    done = [r for r in records if r.state == Status.COMPLETE and r.same_as is None]
    if not isinstance(repeats, dict) or not done:
        return None
    folds = spec.get("cv") or 1
    spent, fixed = sum(len(r.runs) for r in done), len(done) * repeats["max"] * folds
    text = (f"**Runs:** adaptive repeats spent {spent} runs on the {len(done)} completed configurations, against "
            f"{fixed} for a fixed {repeats['max']} seeds each ({spent / fixed:.0%}).")
    calls = [race[str(r.home)] for r in done if race and str(r.home) in race]
    ends = {"separated": "stopped behind the leader", "practical tie": "stopped as practical ties",
            f"{repeats['max']} seeds": "ran the most seeds"}
    counts = [f"{sum(c.startswith(k) for c in calls)} {what}" for k, what in ends.items()
              if any(c.startswith(k) for c in calls)]
    return text + (f" The race: {', '.join(counts)} (see the README's Verdicts for its error rate)." if counts else "")


def _entries(records: Sequence[ReportedTrial], objective: str) -> list[tuple[int, dict, dict]]:
    return [(r.number, r.values, r.case_values(objective)) for r in records]


def answer_blocks(study: optuna.Study, records: Sequence[ReportedTrial]) -> list[Block]:
    """The report's answer: the best, the ranking of the leaders with ties, and the verdicts behind it."""
    blocks: list[Block] = [Heading("The answer")]
    # as best_trial: a finite objective on every seed, and no best where the race ended with no winner
    done = [r for r in records if can_be_best(r)]
    spent = runs_spent(study.user_attrs.get(SPEC, {}), records, study.user_attrs.get(RACE))
    if ended := no_winner(study):
        return blocks + [Text(f"There is no best configuration. The race: {ended}.")] + \
            ([Text(spent)] if spent else [])
    if not done:
        if not any(r.state == Status.COMPLETE for r in records):
            return blocks + [Text("No trial has completed yet, so there is no best configuration.")]
        end = study.user_attrs.get(RACE_END)
        return blocks + [Text(f"No trial has completed with a finite {objective_name(study)} on every seed, so "
                              f"there is no best configuration." + (f" The race: {end}." if end else ""))]
    best, objective, maximize = done[0], objective_name(study), maximizes(study)
    blocks.append(Text(f"**Best: trial {best.number}** ({_config_text(best.params)}) with {objective} "
                       f"**{best.ci.text()}** over {best.ci.n} seed(s)."))
    if spent:
        blocks.append(Text(spent))
    leaders = done[:N_LEADERS]
    if len(leaders) < 2:
        return blocks
    text, steps = ranking(_entries(leaders, objective), maximize=maximize)
    if all(v is None for v in steps):
        return blocks + [Text("Each configuration ran with one seed and too few cases are shared to compare them "
                              "case by case, so the ranking may be noise; set `repeats: 3` or more in the study file.")]
    blocks.append(Text(f"**Ranking** (best mean first; `=` within the noise of the first of its group, `>` "
                       f"separated at 95 %, `<` better on the runs both share though its mean is lower): **{text}**."))
    tied = [v.b for v in itertools.takewhile(lambda v: v is None or v.sign != ">", steps)
            if v is not None and v.sign == "="]
    if tied:
        who = f"trial {tied[0]} differs" if len(tied) == 1 else f"trials {', '.join(map(str, tied))} differ"
        blocks.append(Text(f"**No clear winner:** {who} from the best by less than the noise (the 95% interval "
                           f"of the paired difference contains 0), so the data do not single one out; more seeds "
                           f"(`repeats`) or more cases would tell them apart."))
    rows = [[v.a, v.b, v.test, v.difference.mean, v.difference.low, v.difference.high, v.p_value, v.word]
            for v in steps if v is not None]
    blocks.append(Table(["trial", "against", "test", "difference", "95% low", "95% high", "p", "verdict"], rows,
                        caption="Each step of the ranking: the first trial of a group against the next trial, on "
                                "what both ran; a positive difference favours the first. See the README's "
                                "Verdicts for which test is used when."))
    blocks += _scatter(leaders[0], leaders[1], objective)
    return blocks


def leader_metrics(records: Sequence[ReportedTrial]) -> list[Block]:
    """Mean and 95 % interval over the runs of each test metric of the leaders, and their runs."""
    done = [r for r in records if r.state == Status.COMPLETE and r.test][:N_LEADERS]
    metrics = ["dice_mean", "case_dice_mean", *(f"{m}_mean" for m in DISTANCE_METRICS)]
    shown = [m for m in metrics if any(m in t for r in done for t in r.test)]
    if not done or not shown:
        return []
    rows = []
    for r in done:
        cells = []
        for m in shown:
            by_seed: dict[int, list[float]] = {}  # folds share the test split: one value a seed, their mean
            for run in r.runs:
                if run.test.get(m) is not None and math.isfinite(run.test[m]):
                    by_seed.setdefault(run.seed, []).append(run.test[m])
            values = [statistics.fmean(v) for v in by_seed.values()]
            cells.append(mean_ci(values).text(3) if values else "–")
        rows.append([r.number, len(r.runs)] + cells)
    return [Heading("Leaders' test metrics"),
            Table(["trial", "runs"] + [f"test {m}" for m in shown], rows,
                  caption="Mean ± 95% half-width over the seeds of each leader (a seed's folds averaged first: they "
                          "share the test split); hd95 and asd in mm "
                          "(lower is better), nsd 0 to 1, avd the absolute volume difference in %.")]


def _scatter(a: ReportedTrial, b: ReportedTrial, objective: str) -> list[Block]:
    """Each case's value under the best against the runner-up (mean over the seeds and folds both ran)."""
    ours, theirs = a.case_values(objective), b.case_values(objective)
    shared = sorted(set(ours) & set(theirs), key=str)
    if not shared:
        return []
    by_case: dict[str, list[tuple[float, float]]] = {}
    for key in shared:
        by_case.setdefault(key[2], []).append((ours[key], theirs[key]))
    x = [statistics.fmean(p[0] for p in v) for v in by_case.values()]
    y = [statistics.fmean(p[1] for p in v) for v in by_case.values()]
    fig = MplFigure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.scatter(y, x, s=14)
    low, high = min(x + y), max(x + y)
    ax.plot([low, high], [low, high], color="grey", lw=0.8)
    metric = objective.partition(".")[2]
    ax.set_xlabel(f"trial {b.number}: {metric}")
    ax.set_ylabel(f"trial {a.number}: {metric}")
    fig.tight_layout()
    return [figure_block(fig, "per_case", f"{objective} per case ({len(x)} cases), the best (trial {a.number}) "
                                          f"against the runner-up (trial {b.number}); above the line the best "
                                          f"does better on that case (for a maximised objective).")]
