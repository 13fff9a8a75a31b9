"""Reading a study file: its base config found and its ``set`` changes applied, before validation.

``base`` is looked up next to the study file, then in the current directory, then among the
configs shipped with segtune (``demo.yaml``).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from segtune.config import apply_changes, parse_override, read_yaml, validate_tree
from segtune.errors import ConfigError
from segtune.planning import planned_tree
from segtune.study.entries import check_path
from segtune.study.space import without_auto_lr


def _resolve_base(base: Any, study_path: Path) -> dict[str, Any]:
    if isinstance(base, dict):
        return base
    if not isinstance(base, str):
        raise ConfigError(f"{study_path}: base must be a config file name or an inline config mapping, got {base!r}")
    packaged = Path(str(resources.files("segtune") / "configs" / base))
    for candidate in (study_path.parent / base, Path(base), packaged):
        if candidate.is_file():
            return read_yaml(candidate)
    raise ConfigError(f"{study_path}: base config {base!r} not found next to the study file, in the current "
                      f"directory, or among segtune's configs (demo.yaml)")


def _planned_base(tree: dict[str, Any], origin: str) -> dict[str, Any]:
    """The planned base (see :func:`segtune.planning.planned_tree`), its optimizer section checked
    too (``optimizer.lr: auto`` stands at the default lr, as it does to check a trial's config).

    Raises:
        ConfigError: every problem of every section at once.
    """
    try:
        planned = planned_tree(tree, origin=origin).tree
    except ConfigError:
        validate_tree(without_auto_lr(tree)[0], origin)  # the plan's sections and the optimizer's problems, together
        raise  # the tree is valid before the plan's values only
    validate_tree(without_auto_lr(planned)[0], origin)
    return planned


def _valid_part(base: dict[str, Any], changes: dict[str, Any], origin: str) -> dict[str, Any] | None:
    """The base with each of the ``set`` changes that leaves it valid (the others made it invalid),
    so that the rest of the study is checked on the base as meant; None where the base itself is
    invalid (that error is given). A change valid only after another (loss.alpha after
    loss.name: tversky) is kept too."""
    kept, left = {}, dict(changes)
    while True:
        valid = {}
        for key, value in left.items():
            try:
                _planned_base(apply_changes(base, {**kept, **valid, key: value}), origin)
                valid[key] = value
            except ConfigError:
                pass
        if not valid:
            break
        kept.update(valid)
        left = {k: v for k, v in left.items() if k not in valid}
    try:
        return _planned_base(apply_changes(base, kept), origin)
    except ConfigError:
        return None


def read_study_tree(path: str | Path, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """A study file's mapping with its base resolved and ``set`` (then ``overrides``) applied.

    Returns:
        The tree and the problems of its ``set`` paths (those changes left out) and of the base they
        make, so that a caller can report them with every other problem of the file. A base that
        the changes make invalid is given with those of them that leave it valid (None: it is
        invalid itself).
    """
    path = Path(path)
    tree = read_yaml(path)
    if "base" not in tree:
        raise ConfigError(f"{path}: missing base: a config file (e.g. demo.yaml) or an inline config")
    tree["base"] = _resolve_base(tree["base"], path)
    fixed = tree.pop("set", None) or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: set must map dotted config paths to values, e.g. set: {{data.spacing: 2}}")
    changes = {str(key): value for key, value in fixed.items()}
    for item in overrides:
        keys, value = parse_override(item)
        changes.pop(".".join(keys), None)  # a --set after the file's own set of the same path
        changes[".".join(keys)] = value
    errors = []
    for key in list(changes):
        try:
            check_path(key)
        except ConfigError as err:
            errors.append(f"{path}: set: {err}")
            del changes[key]
    try:
        tree["base"] = _planned_base(apply_changes(tree["base"], changes), f"{path}: base")  # planned once
    except ConfigError as err:
        errors.append(str(err))
        tree["base"] = _valid_part(tree["base"], changes, f"{path}: base")
    tree.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem).lstrip(".") or "study")
    return tree, errors


__all__ = ["read_study_tree"]
