"""The search space of a study: dotted config paths and the values each may take.

A space maps config paths to values::

    optimizer.name: [adam, sgd]                       # a list: categorical
    train.batch_size: {low: 4, high: 16, step: 4}     # integers (low and high are integers)
    optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}
    optimizer.momentum:                               # conditional: only where the case matches
      when: optimizer.name
      cases:
        sgd: [0.0, 0.9]

A conditional entry names another categorical entry of the space (``when``) and gives, per
value of that entry, a list or a range (``cases``); for values without a case the path keeps
the base config's value. The same path may be both unconditional in the base and conditional
here (e.g. ``optimizer.lr`` per optimizer). A grid needs a list or a ``step`` for every entry.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pydantic

from segtune.config import Component, Config, apply_changes, build_config
from segtune.errors import ConfigError
from segtune.registry import suggest

_PRIMITIVE = (str, int, float, bool, type(None))
AUTO_LR = "auto"  # optimizer.lr: auto, found once per optimizer, loss and model by the LR range test


class _Range(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> "_Range":
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low} high={self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log ranges need low > 0 and no step")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high)) and isinstance(self.step, (int, type(None)))


@dataclass(frozen=True)
class Param:
    """One sampled value: a config ``path``, its choices or range, and its condition if any."""

    path: str
    name: str  # the Optuna parameter name: the path, or ``path[case]`` for a conditional one
    choices: tuple[Any, ...] | None = None
    range: _Range | None = None
    when: str | None = None
    case: Any = None

    def grid_values(self) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        r = self.range
        if r.is_int:  # integers: every one between low and high, or every step-th
            return list(range(r.low, r.high + 1, r.step or 1))
        if r.step is None:
            raise ConfigError(f"space: {self.path}: a grid needs a list of values or a step; "
                              f"write e.g. {self.path}: [{r.low}, {r.high}] or add step")
        n = int(math.floor((r.high - r.low) / r.step + 1e-9)) + 1
        return [round(r.low + i * r.step, 12) for i in range(n)]

    def centre(self) -> Any:
        """The value the other entries' probes use: the first choice, or the middle of the range."""
        if self.choices is not None:
            return self.choices[0]
        r = self.range
        if r.is_int or r.step is not None:
            values = self.grid_values()
            return values[len(values) // 2]
        return math.sqrt(r.low * r.high) if r.log else (r.low + r.high) / 2

    def probe_values(self) -> list[Any]:
        """The values that validate this entry: every choice, or both ends of the range."""
        return list(self.choices) if self.choices is not None else [self.range.low, self.range.high]

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return _decode(self.choices, trial.suggest_categorical(self.name, [_encode(c) for c in self.choices]))
        r = self.range
        if r.is_int:
            return trial.suggest_int(self.name, r.low, r.high, step=r.step or 1, log=r.log)
        return trial.suggest_float(self.name, float(r.low), float(r.high), log=r.log, step=r.step)


def _encode(value: Any) -> Any:
    """Optuna stores only primitive choices: lists and mappings become JSON text."""
    return value if isinstance(value, _PRIMITIVE) else json.dumps(value, sort_keys=True)


def _decode(choices: tuple[Any, ...], encoded: Any) -> Any:
    for choice in choices:
        if _encode(choice) == encoded:
            return choice
    raise ValueError(f"{encoded!r} is not one of {choices}")


def _parse_values(path: str, spec: Any) -> tuple[tuple[Any, ...] | None, _Range | None]:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"space: {path}: the list of values is empty; give at least one value")
        return tuple(spec), None
    if isinstance(spec, dict):
        try:
            return None, _Range.model_validate(spec)
        except pydantic.ValidationError as err:
            msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'range'}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"space: {path}: invalid range {spec!r}: {msg}; "
                              f"write {{low: A, high: B}} with optional log: true or step: S") from None
    raise ConfigError(f"space: {path}: got {spec!r}; give a list of values, a range {{low: A, high: B}} "
                      f"or a conditional {{when: PATH, cases: {{VALUE: ...}}}}")


def check_path(path: str) -> None:
    """Check a dotted config path; a misspelt section or option fails with the closest valid name.

    Raises:
        ConfigError: no such section, field or option of any component of the section.
    """
    parts = path.split(".")
    fields = Config.model_fields
    if parts[0] not in fields:
        raise ConfigError(f"unknown config path {path!r}: no section or field {parts[0]!r}"
                          f"{suggest(parts[0], list(fields))}")
    section = fields[parts[0]].annotation
    if len(parts) < 2 or not isinstance(section, type) or not issubclass(section, pydantic.BaseModel):
        return
    allowed = set(section.model_fields)
    if issubclass(section, Component):
        for name in section.registry.names():
            allowed |= set(section.registry.entry(name).options.model_fields)
    if parts[1] not in allowed:
        raise ConfigError(f"unknown config path {path!r}: {parts[0]} has no option {parts[1]!r}"
                          f"{suggest(parts[1], sorted(allowed))}")


class Space:
    """A parsed, checked search space.

    Args:
        raw: the ``space`` mapping of a study file.

    Raises:
        ConfigError: an unknown path (with a suggestion), an empty list, an invalid range, or a
            condition on a path that is not a categorical entry of the space.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        if not isinstance(raw, dict) or not raw:
            raise ConfigError("space: give at least one config path to vary, e.g. optimizer.name: [adam, sgd]")
        self.params: list[Param] = []
        conditional = {}
        for path, spec in raw.items():
            try:
                check_path(str(path))
            except ConfigError as err:
                raise ConfigError(f"space: {err}") from None
            if isinstance(spec, dict) and "when" in spec:
                conditional[path] = spec
                continue
            choices, rng = _parse_values(path, spec)
            self.params.append(Param(path=path, name=path, choices=choices, range=rng))
        roots = {p.path: p for p in self.params}
        for path, spec in conditional.items():
            extra = set(spec) - {"when", "cases"}
            when, cases = spec.get("when"), spec.get("cases")
            if extra or not isinstance(cases, dict) or not cases:
                raise ConfigError(f"space: {path}: a conditional entry takes exactly when: PATH and "
                                  f"cases: {{VALUE: values}}, got keys {sorted(spec)}")
            root = roots.get(when)
            if root is None or root.choices is None:
                raise ConfigError(f"space: {path}: when: {when!r} must name a list entry of the space"
                                  f"{suggest(str(when), [p for p, r in roots.items() if r.choices])}")
            for case, values in cases.items():
                if case not in root.choices:
                    raise ConfigError(f"space: {path}: case {case!r} is not a value of {when}; "
                                      f"choose from {list(root.choices)}{suggest(str(case), map(str, root.choices))}")
                choices, rng = _parse_values(f"{path} (case {case})", values)
                self.params.append(Param(path=path, name=f"{path}[{case}]", choices=choices, range=rng,
                                         when=when, case=case))

    @property
    def roots(self) -> list[Param]:
        return [p for p in self.params if p.when is None]

    def dependents(self, root: Param, value: Any) -> list[Param]:
        return [p for p in self.params if p.when == root.path and p.case == value]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` for a value of every entry that applies; returns ``{path: value}``."""
        values: dict[str, Any] = {}
        for root in self.roots:
            values[root.path] = root.suggest(trial)
            for dep in self.dependents(root, values[root.path]):
                values[dep.path] = dep.suggest(trial)
        return values

    def grid(self) -> dict[str, list[Any]]:
        """The Optuna grid: one dimension per unconditional entry.

        An entry with conditional dependents becomes one dimension of JSON-encoded assignments
        (``{"optimizer.name": "sgd", "optimizer.lr": 0.01}``), so the grid holds each valid
        combination once and no meaningless one.
        """
        return {root.name: self._grid_dimension(root)[1] for root in self.roots}

    def _grid_dimension(self, root: Param) -> tuple[list[dict[str, Any]], list[Any]]:
        """The cells of one dimension and their Optuna-stored encodings."""
        cells = []
        for value in root.grid_values():
            deps = self.dependents(root, value)
            for combo in itertools.product(*(d.grid_values() for d in deps)):
                cells.append({root.path: value, **{d.path: v for d, v in zip(deps, combo)}})
        has_dependents = any(p.when == root.path for p in self.params)
        return cells, [_encode(c) if has_dependents else _encode(c[root.path]) for c in cells]

    def sample_grid(self, trial: Any) -> dict[str, Any]:
        """Ask a grid trial for its cell; returns ``{path: value}``."""
        values: dict[str, Any] = {}
        for root in self.roots:
            cells, encoded = self._grid_dimension(root)
            values.update(cells[encoded.index(trial.suggest_categorical(root.name, encoded))])
        return values

    def n_grid_cells(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def _probes(self) -> Iterator[dict[str, Any]]:
        # each choice and each end of a range, the other entries at their centre: the ends of two
        # ranges together (tversky's alpha = beta = 0) are a corner no draw reaches
        first = {}
        for root in self.roots:
            first[root.path] = root.centre()
            first.update({d.path: d.centre() for d in self.dependents(root, first[root.path])})
        yield dict(first)
        for param in self.params:
            for value in param.probe_values():
                probe = dict(first)
                if param.when is None:
                    for dep in self.dependents(param, first[param.path]):
                        probe.pop(dep.path, None)
                    probe[param.path] = value
                    probe.update({d.path: d.centre() for d in self.dependents(param, value)})
                else:
                    root = next(p for p in self.roots if p.path == param.when)
                    for dep in self.dependents(root, first[root.path]):
                        probe.pop(dep.path, None)
                    probe[root.path] = param.case
                    probe.update({d.path: d.centre() for d in self.dependents(root, param.case)})
                    probe[param.path] = value
                yield probe

    def validate_against(self, base: dict[str, Any]) -> int:
        """Build the config for every choice and both ends of every range, before any trial.

        Returns:
            The number of configs built.

        Raises:
            ConfigError: naming the values that make an invalid config, and the config's error.
        """
        n = 0
        for probe in self._probes():
            try:
                config_for(base, probe)
            except ConfigError as err:
                shown = ", ".join(f"{k}={v!r}" for k, v in probe.items())
                raise ConfigError(f"space: the config for {shown} is invalid:\n{err}") from None
            n += 1
        return n


def config_for(base: dict[str, Any], values: dict[str, Any], *, auto_lr: Callable[[Config], float] | None = None,
               **top: Any) -> Config:
    """The base config tree with ``values`` (``{dotted.path: value}``) and top-level ``top`` set.

    ``optimizer.lr: auto`` takes the lr that ``auto_lr(config)`` finds for the config built with
    the optimizer's default lr; without ``auto_lr`` (validation) the default lr stands in.
    """
    tree = apply_changes({**base, **top}, values)
    optimizer = tree.get("optimizer")
    if isinstance(optimizer, dict) and optimizer.get("lr") == AUTO_LR:
        del optimizer["lr"]
        if auto_lr is not None:
            optimizer["lr"] = auto_lr(build_config(tree, origin="study trial"))
    return build_config(tree, origin="study trial")


__all__ = ["AUTO_LR", "Param", "Space", "check_path", "config_for"]
