"""Staged studies: sub-studies run in order, each starting from the configuration the one before chose.

::

    name: playbook
    base: demo.yaml
    objective: val.dice_mean
    method: grid                 # the defaults of every stage: method, n_trials, repeats, pruner, seed
    repeats: 3
    stages:
      - name: lr                 # stage 1: the lr of each optimizer
        space: {optimizer.name: [adam, sgd], optimizer.lr: {when: optimizer.name, cases: {...}}}
        per: optimizer.name      # keep each optimizer's best settings for the later stages
      - name: schedule           # stage 2: optimizer x schedule, each optimizer at its stage-1 lr
        space: {optimizer.name: [adam, sgd], scheduler.name: [none, plateau]}
      - name: weight-decay       # stage 3: given the stage-2 winner
        space: {optimizer.weight_decay: [0.0, 1.0e-3, 1.0e-2]}
        lr: auto                 # the nuisance lr, found again for every trial (or a list or a range)

**The winner rule.** A stage's winner is the configuration with the best mean objective over its
repeats. When the paired comparison of the best and the runner-up over their shared seeds
(:func:`segtune.study.stats.paired_comparison`) finds them within the noise (the interval of the
difference holds 0), the stage keeps the configuration it started from (``tie: keep_base``, the
default), since the data cannot tell the two apart; ``tie: best_mean`` takes the best mean
anyway. With one seed no comparison is possible: the best mean wins, and the path says so.
``per: PATH`` also keeps the best settings of each value of ``PATH`` (by mean): later trials with
that value take them wherever they do not set the paths themselves, and the next base takes those
of its own value (a kept base too).

Each stage is a study of its own in ``<study dir>/stages/<n>-<name>/``; its decision is written
to ``decision.json`` there once it is complete. Running the command again resumes the first stage
without a decision (its finished trials kept); a stage with a decision is never run again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

import optuna
import pydantic

from segtune.config import SafeName, apply_changes, format_errors
from segtune.errors import ConfigError
from segtune.registry import suggest
from segtune.study.records import TrialRecord, Status, can_be_best, no_winner, study_records
from segtune.study.space import AUTO_LR, VARIANT, Space, SpaceErrors, config_for
from segtune.study.spec import Racing, StudyErrors, StudySpec, comparable, parse_study, read_study_tree
from segtune.study.stats import paired_comparison

STAGES_DIR = "stages"
DECISION = "decision.json"
_INHERITED = ("method", "n_trials", "repeats", "pruner", "seed")  # a stage's keys that default to the file's
Tie = Literal["keep_base", "best_mean"]


class StageSpec(pydantic.BaseModel):
    """One entry of ``stages:``."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: SafeName
    space: dict[str, Any] = pydantic.Field(default_factory=dict)
    variants: list[dict[str, Any]] | None = None
    method: Any = None
    n_trials: int | None = None
    # as the file's repeats: seeds per configuration, or racing {min, max, alpha}
    repeats: Annotated[int, pydantic.Field(ge=1, le=100)] | Racing | None = None
    pruner: Any = None
    seed: int | None = None
    lr: Any = None  # "auto", or a list or range of optimizer.lr for this stage
    tie: Tie | None = None  # default: the file's tie, else keep_base
    per: str | None = None  # keep the best settings of each value of this path


@dataclass
class Staged:
    """A staged study file: its top-level study keys, its stages and its tie rule."""

    path: Path
    top: dict[str, Any]  # the study keys (base resolved, set applied) shared by every stage
    stages: list[StageSpec]
    tie: Tie = "keep_base"

    @property
    def name(self) -> str:
        return str(self.top["name"])


@dataclass
class Decision:
    """What a finished stage chose, and its evidence; stored as ``decision.json``."""

    index: int
    name: str
    # best_mean | kept_base (best and runner-up within the noise) | tie_best_mean (within the noise, tie:
    # best_mean) | untested (one seed: no paired test) | no_result (no trial completed with a finite
    # objective) | no_winner (its race ended with no configuration left: the base is kept)
    rule: str
    changes: dict[str, Any]  # what the stage set in the base of the next one
    base_after: dict[str, Any]  # the base config tree of the next stage
    n_trials: int = 0
    best: dict[str, Any] | None = None  # {number, params, mean, seeds}
    runner_up: dict[str, Any] | None = None
    difference: dict[str, Any] | None = None  # {mean, low, high, seeds, p_value}: best minus runner-up
    follows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # per: {value: settings}
    study: dict[str, Any] = field(default_factory=dict)  # the stage's study as decided (its fingerprint)
    race_end: str | None = None  # rule no_winner: how the stage's race ended


def is_staged(path: str | Path) -> bool:
    """Whether the study file at ``path`` has ``stages:``."""
    from segtune.config import read_yaml

    tree = read_yaml(Path(path))
    return isinstance(tree, dict) and "stages" in tree


def load_stages(path: str | Path, overrides: Sequence[str] = (), *, every_cell: bool = False) -> Staged:
    """Read a staged study file and validate every stage against the file's base.

    Later stages start from earlier winners; each is validated here against the base the file
    gives (the same components and paths), and again when it starts.

    Raises:
        ConfigError: every problem of every stage at once, each naming its stage.
    """
    path = Path(path)
    tree, errors = read_study_tree(path, overrides)
    raw, tie = tree.pop("stages"), tree.pop("tie", "keep_base")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: stages must be a list of sub-studies, e.g. stages: [{{name: lr, space: ...}}]")
    if tie not in ("keep_base", "best_mean"):
        errors.append(f"{path}: tie must be keep_base or best_mean, got {tie!r}")
    for key in ("space", "variants"):
        if key in tree:
            errors.append(f"{path}: {key} belongs to each stage in a staged study; move it into the stages")
    stages, numbers = [], []  # the stages (an invalid one repaired, to check its values), their numbers
    for i, entry in enumerate(raw):
        try:
            stages.append(StageSpec.model_validate(entry))
            numbers.append(i + 1)
        except pydantic.ValidationError as err:
            name = entry.get("name") if isinstance(entry, dict) else None
            errors.append(format_errors(err, f"{path}: stage {i + 1}" + (f" ({name})" if isinstance(name, str) else ""))
                          .replace("invalid config", "invalid stage"))
            repaired = _repaired_stage(entry, err, i)
            if repaired is not None:  # its values are checked as those of a valid stage
                stages.append(repaired)
                numbers.append(i + 1)
    names = [s.name for s in stages]
    errors += [f"{path}: two stages are named {n!r}; name each stage once" for n in sorted({n for n in names
                                                                                           if names.count(n) > 1})]
    staged = Staged(path, tree, stages, tie if tie in ("keep_base", "best_mean") else "keep_base")
    checkable = []  # the stages whose data can be checked (a valid base and objective)
    for i, number in enumerate(numbers):
        try:
            checkable.append((f"{path}: stage {number} ({stages[i].name})",
                              *stage_study(staged, i, tree["base"], {}, every_cell=every_cell, number=number)))
        except ConfigError as err:
            errors.append(str(err))
            checkable += getattr(err, "checkable", [])
    if errors:
        raise StudyErrors("\n".join(errors), checkable if tree["base"] is not None else [])
    return staged


def _repaired_stage(entry: Any, err: pydantic.ValidationError, index: int) -> StageSpec | None:
    """An invalid stage with each key in error left to its default (a name made up where its own is
    invalid), so that the values of its space and variants, its lr and per are checked too."""
    if not isinstance(entry, dict):
        return None
    wrong = {e["loc"][0] for e in err.errors() if e["loc"]}
    kept = {k: v for k, v in entry.items() if k not in wrong}
    kept.setdefault("name", f"stage-{index + 1}")
    try:
        return StageSpec.model_validate(kept)
    except pydantic.ValidationError:
        return None


def stage_study(staged: Staged, index: int, base: dict[str, Any], follows: dict[str, dict[str, dict[str, Any]]],
                *, every_cell: bool = False, number: int | None = None) -> tuple[StudySpec, Space]:
    """The study of stage ``index`` on ``base`` (the previous winner), with the settings that follow;
    ``number`` is the stage's number in the file (default ``index + 1``), named in its errors.

    Raises:
        ConfigError: every problem of the stage at once (its own keys, then its study's), each
            line naming the file and the stage.
    """
    stage = staged.stages[index]
    tree = {k: v for k, v in staged.top.items() if k != "name"}
    tree.update({k: _plain(getattr(stage, k)) for k in _INHERITED if getattr(stage, k) is not None})
    tree["name"] = f"{staged.name}.{stage.name}"
    space = dict(stage.space)
    follows = {path: dict(table) for path, table in follows.items()}
    origin = f"{staged.path}: stage {number or index + 1} ({stage.name})"
    problems = [f"{origin}: {p}" for p in _stage_problems(stage)]
    if stage.lr == AUTO_LR:  # re-tuned in this stage: neither the base's nor an earlier stage's lr
        base = base and apply_changes(base, {"optimizer.lr": AUTO_LR})  # None: an invalid base, named
        follows = {p: {v: {k: x for k, x in s.items() if k != "optimizer.lr"} for v, s in t.items()}
                   for p, t in follows.items()}
    elif stage.lr is not None and "optimizer.lr" not in space:
        space["optimizer.lr"] = stage.lr
    tree.update(base=base, space=space, variants=stage.variants)
    spec, parsed = parse_study(tree, origin=origin, every_cell=every_cell, errors=problems)
    parsed.follows = follows
    return spec, parsed


def _plain(value: Any) -> Any:
    """A stage's key as the study file gives it (racing repeats as their mapping)."""
    return value.model_dump() if isinstance(value, pydantic.BaseModel) else value


def _stage_problems(stage: StageSpec) -> list[str]:
    """The problems of a stage's own keys (lr, per) that its study cannot see."""
    problems = []
    in_variants = sorted(v.get("label", "?") for v in stage.variants or () if isinstance(v, dict)
                         and "optimizer.lr" in v)
    if stage.lr is not None and ("optimizer.lr" in stage.space or in_variants):
        place = "space" if "optimizer.lr" in stage.space else "variants"
        where = "space: optimizer.lr" if place == "space" else f"the variants' optimizer.lr ({', '.join(in_variants)})"
        what = ("lr: auto finds the lr by the range test for every trial" if stage.lr == AUTO_LR
                else "lr gives the stage's lr values")
        problems.append(f"lr: {stage.lr!r} and {where} both set the lr ({what}); give one of them: remove lr, "
                        f"or optimizer.lr from the {place}")
    if stage.per == VARIANT:  # a label is not a setting the next base can take: name a setting of the variants
        problems.append("per: variant is not supported; per names a setting (e.g. optimizer.name) whose value "
                        "picks the settings to keep")
    elif stage.per is not None and not _is_list_entry(stage, stage.per):
        entries = [p for p in [*stage.space, "optimizer.lr"] if _is_list_entry(stage, p)]
        problems.append(f"per: {stage.per!r} must name a list entry of the stage's space"
                        f"{suggest(str(stage.per), entries) or ', e.g. per: optimizer.name'}")
    return problems


def _is_list_entry(stage: StageSpec, path: str) -> bool:
    """Whether ``path`` is an unconditional list entry of the stage's space (its lr values included):
    a range's values are not known before its trials, a conditional's depend on another entry."""
    entry = stage.space.get(path, stage.lr if path == "optimizer.lr" and stage.lr != AUTO_LR else None)
    return isinstance(entry, list)


def next_follows(follows: dict[str, dict[str, dict[str, Any]]], decision: Decision) -> dict:
    """The per-value settings after ``decision``: an earlier stage's settings of a path the decision
    fixed give way to it (stage 2's patience is not undone by stage 1's table), then its own table."""
    fixed = set(decision.changes)
    kept = {p: {v: {k: x for k, x in s.items() if k not in fixed} for v, s in t.items()} for p, t in follows.items()}
    return {**kept, **decision.follows}


def stage_dir(root: Path, index: int, stage: StageSpec) -> Path:
    """``<study dir>/stages/<n>-<name>``: a stage's run directories, storage and decision."""
    return root / STAGES_DIR / f"{index + 1}-{stage.name}"


def read_decision(directory: Path) -> Decision | None:
    """The decision of a finished stage, or None while it is not finished."""
    path = directory / DECISION
    return Decision(**json.loads(path.read_text())) if path.is_file() else None


def _write_decision(directory: Path, decision: Decision) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{DECISION}.tmp"
    tmp.write_text(json.dumps(asdict(decision), indent=2, default=str))
    os.replace(tmp, directory / DECISION)  # all or nothing: a kill leaves the stage unfinished


def walk(staged: Staged, root: Path, upto: int | None = None) -> tuple[list[Decision], dict[str, Any], dict]:
    """The decisions of the finished stages before ``upto`` (default: all), the base after them and
    the settings that follow; stops at the first stage without a decision."""
    base, follows, decisions = staged.top["base"], {}, []
    for i, stage in enumerate(staged.stages[:upto]):
        directory = stage_dir(root, i, stage)
        decision = read_decision(directory)
        if decision is None:
            break
        now = comparable(stage_fingerprint(staged, i, stage_study(staged, i, base, follows)[0]))
        # a decision written before a key was part of the fingerprint is compared on the keys it has
        then = comparable(decision.study or {})
        changed = sorted(k for k in now if k in then and now[k] != then[k])
        if changed:
            raise ConfigError(f"stage {i + 1} ({stage.name}) was decided on another definition ({', '.join(changed)} "
                              f"differ) and is never run again; restore the study file, or move {directory} aside "
                              f"to run it again{_dependents(staged, root, i)}")
        decisions.append(decision)
        base = decision.base_after
        follows = next_follows(follows, decision)
    return decisions, base, follows


def stage_fingerprint(staged: Staged, index: int, spec: StudySpec) -> dict[str, Any]:
    """What a decided stage must share with the study file to stand: its study's fingerprint and
    every other key that changes what it decides (how many trials a sampler draws and its seed, the
    pruner, the direction, the tie rule, per)."""
    stage = staged.stages[index]
    drawn = {} if spec.method.name == "grid" else {"n_trials": spec.n_trials, "seed": spec.seed}
    found = {**spec.fingerprint(), **drawn, "pruner": spec.pruner.model_dump(mode="json"),
             "direction": spec.resolved_direction, "tie": stage.tie or staged.tie, "per": stage.per}
    return json.loads(json.dumps(found))


def _dependents(staged: Staged, root: Path, index: int) -> str:
    """The advice's end: the later stages start from this one's winner, so they run again too."""
    later = [(i, s) for i, s in enumerate(staged.stages) if i > index]
    if not later:
        return ""
    names = ", ".join(f"{i + 1} ({s.name})" for i, s in later)
    present = [str(stage_dir(root, i, s)) for i, s in later if stage_dir(root, i, s).exists()]
    also = f"; move {', '.join(present)} aside with it" if present else ""
    return (f". The stages after it start from its winner and run again after it: {names}{also}")


def _value_at(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _summary(record: TrialRecord) -> dict[str, Any]:
    return {"number": record.number, "params": record.params, "mean": record.value, "seeds": record.values}


def decide(records: Sequence[TrialRecord], *, maximize: bool, tie: Tie, changes_of: Callable[[TrialRecord], dict],
           base: dict[str, Any], index: int = 0, name: str = "stage", per: str | None = None,
           race_end: str | None = None) -> Decision:
    """Choose a stage's winner from its trials by the winner rule (see the module doc).

    Args:
        records: the stage's trials; completed ones that trained (not a repeat's reuse) count.
        maximize: the objective's direction.
        tie: ``keep_base`` or ``best_mean``: what a best within the noise of the runner-up gives.
        changes_of: a trial's dotted config changes (its variant's settings, its found lr).
        base: the base config tree the stage started from.
        race_end: how the stage's race ended when it left no configuration (:func:`records.no_winner`):
            the stage then keeps its base, as no trial can be called its best.

    Returns:
        The :class:`Decision`; its ``changes`` are empty where the base is kept.
    """
    if race_end:
        return Decision(index, name, "no_winner", {}, base, n_trials=len(records), race_end=race_end)
    # as best_trial: a finite objective (HD95 is inf where a class is never found: no winner, and no
    # paired test can take its differences)
    done = [r for r in records if can_be_best(r) and r.same_as is None]
    done.sort(key=lambda r: r.value, reverse=maximize)
    if not done:
        return Decision(index, name, "no_result", {}, base, n_trials=len(records))
    best, runner = done[0], (done[1] if len(done) > 1 else None)
    comparison = runner and paired_comparison(best.values, runner.values, other_number=runner.number,
                                              maximize=maximize)
    if comparison is None:
        rule = "untested"
    else:
        rule = "best_mean" if not comparison.within_noise else ("kept_base" if tie == "keep_base" else "tie_best_mean")
    changes = {} if rule == "kept_base" else changes_of(best)
    follows = {}
    if per is not None:
        table: dict[str, dict[str, Any]] = {}
        taken: dict[str, Any] = {}  # each key's value as the trials took it
        for r in done:  # best first: each value's first trial is its best
            settings = changes_of(r)
            table.setdefault(str(settings.get(per)), {k: v for k, v in settings.items() if k != per})
            taken.setdefault(str(settings.get(per)), settings.get(per))
        follows = {per: table}
        # the next base takes the best settings of its own value of `per` too (a kept base included),
        # read from the built config: a path the base tree leaves to its default has the default's
        # value (1.0 there matches a trial's 1)
        own = _value_at(config_for(base, changes).model_dump(mode="json"), per)
        key = next((k for k, value in taken.items() if value == own), str(own))
        changes = {**table.get(key, {}), **changes}
    difference = None if comparison is None else {
        "mean": comparison.difference.mean, "low": comparison.difference.low, "high": comparison.difference.high,
        "seeds": list(comparison.seeds), "p_value": comparison.p_value}
    return Decision(index, name, rule, changes, apply_changes(base, changes), n_trials=len(records),
                    best=_summary(best), runner_up=_summary(runner) if runner else None, difference=difference,
                    follows=follows)


def _changes_of(space: Space, auto_lr: bool) -> Callable[[TrialRecord], dict]:
    def changes(record: TrialRecord) -> dict[str, Any]:
        found = space.changes(record.params)
        if auto_lr and record.config:  # the lr the range test found for it
            found["optimizer.lr"] = record.config["optimizer"]["lr"]
        return found
    return changes


def run_stages(path: str | Path, *, study_dir: str | Path | None = None, storage: str | None = None,
               n_workers: int = 1, num_threads: int | None = None, overrides: Sequence[str] = (),
               verbose: bool = False, progress: bool = False,
               on_stage_done: Callable[[Decision], None] | None = None) -> tuple[Staged, list[Decision]]:
    """Run (or resume) a staged study: each stage without a decision, in order.

    Args:
        path: the study file, with ``stages:``.
        study_dir: default ``runs/<name>``; stage n lives in ``<study_dir>/stages/<n>-<name>``.
        on_stage_done: called with each decision as it is written (a progress hook).
        The rest: as :func:`segtune.study.run_study`.

    Returns:
        The staged study and the decision of every stage.
    """
    from segtune.study.objective import DataCache
    from segtune.study.workers import run_loaded

    staged, cache = load_stages(path, overrides), DataCache()  # the data loaded once for every stage
    root = Path(study_dir) if study_dir else Path("runs") / staged.name
    decisions, base, follows = walk(staged, root)
    for i in range(len(decisions), len(staged.stages)):
        stage = staged.stages[i]
        spec, space = stage_study(staged, i, base, follows)
        directory = stage_dir(root, i, stage)
        if progress:
            print(f"stage {i + 1}/{len(staged.stages)}: {stage.name}", flush=True)
        study = run_loaded(spec, space, staged.path, study_dir=directory, storage=storage, n_workers=n_workers,
                           num_threads=num_threads, overrides=overrides, verbose=verbose, progress=progress,
                           worker_args=["--stage", str(i + 1)], cache=cache)
        records = study_records(study, study_dir=directory)
        if not any(r.state == Status.COMPLETE and r.value is not None for r in records):
            raise ConfigError(f"stage {i + 1} ({stage.name}) has no completed trial, so it decides nothing and "
                              f"is left unfinished; see the failures with `segtune study status {staged.path}`, "
                              f"fix them, and run the same command again")
        decision = decide(records, maximize=spec.resolved_direction == "maximize",
                          tie=stage.tie or staged.tie, changes_of=_changes_of(space, stage.lr == AUTO_LR),
                          base=base, index=i, name=stage.name, per=stage.per, race_end=no_winner(study))
        decision.study = stage_fingerprint(staged, i, spec)
        _write_decision(directory, decision)
        decisions.append(decision)
        base, follows = decision.base_after, next_follows(follows, decision)
        if on_stage_done is not None:
            on_stage_done(decision)
    return staged, decisions


def stage_for_worker(path: str | Path, overrides: Sequence[str], study_dir: Path, number: int
                     ) -> tuple[StudySpec, Space]:
    """The study of stage ``number`` (from 1) for a worker process; ``study_dir`` is the stage's own.

    Raises:
        ConfigError: a stage before it has no decision yet.
    """
    staged = load_stages(path, overrides)
    root = study_dir.parent.parent
    decisions, base, follows = walk(staged, root, number - 1)
    if len(decisions) < number - 1:
        raise ConfigError(f"stage {number} cannot start: stage {len(decisions) + 1} has no decision yet in {root}")
    return stage_study(staged, number - 1, base, follows)


def stage_studies(staged: Staged, root: Path, storage: str | None = None) -> list[optuna.Study | None]:
    """The stored study of each stage (None for a stage not started), for the report."""
    from segtune.study.storage import open_storage

    studies = []
    for i, stage in enumerate(staged.stages):
        directory = stage_dir(root, i, stage)
        name = f"{staged.name}.{stage.name}"
        if storage is None and not (directory / "study.db").is_file():
            studies.append(None)
            continue
        try:
            studies.append(optuna.load_study(study_name=name, storage=open_storage(
                StudySpec.model_construct(name=name), directory, storage)))
        except KeyError:
            studies.append(None)
    return studies


__all__ = ["DECISION", "STAGES_DIR", "Decision", "StageSpec", "Staged", "decide", "is_staged", "load_stages",
           "next_follows", "read_decision", "run_stages", "stage_dir", "stage_fingerprint", "stage_for_worker",
           "stage_studies", "stage_study", "walk"]
