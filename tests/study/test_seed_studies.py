"""The study files of studies/seeds/, one per hand-run report: each passes the dry run, and seed
001's staged study (shrunk to a few cells) runs end to end and reports its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segtune.study import dry_run, run_stages
from segtune.report.stages import staged_report

SEEDS = sorted((Path(__file__).parents[2] / "studies" / "seeds").glob("*.yaml"))


def test_there_is_one_study_file_per_seed_report():
    assert [p.name[:3] for p in SEEDS] == ["000", "001", "002", "003", "004"]


@pytest.mark.slow
@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.stem)
def test_each_seed_study_passes_the_dry_run(path):
    # every cell of every stage builds, and what the data shows (classes, binary losses) fits
    plan = dry_run(path, timing=False)
    assert plan.studies and all(s.n_trials >= 2 for s in plan.studies)
    assert path.read_text().startswith("# Seed " + path.name[:3])  # names the report it rebuilds


def _shrunk(stage: dict, n_names: int) -> dict:
    """A stage with the first ``n_names`` values of its first list of names, one of each other list,
    and the cases of the values left."""
    lists = [p for p, v in stage.get("space", {}).items() if not (isinstance(v, dict) and "when" in v)]
    space = {p: stage["space"][p][:n_names if i == 0 else 1] for i, p in enumerate(lists)}
    for path, values in stage.get("space", {}).items():
        if isinstance(values, dict) and "when" in values:
            when = values["when"] if isinstance(values["when"], list) else [values["when"]]
            cases = {k: v[:1] if isinstance(v, list) else v for k, v in values["cases"].items()
                     if all(part.strip() in space[w] for w, part in zip(when, str(k).split(",")))}
            if cases:
                space[path] = {"when": values["when"], "cases": cases}
    lr = {"lr": [3.0e-3]} if stage.get("lr") == "auto" else {}  # one lr: the range test costs minutes here
    return {**stage, "space": space, **lr}


@pytest.mark.slow
def test_the_seed_001_staged_study_runs_end_to_end_and_reports_its_path(tmp_path):
    tree = yaml.safe_load(SEEDS[1].read_text())
    tree["stages"] = [_shrunk(s, 2 if s["name"] in ("lr", "loss") else 1) for s in tree["stages"]]
    tree.update(repeats=1, base="demo.yaml")
    path = tmp_path / "seed-001.yaml"
    path.write_text(yaml.safe_dump(tree))
    staged, decisions = run_stages(path, study_dir=tmp_path / "out",
                                   overrides=["train.epochs=1", "data.train_fraction=0.25"])
    assert [d.name for d in decisions] == ["lr", "schedule", "weight-decay", "dropout", "loss"]
    assert set(decisions[0].follows["optimizer.name"]) == {"adam", "adagrad"}  # an lr per optimizer, kept
    assert [d.n_trials for d in decisions] == [2, 1, 1, 1, 2]
    report = staged_report(staged, decisions, tmp_path / "out", stage_reports=False)
    text = report.with_suffix(".md").read_text()
    assert text.index("## The path") < text.index("## Stage 1: lr") < text.index("## Stage 5: loss")
    assert "keeps the best settings per optimizer.name" in text and "**The configuration chosen**" in text
    assert f"optimizer: {{name: {decisions[-1].base_after['optimizer']['name']}" in text
