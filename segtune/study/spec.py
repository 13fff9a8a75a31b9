"""The study file: what to vary, how to search, what to optimise; validated before any trial.

::

    name: optim-x-lr
    base: demo.yaml                 # a config file, or an inline config mapping
    set: {data.spacing: 2}          # fixed changes to the base, by dotted path (optional)
    objective: val.dice_mean        # a summary metric; direction: maximize (loss: minimize)
    method: tpe                     # grid | random | tpe, or {name: tpe, n_startup_trials: 5}
    n_trials: 20                    # ignored by grid (the grid's size)
    repeats: 1                      # seeds per configuration: mean and spread of the objective;
                                    # or {min: 2, max: 5}: racing (see segtune.study.racing)
    cv: 5                           # optional: k-fold cross-validation by case, every fold of every seed
    space: {...}                    # see segtune.study.space
    variants: [{label: A, ...}]     # named joint settings, alone or crossed with the space
    pruner: {name: median, min_epochs: 2}   # none | median | successive_halving | hyperband

``base`` is looked up next to the study file, then in the current directory, then among the
configs shipped with segtune (``demo.yaml``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Sequence

import optuna
import pydantic
from pydantic import Field

from segtune.config import Component, SafeName, format_errors
from segtune.errors import ConfigError
from segtune.registry import Registry, suggest
from segtune.study.files import read_study_tree
from segtune.study.space import VARIANT, Space, SpaceErrors, config_for
from segtune.training.distances import DISTANCE_METRICS, MINIMISED

SAMPLERS = Registry("study method")
PRUNERS = Registry("pruner")


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its end-of-grid check after each trial.

    The worker loop (:func:`segtune.study.run_worker`) decides when the grid is done; Optuna's
    check raises KeyError after a re-queued trial, which carries fixed parameters, not a grid id.
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None


@SAMPLERS.register("grid")
def grid_sampler(space: Space, seed: int | None, /) -> optuna.samplers.BaseSampler:
    """Every cell of the grid once (Optuna GridSampler); lists or stepped ranges only."""
    return _GridSampler(space.grid(), seed=seed)


class _SeededPerTrial(optuna.samplers.BaseSampler):
    """A sampler whose draws for trial n depend on the study's seed and n, not on the process.

    Optuna seeds a sampler once per process, so a resumed study (or a second command on the same
    storage) starts the seeded sequence again and draws the configurations it already has. Here
    each trial gets a fresh inner sampler seeded from ``(seed, trial number)``: a resumed study
    continues the sequence, two workers draw different values, and a study run again from scratch
    draws the same ones. Random and TPE samplers keep no state between trials but their generator,
    so this changes nothing else.
    """

    def __init__(self, make: Callable[[int | None], optuna.samplers.BaseSampler], seed: int | None) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def before_trial(self, study, trial) -> None:
        seed = None if self._seed is None else int.from_bytes(
            hashlib.sha256(f"{self._seed}:{trial.number}".encode()).digest()[:4], "little")
        self._inner = self._make(seed)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)


@SAMPLERS.register("random")
def random_sampler(space: Space, seed: int | None, /) -> optuna.samplers.BaseSampler:
    """Independent uniform draws (Optuna RandomSampler), seeded per trial number."""
    return _SeededPerTrial(lambda s: optuna.samplers.RandomSampler(seed=s), seed)


@SAMPLERS.register("tpe")
def tpe_sampler(space: Space, seed: int | None, /, *,
                n_startup_trials: Annotated[int, Field(ge=1)] = 10) -> optuna.samplers.BaseSampler:
    """Tree-structured Parzen estimator, multivariate and grouped for conditional spaces; seeded per trial."""
    import warnings

    def make(trial_seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=trial_seed,
                                              multivariate=True, group=True)

    return _SeededPerTrial(make, seed)


@PRUNERS.register("none")
def no_pruner(max_epochs: int, /) -> optuna.pruners.BasePruner:
    """Every trial runs to its end (or its early stop)."""
    return optuna.pruners.NopPruner()


@PRUNERS.register("median")
def median_pruner(max_epochs: int, /, *, min_epochs: Annotated[int, Field(ge=1)] = 2,
                  n_startup_trials: Annotated[int, Field(ge=0)] = 2) -> optuna.pruners.BasePruner:
    """Stop a trial worse than the median of earlier trials at the same epoch, from ``min_epochs`` on."""
    return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=min_epochs)


@PRUNERS.register("successive_halving")
def successive_halving_pruner(max_epochs: int, /, *, min_epochs: Annotated[int, Field(ge=1)] = 2,
                              reduction_factor: Annotated[int, Field(ge=2)] = 3) -> optuna.pruners.BasePruner:
    """Asynchronous successive halving: keep the best 1/reduction_factor at each rung."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction_factor)


@PRUNERS.register("hyperband")
def hyperband_pruner(max_epochs: int, /, *, min_epochs: Annotated[int, Field(ge=1)] = 2,
                     reduction_factor: Annotated[int, Field(ge=2)] = 3) -> optuna.pruners.BasePruner:
    """Hyperband: several successive-halving brackets up to the base config's epochs."""
    return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs,
                                          reduction_factor=reduction_factor)


class MethodSection(Component):
    registry: ClassVar[Registry] = SAMPLERS
    name: str = "tpe"


class PrunerSection(Component):
    registry: ClassVar[Registry] = PRUNERS
    name: str = "none"

    @pydantic.model_validator(mode="before")
    @classmethod
    def _min_rung(cls, data: Any) -> Any:
        # min_rung: the clock's own name for min_epochs, the first rung (an epoch, or a step with train.steps)
        if not isinstance(data, dict) or "min_rung" not in data:
            return data
        if "min_epochs" in data:
            raise ValueError(f"pruner.min_rung={data['min_rung']} and pruner.min_epochs={data['min_epochs']} are "
                             f"one setting (the first rung, on the budget's clock); keep one")
        return {("min_epochs" if k == "min_rung" else k): v for k, v in data.items()}


_SPLITS = ("val", "test")
# case_dice_mean: the mean over cases of each case's Dice; the surface metrics' means over cases and classes
_METRICS = ("dice_mean", "iou_mean", "loss", "case_dice_mean", *(f"{m}_mean" for m in DISTANCE_METRICS))


class Racing(pydantic.BaseModel):
    """``repeats: {min: 2, max: 5, alpha: 0.05, margin: 0}``: adaptive repeats (see :mod:`segtune.study.racing`)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    min: Annotated[int, Field(ge=1, le=99)] = 2
    max: Annotated[int, Field(ge=2, le=100)] = 5
    # the chance that any stop of the race is wrong (a truly best configuration stopped as separated,
    # or a practical tie called when it is not within margin of the best), over the whole race
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    # a practical tie: stop a configuration that is surely within margin of the best
    # (in the objective's units, e.g. 0.01 Dice); 0 stops only separated configurations
    margin: Annotated[float, Field(ge=0.0)] = 0.0

    @pydantic.model_validator(mode="after")
    def _min_below_max(self) -> "Racing":
        if self.min >= self.max:
            raise ValueError(f"repeats: min ({self.min}) must be less than max ({self.max}); for a fixed number "
                             f"of seeds write repeats: {self.max}")
        return self


class StudySpec(pydantic.BaseModel):
    """A validated study file. Build it with :func:`load_study`."""

    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: SafeName
    base: dict[str, Any]  # the resolved base config tree
    objective: str = "val.dice_mean"
    direction: Literal["maximize", "minimize"] | None = None  # None: minimize losses, maximize the rest
    method: MethodSection = MethodSection()
    n_trials: Annotated[int, Field(ge=1)] | None = None  # required by random and tpe
    repeats: Annotated[int, Field(ge=1, le=100)] | Racing = 1  # seeds base.seed, base.seed+1, ...
    # k-fold cross-validation by case: every seed trains every fold (data.folds, data.fold); the
    # objective is the mean over folds and seeds, the pruners follow the first fold of the first seed
    cv: Annotated[int, Field(ge=2, le=20)] | None = None
    seed: int = 0  # the sampler's seed
    space: dict[str, Any] = Field(default_factory=dict)
    # named joint settings ({label, dotted path: value}), one categorical entry ``variant`` of the space
    variants: list[dict[str, Any]] | None = None
    pruner: PrunerSection = PrunerSection()
    # Dead workers: a RUNNING trial whose heartbeat is older than grace_period seconds is marked
    # failed and re-queued with the same parameters (up to max_retry times).
    heartbeat_interval: Annotated[int, Field(ge=1)] = 10
    grace_period: Annotated[int, Field(ge=2)] = 30
    max_retry: Annotated[int, Field(ge=0)] = 3
    # A configuration sampled again (random and TPE do, on lists) takes the result of its finished
    # trial instead of training again: the same config and seeds give the same numbers.
    reuse_results: bool = True

    @pydantic.field_validator("method", "pruner", mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @pydantic.field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        split, _, metric = value.partition(".")
        per_class = metric.split(".")[0] in ("dice_per_class", "iou_per_class") and metric.count(".") == 1
        if split not in _SPLITS or not (metric in _METRICS or per_class):
            raise ValueError(f"objective must be SPLIT.METRIC with SPLIT in {_SPLITS} and METRIC in {_METRICS} "
                             f"or dice_per_class.CLASS, e.g. val.dice_mean; got {value!r}")
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        if self.method.name != "grid" and self.n_trials is None:
            raise ValueError(f"method {self.method.name} needs n_trials (how many configurations to try)")
        if self.pruner.name != "none" and self.epoch_key is None:
            raise ValueError(f"pruner {self.pruner.name} needs a validation objective reported every epoch "
                             f"(val.dice_mean, val.loss, val.dice_per_class.CLASS), not {self.objective}")
        surface = self.objective.split(".")[1] in {f"{m}_mean" for m in DISTANCE_METRICS}
        if surface and (self.base.get("metrics") or {}).get("surface") is False:
            raise ValueError(f"objective {self.objective} is a surface metric, but the base config sets "
                             f"metrics.surface: false; remove that, or choose another objective")
        if "train.num_threads" in {*self.space, *(k for v in self.variants or () for k in v)}:
            raise ValueError("train.num_threads is in the space or a variant, but a study trains every trial at "
                             "one thread count, fixed when it is created; remove it and give the count with "
                             "--threads N")
        if (self.base.get("train") or {}).get("num_threads") == "auto":
            raise ValueError("the base config sets train.num_threads: auto, but a study trains every trial at one "
                             "thread count, fixed when it is created, so that its trials are comparable (the numbers "
                             "depend on the count); remove it from the base (or its set / --set) and give the count "
                             "with --threads N, or leave it out for the CPUs divided among the workers")
        if self.cv and (self.base.get("data") or {}).get("folds") is not None:
            raise ValueError(f"cv: {self.cv} makes the folds of every trial, but the base config sets data.folds; "
                             f"remove data.folds (and data.fold) from the base, or remove cv")
        return self

    @property
    def resolved_direction(self) -> str:
        """The direction in force: the one given, else minimize for a loss and a distance, maximize otherwise."""
        lower = self.objective.endswith("loss") or self.objective.split(".")[1] in {f"{m}_mean" for m in MINIMISED}
        return self.direction or ("minimize" if lower else "maximize")

    @property
    def min_repeats(self) -> int:
        """The seeds every configuration gets (all of them without racing)."""
        return self.repeats.min if isinstance(self.repeats, Racing) else self.repeats

    @property
    def max_repeats(self) -> int:
        """The most seeds a configuration can get."""
        return self.repeats.max if isinstance(self.repeats, Racing) else self.repeats

    @property
    def folds(self) -> list[int | None]:
        """The cross-validation folds every seed trains: ``0..cv-1``, or ``[None]`` without ``cv``."""
        return list(range(self.cv)) if self.cv else [None]

    @property
    def epoch_key(self) -> str | None:
        """The key of the objective in the per-epoch metrics row, or None if it is not there."""
        split, _, metric = self.objective.partition(".")
        if split != "val" or not (metric in ("dice_mean", "loss") or metric.startswith("dice_per_class.")):
            return None  # a metric of the final evaluation only (IoU, per-case means, surface distances)
        return "val_" + metric.replace("dice_per_class.", "dice_")

    @property
    def objective_class(self) -> str | None:
        """The class the objective names (``val.dice_per_class.csf`` -> ``csf``), or None."""
        metric = self.objective.partition(".")[2]
        return metric.partition(".")[2] if "_per_class." in metric else None

    def check_objective_class(self, class_names: Sequence[str], origin: str = "study") -> None:
        """Raise ConfigError when the objective names a class that ``class_names`` lacks."""
        wanted = self.objective_class
        if wanted is not None and wanted not in class_names:
            metric = self.objective.rsplit(".", 1)[0]
            raise ConfigError(f"{origin}: objective {self.objective}: the data has no class {wanted!r}"
                              f"{suggest(wanted, list(class_names))}; its classes are {', '.join(class_names)}: "
                              f"e.g. objective: {metric}.{class_names[-1]}")

    def objective_value(self, summary: dict[str, Any]) -> float:
        """Read the objective from a run's summary."""
        node: Any = summary
        for key in self.objective.split("."):
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"objective {self.objective}: the run summary has no {key!r}")
            node = node[key]
        return float(node)

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed study must share with the stored one."""
        stored = self.model_dump(mode="json", include={"base", "objective", "method", "repeats", "space"}
                                 | ({"cv"} if self.cv else set()))
        if not self.variants:
            return stored  # as before variants existed: older studies resume
        # the variants also as one list entry of the space, by label in the file's order: the
        # report reads the stored space, and shows them as one setting
        labels = [v["label"] for v in self.variants]
        return {**stored, "space": {VARIANT: labels, **stored["space"]}, "variants": self.variants}


def comparable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A stored or new fingerprint in the form two are compared in: racing repeats stored before
    ``margin`` existed had none, which is a margin of 0 (so those studies and stages resume)."""
    repeats = fingerprint.get("repeats")
    if isinstance(repeats, dict) and {"min", "max"} <= set(repeats):
        return {**fingerprint, "repeats": {"margin": 0.0, **repeats}}
    return fingerprint


class StudyErrors(ConfigError):
    """Every problem of a study file; ``checkable`` holds ``(origin, spec, space)`` of each study (or
    stage) whose base and keys are valid, with its space's valid part (None: no part), so that its
    data is checked too."""

    def __init__(self, message: str, checkable: Sequence[tuple[str, "StudySpec", Space | None]] = ()) -> None:
        super().__init__(message)
        self.checkable = list(checkable)


def parse_study(tree: dict[str, Any], origin: str = "study", *, every_cell: bool = False,
                errors: Sequence[str] = ()) -> tuple[StudySpec, Space]:
    """Validate a study tree whose ``base`` is already a config mapping.

    Args:
        tree: the study file's mapping, ``base`` resolved.
        origin: the file, named in every message.
        every_cell: build the config of every cell of a finite space (the dry run), not only of
            each value and both ends of each range.
        errors: problems found before (in ``set``), reported together with these.

    Returns:
        The spec and its parsed :class:`~segtune.study.space.Space`, whose every choice and range
        end builds a valid config.

    Raises:
        StudyErrors: every problem found, at once, naming the field, the value and the rule.
    """
    found = list(errors)
    spec = None
    base = tree.get("base") if isinstance(tree.get("base"), dict) else None  # None: its problem is in errors
    try:
        spec = StudySpec.model_validate({**tree, "base": base or {}})
    except pydantic.ValidationError as err:  # reported with the problems of the base and the space below
        found.append(format_errors(err, origin).replace("invalid config", "invalid study file"))
    try:
        if base is not None:
            config_for(base, {})  # checks the base; optimizer.lr: auto is resolved per trial
    except ConfigError as err:
        found.append(f"{origin}: {err}")
        base = None
    space = None
    try:
        space = Space(tree.get("space"), tree.get("variants"))
    except SpaceErrors as err:  # the values of its good entries are checked all the same
        found += [f"{origin}: {problem}" for problem in err.problems]
        space = err.partial
    if space is not None and spec is not None and spec.method.name == "grid":
        found += [f"{origin}: {problem}" for problem in space.not_finite()]
    if space is not None and base is not None:
        found += [f"{origin}: {e}" for e in space.invalid(base, space.probes() if every_cell
                                                          else list(space.edge_probes()))]
    if found:
        checkable = [(origin, spec, space)] if spec is not None and base is not None else []
        raise StudyErrors("\n".join(dict.fromkeys(found)), checkable)
    return spec, space


def load_study(path: str | Path, overrides: Sequence[str] = (), *, every_cell: bool = False) -> tuple[StudySpec, Space]:
    """Read and validate a study file (see the module doc for its keys).

    Args:
        path: the study file.
        overrides: ``--set`` style changes of the base config, after the file's own ``set``.
        every_cell: build every cell's config (the dry run), see :func:`parse_study`.

    Raises:
        ConfigError: every problem of the file at once.

    Example:
        >>> spec, space = load_study("studies/optim_x_sched.yaml")  # doctest: +SKIP
    """
    tree, errors = read_study_tree(path, overrides)
    if "stages" in tree:
        raise ConfigError(f"{path}: a study with stages runs through segtune.study.stages (segtune study FILE "
                          f"does it), not load_study")
    return parse_study(tree, origin=str(path), every_cell=every_cell, errors=errors)


__all__ = ["PRUNERS", "SAMPLERS", "MethodSection", "PrunerSection", "StudyErrors", "StudySpec", "comparable", "grid_sampler", "hyperband_pruner",
           "load_study", "median_pruner", "no_pruner", "parse_study", "random_sampler", "read_study_tree",
           "successive_halving_pruner", "tpe_sampler"]
