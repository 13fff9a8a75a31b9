"""What a study stores about its trials, in one place: the attribute keys and one typed record.

Every trial attribute is written under a key named here (the objective writes them, the worker
loop reads them) and read back through :class:`TrialRecord`, which the leaderboard, the report and
the CLI show. Trial user attributes:

- ``params`` ({config path: value}), ``config`` (the resolved config of its first repeat);
- ``runs``: per repeat (and cross-validation fold), a :class:`RunRecord` as JSON (seed, fold, value,
  epochs_run, best_epoch, run_dir, class_names, test metrics, per-case metrics of val and test); ``spread`` (standard deviation over repeats; None where a seed's objective is not finite); ``epochs`` (epochs run
  by the first repeat); ``seconds``; ``worker`` (host:pid);
- ``pretrain_run``, ``pretrain_mse``, ``pretrain_mae``: with a ``pretrain`` budget, the cached
  pre-training its runs started from (``<study dir>/pretrain/<budget>-<hash>``) and its validation
  reconstruction errors (of the encoder kept, the best validation MSE);
- ``home`` (the trial number of its run directories), ``resumed_after`` ({seed: epoch}),
  ``fail_reason``, ``interrupted``, ``requeued_from`` and ``same_as`` (a configuration sampled
  again takes its earlier trial's result without training) where they apply; ``extends`` (a racing
  round's trial: the trial of its configuration whose runs it carries on with one more seed; the
  records leave the extended trial out).

The study's ``spec`` attribute holds what a resumed study must share with its study file,
``threads`` the CPU threads of every trial, ``auto_lr:<hash>`` the learning rates found, and with
racing repeats ``race`` each configuration's standing in the race ({home trial: sentence}).

A trial's state (:class:`Status`) refines Optuna's: a failed trial is ``failed`` (it has a reason:
diverged, a full disk), ``stopped`` (Ctrl-C: run again on resume) or ``died`` (its worker died:
found by its heartbeat and run again). Trials are ranked in the order of :class:`Status`:
completed ones first, by objective, then running ones (they may still complete), pruned, failed,
stopped and died ones, each by their last value.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

# trial user attributes
PARAMS = "params"
CONFIG = "config"
RUNS = "runs"
SPREAD = "spread"
EPOCHS = "epochs"
SECONDS = "seconds"
WORKER = "worker"
HOME = "home"  # the trial number whose run directories it trains in (a re-run's original)
RESUMED = "resumed_after"  # {seed: epoch} for each repeat continued from its last.pt
FAIL_REASON = "fail_reason"
INTERRUPTED = "interrupted"
SEPARATED = "separated"  # the race's call on a configuration it stopped behind the leader
REQUEUED_FROM = "requeued_from"  # a trial stopped by Ctrl-C (or a full disk) that this one runs again
SAME_AS = "same_as"  # the earlier trial of the same configuration whose result was reused
PRETRAIN_RUN = "pretrain_run"  # the pre-training run directory the trial's runs started from
PRETRAIN_MSE = "pretrain_mse"  # its validation reconstruction MSE
PRETRAIN_MAE = "pretrain_mae"  # and MAE
PRETRAIN_DIR = "pretrain"  # <study dir>/pretrain/<budget>-<hash>/: the pre-training runs, one per setting
EXTENDS = "extends"  # a racing round's trial: the trial of its configuration it adds one seed to
# Optuna's system attribute on a dead worker's retry: the trial numbers it repeats
RETRY_HISTORY = "retry_history"
# study user attributes
SPEC = "spec"
THREADS = "threads"  # the CPU threads of every trial, fixed when the study is created
RACE = "race"  # with racing repeats: {home trial: its standing in the race} (segtune.study.racing)
RACE_END = "race_end"  # with racing repeats, once the race is over: how it ended, a sentence (Race.end)
NO_WINNER = "no winner"  # how race_end starts when no configuration is left in the race: no trial is the best
AUTO_LR_CACHE = "auto_lr:"  # auto_lr:<hash>: {"key": optimizer, loss, model and data as JSON, "lr"}

TRIALS_DIR = "trials"  # <study dir>/trials/<home:04d>-seed<seed>/: the run directories
REASON_WIDTH = 80  # characters of a trial's reason shown in a leaderboard row (the report's and the CLI's)


class Status(enum.StrEnum):
    """A trial's state as segtune shows it; the ranking order is the order here."""

    COMPLETE = "complete"
    RUNNING = "running"
    PRUNED = "pruned"
    FAILED = "failed"  # with a reason
    STOPPED = "stopped"  # by Ctrl-C, run again on resume
    DIED = "died"  # its worker died (no heartbeat), run again
    WAITING = "waiting"  # queued, not started


def status_of(trial: FrozenTrial) -> Status:
    """The :class:`Status` of a stored trial."""
    if trial.state == TrialState.FAIL:
        if FAIL_REASON in trial.user_attrs:
            return Status.FAILED
        return Status.STOPPED if INTERRUPTED in trial.user_attrs else Status.DIED
    return Status(trial.state.name.lower())


def requeued_on_resume(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed in a way that resume runs again with the same parameters: stopped
    by Ctrl-C (:attr:`Status.STOPPED`) or by a full disk (:attr:`Status.FAILED`, with its reason)."""
    return trial.state == TrialState.FAIL and INTERRUPTED in trial.user_attrs


def objective_name(study: optuna.Study) -> str:
    """The name of the objective of a study run by segtune (``val.dice_mean``), from its stored spec."""
    return study.user_attrs.get(SPEC, {}).get("objective", "objective")


def maximizes(study: optuna.Study) -> bool:
    """Whether ``study`` maximises its objective."""
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def run_dir(study_dir: Path, home: int, seed: int, fold: int | None = None) -> Path:
    """Where repeat ``seed`` (of cross-validation fold ``fold``) of the trial numbered ``home`` trains."""
    return study_dir / TRIALS_DIR / (f"{home:04d}-seed{seed}" + ("" if fold is None else f"-fold{fold}"))


def _count(value: Any) -> int | float:
    """An epoch count as stored: an int when whole (epoch budgets), else the fraction a step budget spans."""
    number = float(value)
    return int(number) if number.is_integer() else number


@dataclass(frozen=True)
class RunRecord:
    """One finished repeat of a trial, as stored in its ``runs`` attribute."""

    seed: int
    value: float  # the objective
    epochs_run: float  # whole epochs, or with train.steps the fraction of epochs its steps span
    best_epoch: float
    run_dir: Path
    class_names: tuple[str, ...] = ()
    test: dict[str, Any] = field(default_factory=dict)  # test-split metrics
    fold: int | None = None  # the cross-validation fold (the study's cv), None without
    # {split: {case_id: {metric: value}}}: the per-case metrics of its final val and test evaluations
    cases: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    best_step: int | None = None  # with train.steps: the step of its best validation

    @classmethod
    def from_attr(cls, stored: dict[str, Any]) -> "RunRecord":
        """Read one entry of a trial's ``runs`` attribute."""
        fold = stored.get("fold")
        step = stored.get("best_step")
        return cls(seed=int(stored["seed"]), value=float(stored["value"]), epochs_run=_count(stored["epochs_run"]),
                   best_epoch=_count(stored["best_epoch"]), run_dir=Path(stored["run_dir"]),
                   class_names=tuple(stored.get("class_names", ())), test=dict(stored.get("test") or {}),
                   fold=None if fold is None else int(fold), cases=dict(stored.get("cases") or {}),
                   best_step=None if step is None else int(step))

    def to_attr(self) -> dict[str, Any]:
        """The entry as stored (plain JSON values)."""
        return {"seed": self.seed, "value": self.value, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "run_dir": str(self.run_dir), "class_names": list(self.class_names), "test": self.test,
                **({"fold": self.fold} if self.fold is not None else {}),
                **({"best_step": self.best_step} if self.best_step is not None else {}), **({"cases": self.cases} if self.cases else {})}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as segtune shows it: leaderboard, report and CLI. Build it with :meth:`from_trial`."""

    number: int
    state: Status | str
    params: dict[str, Any]
    value: float | None  # the objective (mean over repeats; an unfinished trial's last report)
    # objective per seed (the mean over its cross-validation folds), finite finished repeats only
    values: dict[int, float] = field(default_factory=dict)
    epochs: int | None = None  # epochs run by the first repeat
    seconds: float = 0.0
    reason: str = ""  # why it ended as it did (see trial_reason)
    runs: tuple[RunRecord, ...] = ()
    spread: float | None = 0.0  # standard deviation of the objective over repeats; None with a seed not finite
    run_dirs: list[Path] = field(default_factory=list)  # its own runs' directories found here, by seed
    home: int | None = None
    same_as: int | None = None
    requeued_from: int | None = None
    resumed_after: dict[str, int] = field(default_factory=dict)
    worker: str | None = None
    config: dict[str, Any] | None = None

    def case_values(self, objective: str) -> dict[tuple[int, int | None, str], float]:
        """The per-case values of the objective (``val.dice_mean``, ``test.hd95_mean``, ...) of its
        runs, keyed by (seed, fold, case id); empty for an objective with no per-case value (a loss)."""
        split, _, metric = objective.partition(".")
        metric = "dice_mean" if metric == "case_dice_mean" else metric
        return {(r.seed, r.fold, case): float(v[metric]) for r in self.runs
                for case, v in r.cases.get(split, {}).items() if v.get(metric) is not None}

    @property
    def test(self) -> list[dict[str, Any]]:
        """Test-split metrics of each finished repeat that has them."""
        return [r.test for r in self.runs if r.test]

    @classmethod
    def from_trial(cls, trial: FrozenTrial, *, trials: Sequence[FrozenTrial] = (),
                   study_dir: Path | None = None) -> "TrialRecord":
        """The record of a stored trial.

        Args:
            trial: the trial.
            trials: every trial of its study, to name the trial that ran it again (in ``reason``).
            study_dir: the study directory, where its run directories are looked for first; else
                the run directories stored on the trial, where they exist here.
        """
        attrs = trial.user_attrs
        runs = tuple(RunRecord.from_attr(r) for r in attrs.get(RUNS, []))
        home = int(attrs.get(HOME, trial.number))
        return cls(number=trial.number, state=status_of(trial), params=dict(attrs.get(PARAMS, {})),
                   value=trial.value if trial.value is not None else _last_value(trial),
                   values=per_seed(runs),
                   epochs=attrs.get(EPOCHS), seconds=float(attrs.get(SECONDS, 0.0)), reason=trial_reason(trial, trials),
                   runs=runs, spread=_spread(attrs.get(SPREAD, 0.0)), run_dirs=_run_dirs(trial, runs, home, study_dir),
                   home=home, same_as=attrs.get(SAME_AS), requeued_from=attrs.get(REQUEUED_FROM),
                   resumed_after=dict(attrs.get(RESUMED, {})), worker=attrs.get(WORKER), config=attrs.get(CONFIG))


def per_seed(runs: Sequence[RunRecord], *, finite: bool = True) -> dict[int, float]:
    """The objective of each seed of ``runs``: the mean over its folds; seeds with a non-finite value
    are left out, or with ``finite=False`` kept (their mean is then not finite)."""
    by_seed: dict[int, list[float]] = {}
    for r in runs:
        by_seed.setdefault(r.seed, []).append(r.value)
    return {s: math.fsum(v) / len(v) if all(math.isfinite(x) for x in v) else math.nan
            for s, v in by_seed.items() if not finite or all(math.isfinite(x) for x in v)}


def _spread(stored: Any) -> float | None:
    return None if stored is None or not math.isfinite(float(stored)) else float(stored)


def _last_value(trial: FrozenTrial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _run_dirs(trial: FrozenTrial, runs: Sequence[RunRecord], home: int, study_dir: Path | None) -> list[Path]:
    if status_of(trial) == Status.DIED or requeued_on_resume(trial):
        return []  # its run directories are continued by the trial that ran it again
    if study_dir is not None:
        found = sorted((study_dir / TRIALS_DIR).glob(f"{home:04d}-seed*"), key=_seed_of)
        if found:
            return found
    return [r.run_dir for r in runs if r.run_dir.is_dir()]


def _seed_of(path: Path) -> tuple[int, int]:
    seed, _, fold = path.name.rsplit("seed", 1)[1].partition("-fold")
    return (int(seed) if seed.isdigit() else 0, int(fold) if fold.isdigit() else -1)


def trial_reason(trial: FrozenTrial, trials: Sequence[FrozenTrial]) -> str:
    """Why ``trial`` ended as it did: its failure reason; for a trial stopped by Ctrl-C or whose
    worker died, that and the trial that ran it again; for a reused result, the trial it came from."""
    attrs = trial.user_attrs
    if SAME_AS in attrs:
        return f"result of trial {attrs[SAME_AS]} (same configuration)"
    if FAIL_REASON in attrs or trial.state != TrialState.FAIL:
        return str(attrs.get(FAIL_REASON, ""))
    again = next((c.number for c in trials if c.user_attrs.get(REQUEUED_FROM) == trial.number
                  or c.system_attrs.get(RETRY_HISTORY, [None])[-1] == trial.number), None)
    what = "stopped by Ctrl-C" if INTERRUPTED in attrs else "its worker died (no heartbeat)"
    return what + (f"; run again as trial {again}" if again is not None else "")


def rank(records: Sequence[TrialRecord], *, maximize: bool) -> list[TrialRecord]:
    """``records`` in the order of :class:`Status`, each state best value first, then by number."""
    order = {status: i for i, status in enumerate(Status)}
    sign = -1.0 if maximize else 1.0
    return sorted(records, key=lambda r: (order.get(r.state, len(order)),
                                          sign * r.value if r.value is not None else math.inf, r.number))


def study_records(study: optuna.Study, *, study_dir: Path | None = None) -> list[TrialRecord]:
    """Every trial of ``study`` but the waiting ones, as records, ranked (see :func:`rank`)."""
    trials = study.get_trials(deepcopy=False)
    # a racing round's completed trial carries its configuration's runs on: the trial it extends is left out
    extended = {t.user_attrs[EXTENDS] for t in trials if t.state == TrialState.COMPLETE and EXTENDS in t.user_attrs}
    race = study.user_attrs.get(RACE, {})
    # and a round queued twice (two workers at once) trained once: its copy is no row of its own
    records = [TrialRecord.from_trial(t, trials=trials, study_dir=study_dir)
               for t in trials if t.state != TrialState.WAITING and t.number not in extended
               and not (EXTENDS in t.user_attrs and SAME_AS in t.user_attrs)]
    records = [dataclasses.replace(r, reason=f"race: {race[str(r.home)]}")
               if r.state == Status.COMPLETE and not r.reason and str(r.home) in race else r for r in records]
    order = {status: i for i, status in enumerate(Status)}
    # a configuration the race stopped as behind the leader ranks after those it did not stop, whatever
    # its mean over its fewer seeds (seeds the others ran later can lower their means, not its own)
    return sorted(rank(records, maximize=maximizes(study)),
                  key=lambda r: (order.get(r.state, len(order)), r.reason.startswith(f"race: {SEPARATED}")))


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def runs_cell(record: TrialRecord) -> str:
    """A trial's runs in a leaderboard: the finished ones; an unfinished trial's run in progress is
    counted with its state (``1 pruned``, ``2 + 1 pruned``), never shown as 0 seeds."""
    if record.state == Status.COMPLETE or record.same_as is not None:
        return str(len(record.runs))
    return f"{len(record.runs)} + 1 {record.state}" if record.runs else f"1 {record.state}"


def leaderboard(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """The trials, best first: parameters, objective mean and spread, epochs, state, seconds, reason.

    Returns:
        ``(header, rows)``, ranked as :func:`rank` does.
    """
    records = study_records(study)
    paths = sorted({p for r in records for p in r.params})
    rows = [[r.number] + [_show(r.params.get(p, "-")) for p in paths]
            + ["-" if r.value is None else float(r.value), "-" if r.spread is None else r.spread, runs_cell(r),
               "-" if r.epochs is None else r.epochs, str(r.state), f"{r.seconds:.0f}", r.reason[:REASON_WIDTH]]
            for r in records]
    header = ["trial"] + paths + [objective_name(study), "spread", "runs", "epochs", "state", "seconds", "reason"]
    return header, rows


def progress_line(trial: FrozenTrial) -> str:
    """One line for a finished trial: number, state, objective, epochs, seconds, parameters, reason."""
    record = TrialRecord.from_trial(trial)
    params = ", ".join(f"{k}={_show(v)}" for k, v in record.params.items())
    shown = "" if record.value is None else f" {record.value:.4f}"
    reason = f" ({record.reason})" if record.reason else ""
    return (f"trial {record.number:>3} {record.state:<8}{shown}  epochs {record.epochs or 0:>3}  "
            f"{record.seconds:5.0f} s  {params}{reason}")


def can_be_best(record: Any) -> bool:
    """Whether a trial's record (a :class:`TrialRecord` or the report's) can be the best: completed, with a
    finite objective (HD95 is inf where a class is never found: such a trial is no best)."""
    return record.state == Status.COMPLETE and record.value is not None and math.isfinite(record.value)


def no_winner(study: optuna.Study) -> str | None:
    """How a racing study's race ended when no configuration is left in it (its ``race_end``), else None."""
    end = str(study.user_attrs.get(RACE_END, ""))
    return end if end.startswith(NO_WINNER) else None


def best_of(study: optuna.Study, records: Sequence[Any]) -> Any:
    """The first of the ranked ``records`` (:class:`TrialRecord` or the report's) that :func:`can_be_best`,
    or None, as well where the race ended with no winner (:func:`no_winner`: a configuration it stopped
    against one that left it later is not the best either)."""
    return None if no_winner(study) else next(filter(can_be_best, records), None)


def best_trial(study: optuna.Study) -> TrialRecord | None:
    """The record of the best completed trial, or None when no trial has completed with a finite objective
    (HD95 is inf where a class is never found: such a trial is no best) or the race ended with no winner
    (:func:`best_of`)."""
    return best_of(study, study_records(study))  # ranked: with racing, a configuration's latest record


__all__ = ["AUTO_LR_CACHE", "CONFIG", "EPOCHS", "FAIL_REASON", "HOME", "INTERRUPTED", "PARAMS", "PRETRAIN_DIR",
           "EXTENDS", "NO_WINNER", "PRETRAIN_MAE", "PRETRAIN_MSE", "PRETRAIN_RUN", "RACE", "RACE_END", "REASON_WIDTH",
           "REQUEUED_FROM", "RESUMED",
           "RETRY_HISTORY", "RUNS", "SAME_AS", "SECONDS", "SEPARATED", "SPEC", "SPREAD", "THREADS",
           "TRIALS_DIR", "WORKER", "RunRecord", "Status", "TrialRecord", "best_of", "best_trial", "leaderboard", "maximizes",
           "can_be_best", "no_winner", "objective_name", "per_seed", "progress_line", "runs_cell", "rank", "requeued_on_resume", "run_dir", "status_of", "study_records",
           "trial_reason"]
