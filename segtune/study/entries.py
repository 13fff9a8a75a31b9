"""The pieces a space entry is read from: config paths, value lists, ranges, variants, case keys."""

from __future__ import annotations

from typing import Any

import pydantic

from segtune.config import Component, Config
from segtune.errors import ConfigError
from segtune.registry import suggest


class Range(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> "Range":
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


def parse_values(path: str, spec: Any) -> tuple[tuple[Any, ...] | None, Range | None]:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"space: {path}: the list of values is empty; give at least one value")
        seen = [repr(v) for v in spec]
        twice = [v for v, r in zip(spec, seen) if seen.count(r) > 1]
        if twice:  # a grid would count a cell twice and never end: Optuna draws past a used-up grid
            raise ConfigError(f"space: {path}: the value {twice[0]!r} is listed twice; list each value once")
        return tuple(spec), None
    if isinstance(spec, dict):
        try:
            return None, Range.model_validate(spec)
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


class SpaceErrors(ConfigError):
    """Every problem of a space (or of its variants) at once: ``problems``, one message each, each
    naming its path and the fix; the error's text is them, one a line. ``partial`` is the space of
    the entries without a problem (None when there is none), so that a caller can check its values too."""

    def __init__(self, problems: list[str], partial: Any = None) -> None:
        super().__init__("\n".join(problems))
        self.problems, self.partial = list(problems), partial


def parse_variants(raw: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``variants:`` -> ({label: {dotted path: value}}, problems): every entry and path checked, the
    problem of each bad one listed (and that entry, or path, left out) instead of stopping at the first."""
    if not isinstance(raw, list) or not raw:
        return {}, ["variants: give a list of entries, each a label and dotted config paths, e.g. "
                    "variants: [{label: adam-step, optimizer.name: adam, scheduler.name: step}]"]
    variants: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for i, entry in enumerate(raw):
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(label, str) or not label.strip():
            problems.append(f"variants[{i}]: each variant needs a label (its name in the report) and its "
                            f"settings, e.g. {{label: unet-ce, model.name: unet, loss.name: ce}}; got {entry!r}")
            continue
        if label in variants:
            problems.append(f"variants[{i}]: the label {label!r} is used twice; give each variant its own label")
            continue
        values = {}
        for path, value in ((str(k), v) for k, v in entry.items() if k != "label"):
            try:
                check_path(path)
                values[path] = value
            except ConfigError as err:
                problems.append(f"variants[{i}] ({label}): {err}")
        variants[label] = values
    return variants, problems


def case_key(key: Any, roots: list[Any], path: str) -> tuple[Any, ...]:
    """A case's key as a tuple of root values: ``sgd`` for one root, ``"adam, dice"`` for several."""
    parts = [key] if len(roots) == 1 else (str(key).split(",") if not isinstance(key, (list, tuple)) else list(key))
    if len(parts) != len(roots):
        raise ConfigError(f"space: {path}: case {key!r} must give one value per condition "
                          f"({', '.join(r.path for r in roots)}), separated by commas, e.g. "
                          f"\"{', '.join(str(r.choices[0]) for r in roots)}\"")
    case = []
    for part, root in zip(parts, roots):
        found = [c for c in root.choices if c == part or (isinstance(part, str) and str(c) == part.strip())]
        if not found:
            which = f"case {key!r}" if len(roots) == 1 else f"case {key!r}: {str(part).strip()!r}"
            raise ConfigError(f"space: {path}: {which} is not a value of {root.path}; "
                              f"choose from {list(root.choices)}{suggest(str(part).strip(), map(str, root.choices))}")
        case.append(found[0])
    return tuple(case)


__all__ = ["Range", "SpaceErrors", "case_key", "check_path", "parse_values", "parse_variants"]
