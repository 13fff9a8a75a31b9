"""``segtune study FILE --dry-run``: every check of a study file, its counts and its cost, no training.

The dry run builds the config of every cell of every stage (a range without a step: each value and
both ends), loads the base's data once to check what needs the data (an objective naming a class
the data lacks, a loss that needs binary data on a multi-class dataset, class weights of the wrong
length), and reports every problem found at once. It then counts trials, repeats and epochs, and
times a few training batches of the base config to estimate the minutes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from segtune.errors import ConfigError
from segtune.study.space import Space, config_for
from segtune.study.spec import StudySpec, load_study

_VAL_COST = 1 / 3  # a validation image costs about a third of a training image (forward only)
_TIMED_BATCHES = 3


@dataclass
class PlannedStudy:
    """One study (or stage) of a dry run."""

    name: str
    method: str
    n_trials: int  # configurations to train (a grid's cells, or n_trials)
    repeats: int
    epochs: int  # at most, per run (early stopping and pruning end runs sooner)
    header: list[str] = field(default_factory=list)  # the varied values per cell
    rows: list[list[Any]] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return self.n_trials * self.repeats


@dataclass
class DryRun:
    """What a study file will run, and a rough estimate of its time."""

    studies: list[PlannedStudy]
    seconds_per_epoch: float | None = None  # of the base config, from one timed batch

    @property
    def epochs(self) -> int:
        return sum(s.runs * s.epochs for s in self.studies)

    @property
    def minutes(self) -> float | None:
        return None if self.seconds_per_epoch is None else self.epochs * self.seconds_per_epoch / 60


def _planned(spec: StudySpec, space: Space, name: str, n_train: int) -> PlannedStudy:
    try:
        cells = list(space.cells())
    except ConfigError:  # a range without a step: the sampler draws n_trials
        cells = []
    if spec.method.name == "grid":
        n = len(cells)
    else:  # as the worker loop counts: distinct configurations, at most the space's (reuse_results)
        n = min(spec.n_trials, len(cells)) if cells and spec.reuse_results else spec.n_trials
    header = list(dict.fromkeys(k for c in cells for k in c))
    rows = [[c.get(k, "-") for k in header] for c in cells]
    train = config_for(spec.base, {}).train
    # a budget in steps, as the epochs it spans on the base's training split
    epochs = train.epochs if train.steps is None else math.ceil(train.steps / math.ceil(n_train / train.batch_size))
    # the most runs a trial can train: racing's max seeds, each on every fold of a cv study
    return PlannedStudy(name, spec.method.name, n, spec.max_repeats * len(spec.folds), epochs, header, rows)


def data_errors(studies: Sequence[tuple[str, StudySpec, Space | None]], cache: Any, *, every_cell: bool = True) -> list[str]:
    """Problems that only the data shows: a missing objective class, a loss that does not fit the
    class count (a sigmoid loss on multi-class data, class weights of another length), data that
    cannot be prepared (a label map naming a label the data lacks); each once.

    Each cell is checked against the classes of its own config (its ``data.label_map`` may leave
    fewer than the base's); data is loaded again only for a cell whose classes may differ.

    Args:
        studies: ``(origin, spec, space)`` of each study or stage, ``origin`` named in the messages
            (``space`` None: the base alone); a cell whose config is invalid is skipped.
        cache: the :class:`~segtune.study.objective.DataCache` the data is loaded through.
        every_cell: check every cell of a finite space (else each value and both ends of each range).
    """
    from segtune.components.losses import LOSSES
    from segtune.errors import DataError

    errors: list[str] = []
    for origin, spec, space in studies:
        base_config = config_for(spec.base, {})
        try:
            base = cache.get(base_config)
        except (ConfigError, DataError) as err:
            errors.append(f"{origin}: the base config's data: {err}")
            continue  # the cells read it too, or data prepared from the same source
        try:
            spec.check_objective_class(base.class_names, origin=origin)
        except ConfigError as err:
            errors.append(str(err))
        known = {_classes_key(base_config): base}  # data by what its classes depend on
        failed = set()  # the keys of data that could not be loaded: named once, with its first cell
        for cell in [] if space is None else space.probes() if every_cell else space.edge_probes():
            try:
                config = config_for(spec.base, space.changes(cell))
            except ConfigError:  # an invalid cell: named by the config checks
                continue
            where = f"{origin}: the cell " + ", ".join(f"{k}={v}" for k, v in cell.items())
            key = _classes_key(config)
            if key in failed:
                continue
            try:
                if key not in known:
                    try:
                        known[key] = cache.get(config)
                    except (ConfigError, DataError):
                        failed.add(key)
                        raise
                data = known[key]
                if data is not base:  # classes of its own (a label map): checked against them
                    spec.check_objective_class(data.class_names, origin=where)
                LOSSES.build(config.loss.name, config.loss.options, data.n_classes)
            except (ConfigError, DataError) as err:
                errors.append(str(err) if str(err).startswith(where) else f"{where}: {err}")
    return list(dict.fromkeys(errors))


def _classes_key(config: Any) -> str:
    """What the classes of a config's data depend on: the source and its options, the label map and
    the rare-class merging (with merging, also what decides the training pixels it counts); not the
    training share, the colour, the normalisation: cells differing from the base only in those are
    checked against the base's data, and no more data is loaded for them."""
    data = config.data
    key = {"source": data.source, "options": data.options, "label_map": data.label_map,
           "min_class_fraction": data.min_class_fraction}
    if data.min_class_fraction > 0:
        key.update(resize=data.resize, folds=data.folds, fold=data.fold, seed=config.seed)
    return json.dumps(key, sort_keys=True, default=str)


def _seconds_per_epoch(spec: StudySpec, data: Any) -> float:
    """One epoch of the base config, from the fastest of a few timed training batches (after one untimed)."""
    import torch

    from segtune.training.runtime import build_training, grad_scaler, setup_device, train_on_batches

    from segtune.training.precision import resolve_precision

    config = config_for(spec.base, {})  # optimizer.lr: auto stands at the optimizer's default here
    device = setup_device(config.train)
    config, _ = resolve_precision(config, data, device)  # auto: the cached (or newly timed) choice, as runs train
    model, loss_fn, optimizer = build_training(config, data, device)
    model.train()
    bs = min(config.train.batch_size, len(data.train))
    x, y = data.train.images[:bs].to(device), data.train.masks[:bs].to(device)
    step = dict(model=model, loss_fn=loss_fn, optimizer=optimizer, scaler=grad_scaler(config.train.precision),
                device=device, precision=config.train.precision)
    train_on_batches([(x, y)], **step)  # the first batch pays for the kernels' set-up
    times = []
    for _ in range(_TIMED_BATCHES):
        t0 = time.perf_counter()
        train_on_batches([(x, y)], **step)
        times.append(time.perf_counter() - t0)
    per_image = min(times) / bs  # the least disturbed by other processes
    n_train = len(data.train) * (1 + config.augment.n_aug)
    return per_image * (math.ceil(n_train / bs) * bs + len(data.val) * _VAL_COST)


def dry_run(path: str | Path, overrides: Sequence[str] = (), *, timing: bool = True) -> DryRun:
    """Check a study file (staged or not) completely and plan it, without training.

    Args:
        path: the study file.
        overrides: ``--set`` changes of the base.
        timing: time one training batch of the base for the minutes estimate.

    Returns:
        The :class:`DryRun`: per study or stage, its trials, repeats, epochs and cells.

    Raises:
        ConfigError: every problem of the file at once.
    """
    from segtune.study.objective import DataCache
    from segtune.study.stages import is_staged, load_stages, stage_study
    from segtune.study.spec import StudyErrors

    cache = DataCache()
    try:
        if is_staged(path):
            staged = load_stages(path, overrides, every_cell=True)
            studies = [(f"{path}: stage {i + 1} ({s.name})", *stage_study(staged, i, staged.top["base"], {}))
                       for i, s in enumerate(staged.stages)]
        else:
            studies = [(str(path), *load_study(path, overrides, every_cell=True))]
    except StudyErrors as err:  # the data's problems too, of the studies a valid base and objective allow
        raise ConfigError("\n".join([str(err), *data_errors(err.checkable, cache)])) from None
    base_spec = studies[0][1]
    errors = data_errors(studies, cache)
    if errors:
        raise ConfigError("\n".join(errors))
    data = cache.get(config_for(base_spec.base, {}))
    plan = DryRun([_planned(spec, space, spec.name, len(data.train)) for _, spec, space in studies])
    if timing:
        plan.seconds_per_epoch = _seconds_per_epoch(base_spec, data)
    return plan


__all__ = ["DryRun", "PlannedStudy", "data_errors", "dry_run"]
