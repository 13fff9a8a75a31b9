"""The plan applied to a config: the settings a config does not set, planned from its data.

:func:`plan_config` is what loading a config does (:func:`segtune.config.load_config`,
``segtune train --data DIR``): the tree as the user wrote it (YAML and ``--set``) gets the
value of :func:`segtune.data.plan.plan` for every key it does not set, where ``plan: auto`` (the
default) and the source reads files; then it is validated. The rules and their reasons are in
:mod:`segtune.data.plan`; the saved ``config.yaml`` of a run holds the result, so loading it
again plans nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segtune.config import Config, apply_changes, component_takes, read_yaml, validate_tree, with_overrides
from segtune.data.fingerprint import detect_source, survey
from segtune.data.plan import DEPENDS_ON, PLAN_KEYS, PlanReport, fill_in, given, plan
from segtune.errors import DataError

__all__ = ["PLANNED_SOURCES", "PlannedConfig", "data_plan", "plan_config", "planned_tree"]


PLANNED_SOURCES = ("folder", "nifti", "oxford_pet")  # read files; demo and synthetic keep their own settings


def _takes(tree: dict[str, Any], key: str, changes: dict[str, Any]) -> str | None:
    """None where the config (``tree`` with the planned ``changes``) takes ``key``, else why not."""
    section, option = key.split(".", 1)
    return component_takes(section, option, apply_changes(tree, changes) if changes else tree)


def _on_gpu(device: str) -> bool:
    return torch.cuda.is_available() if device == "auto" else not device.startswith("cpu")


@dataclass(frozen=True)
class PlannedConfig:
    """A config with the plan's values filled in (``tree`` before validation), and the plan's report."""

    config: Config | None
    tree: dict[str, Any]
    report: PlanReport


def planned_tree(tree: dict[str, Any], origin: str = "config", *, explain: bool = False) -> PlannedConfig:
    """``tree`` (YAML and ``--set``, as the user wrote them) with the plan's value of every key it
    does not set, where ``plan`` is ``auto`` and the source reads files (:data:`PLANNED_SOURCES`).

    Only file headers are read (:func:`segtune.data.fingerprint.survey`), and none where the tree
    already sets every key the plan could (a saved run's config). ``explain`` makes the plan also
    where it is not applied (``plan: off``), for ``segtune inspect``. The result's ``config`` is None.

    Raises:
        ConfigError: the tree is invalid (the optimizer section is checked later: it is not planned,
            and a study's ``optimizer.lr: auto`` is resolved per trial).
        DataError: a file header that cannot be read.
    """
    # a section whose name the plan chooses may set its options already (augment.intensity without
    # augment.name: the planned flip's): it is checked with the planned name, in plan_config
    unnamed = {key.split(".")[0] for key in PLAN_KEYS if key.endswith(".name") and not given(tree, key)[0]}
    config = validate_tree({k: v for k, v in tree.items() if k != "optimizer" and k not in unnamed}, origin)
    if config.data.source not in PLANNED_SOURCES:
        return PlannedConfig(None, tree, PlanReport({}, "no plan", [], {}, {}))
    if config.plan == "off" and not explain:
        return PlannedConfig(None, tree, PlanReport({}, "off", [], {}, {}))
    if not explain and all(given(tree, k)[0] or _takes(tree, k, {}) for k in PLAN_KEYS):
        return PlannedConfig(None, tree, PlanReport({}, "applied", [], {}, {}))
    head = survey(config.data.source, config.data.options)
    if not head["sizes"]:  # no files where data.path points: the source's own error says so when it reads them
        return PlannedConfig(None, tree, PlanReport({}, "no plan", [], {}, {}))
    settings = {k: v for k in DEPENDS_ON for is_set, v in [given(tree, k)] if is_set}
    entries = plan(head, settings=settings, gpu=_on_gpu(config.train.device))
    changes, report = fill_in(tree, entries, lambda key, planned: _takes(tree, key, planned))
    if config.plan == "off":
        return PlannedConfig(None, tree, PlanReport(report.entries, "off", [], report.overridden, report.unused))
    return PlannedConfig(None, apply_changes(tree, changes), report)


def plan_config(tree: dict[str, Any], origin: str = "config", *, explain: bool = False) -> PlannedConfig:
    """:func:`planned_tree`, validated: ``config`` is the run's config.

    Example:
        >>> planned = plan_config({"data": {"source": "folder", "path": "cells"}})  # doctest: +SKIP
        >>> planned.config.train.patch_size, planned.report.applied  # doctest: +SKIP
        ((256, 256), ['data.normalize', ..., 'train.patience'])
    """
    planned = planned_tree(tree, origin, explain=explain)
    suffix = " with the plan's values (see segtune inspect; plan: off turns it off)" if planned.report.applied else ""
    return PlannedConfig(validate_tree(planned.tree, origin + suffix), planned.tree, planned.report)


def data_plan(spec: str | None, overrides: list[str] = (), *, explain: bool = False) -> PlannedConfig:
    """The planned config of a dataset folder, a YAML config file or ``--set`` items alone, and its plan.

    Args:
        spec: a dataset folder (its layout names the source), a YAML config file, or None
            (``overrides`` say it all).
        overrides: ``--set`` items such as ``data.source=nifti`` or ``data.axis=0``.
        explain: make the plan also where it is not applied (``plan: off``), as ``inspect`` shows it.

    Raises:
        DataError: ``spec`` is neither a folder nor a file.
    """
    if spec is None:
        tree, origin = with_overrides({}, overrides), "--set"
    elif (path := Path(spec).expanduser()).is_dir():
        tree, origin = with_overrides({"data": {"source": detect_source(path), "path": str(path)}}, overrides), str(path)
    elif path.is_file():
        tree, origin = with_overrides(read_yaml(path), overrides), str(path)
    else:
        raise DataError(f"{spec}: no such dataset folder or config file")
    return plan_config(tree, origin, explain=explain)
