"""The report of a staged study: "the path" of decisions first, then one section per stage.

Each stage also gets its own full study report in ``<stage dir>/report/``; this page links them
and says, per stage, what it fixed and on what evidence: the best and the runner-up, the paired
difference over their shared seeds with its 95% interval, and the rule that decided.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from segtune.report.document import Block, Heading, Table, Text, write_document
from segtune.report.levels import level_label
from segtune.study.stages import Decision, Staged, stage_dir, stage_studies

_RULES = {
    "best_mean": "the best mean, separable from the runner-up",
    "kept_base": "best and runner-up within the noise: the stage's starting configuration is kept "
                 "(with the best settings of its own `per` value, where the stage has one)",
    "tie_best_mean": "the best mean, within the noise of the runner-up (tie: best_mean)",
    "untested": "the best mean (one seed: no paired test possible)",
    "no_result": "no trial completed with a finite objective: nothing fixed",
    "no_winner": "the race ended with no configuration left (see the stage's report): its starting configuration "
                 "is kept",
}


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={level_label(v)}" for k, v in values.items()) or "nothing (the base is kept)"


def _evidence(d: Decision) -> str:
    if d.race_end:
        return f"the race: {d.race_end}"
    if d.best is None:
        return "no trial completed with a finite objective"
    text = f"trial {d.best['number']} mean {d.best['mean']:.4f}"
    if d.runner_up is not None:
        text += f" vs trial {d.runner_up['number']} {d.runner_up['mean']:.4f}"
    if d.difference is not None:
        text += (f"; difference {d.difference['mean']:+.4f} (95% {d.difference['low']:+.4f} to "
                 f"{d.difference['high']:+.4f}), seeds {', '.join(map(str, d.difference['seeds']))}")
    return text


def path_blocks(staged: Staged, decisions: Sequence[Decision]) -> list[Block]:
    """The "path" section: one row per stage (what it fixed, the evidence, the rule) and the final config."""
    rows = [[d.index + 1, d.name, d.n_trials, _settings(d.changes), _evidence(d), _RULES.get(d.rule, d.rule)]
            for d in decisions]
    blocks: list[Block] = [Heading("The path"),
                           Table(["stage", "name", "trials", "fixed", "evidence", "rule"], rows,
                                 caption="Each stage starts from the configuration the one before it chose.")]
    for d in decisions:
        for path, table in d.follows.items():
            shown = "; ".join(f"{value}: {_settings(s)}" for value, s in table.items())
            blocks.append(Text(f"Stage {d.index + 1} ({d.name}) keeps the best settings per {path}: {shown}."))
    left = len(staged.stages) - len(decisions)
    if left:
        blocks.append(Text(f"{left} stage(s) not finished yet; run the same command again to resume."))
    final = decisions[-1].base_after if decisions else staged.top["base"]
    blocks.append(Text("**The configuration chosen**" + (" so far" if left else "") + ":"))
    blocks.append(Text("`" + yaml.safe_dump({k: final[k] for k in ("model", "loss", "optimizer", "scheduler",
                                                                    "augment", "train") if k in final},
                                             sort_keys=False, default_flow_style=True, width=10_000).strip() + "`"))
    return blocks


def staged_report(staged: Staged, decisions: Sequence[Decision], root: str | Path, *,
                  storage: str | None = None, stage_reports: bool = True) -> Path:
    """Write ``<root>/report/`` for a staged study, and each stage's own report (``stage_reports``:
    figures and predictions, the slow part); returns report.html."""
    from segtune.report.study import study_report

    root = Path(root)
    blocks: list[Block] = [Heading(f"Staged study {staged.name}", 1)]
    blocks += path_blocks(staged, decisions)
    for i, (stage, study) in enumerate(zip(staged.stages, stage_studies(staged, root, storage))):
        blocks.append(Heading(f"Stage {i + 1}: {stage.name}"))
        if study is None:
            blocks.append(Text("Not started."))
            continue
        report = study_report(study, study_dir=stage_dir(root, i, stage)) if stage_reports else None
        d = decisions[i] if i < len(decisions) else None
        lr = [] if stage.lr is None else ["optimizer.lr (auto)" if stage.lr == "auto" else "optimizer.lr"]
        varied = ", ".join([*stage.space, *(["variant"] if stage.variants else []), *lr]) or "nothing"
        blocks.append(Text(f"Varied: {varied}. " + (f"Fixed: {_settings(d.changes)}; {_evidence(d)}. "
                                                    if d else "Not finished. ")
                           + (f"Full report: `{report.relative_to(root)}`." if report else "")))
    return write_document(blocks, root / "report", title=f"Staged study {staged.name}")


__all__ = ["path_blocks", "staged_report"]
