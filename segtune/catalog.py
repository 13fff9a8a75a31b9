"""Every registered component with its options and defaults, read from the registries themselves.

``segtune list`` prints :func:`format_components`; nothing here is written by hand, so the list
cannot drift from the code. It reads the config's sections (their common fields) as well as the
registries, so it sits above :mod:`segtune.config`, not in :mod:`segtune.components`.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import annotated_types
from pydantic.fields import FieldInfo

from segtune.components import AUGMENTATIONS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS
from segtune.config import Config
from segtune.data import SOURCES
from segtune.errors import ConfigError
from segtune.registry import Registry, suggest

__all__ = ["REGISTRIES", "SETTINGS", "common_options", "describe", "format_components", "type_name"]

Option = tuple[str, str, Any, str]  # (option, readable type, default, description or "")

REGISTRIES: dict[str, Registry] = {  # config section -> registry
    "model": MODELS,
    "loss": LOSSES,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "augment": AUGMENTATIONS,
    "data": SOURCES,
}
SETTINGS = ["train"]  # config sections of plain settings (epochs, batch size, early stopping, precision, ...)

_BOUNDS = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
           annotated_types.Lt: ("<", "lt")}


def _constraints(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            parts.append(_constraints(item.metadata))
            continue
        for kind, (sign, attribute) in _BOUNDS.items():
            if isinstance(item, kind):
                parts.append(f"{sign}{getattr(item, attribute)}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"len>={item.min_length}")
    return " ".join(p for p in parts if p)


def type_name(annotation: Any, metadata: list[Any] = ()) -> str:
    """A short readable form of an option's type, e.g. ``float >=0 <1``, ``'a'|'b'``, ``list[int] or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], list(args[1:]) + list(metadata))
    if origin is typing.Literal:
        base = "|".join(repr(a) for a in args)
    elif origin in (typing.Union, types.UnionType):
        base = " or ".join("null" if a is type(None) else type_name(a) for a in args)
    elif origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        base = f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    else:
        base = getattr(annotation, "__name__", str(annotation))
    bounds = _constraints(list(metadata))
    return f"{base} {bounds}" if bounds else base


def _option(key: str, field: FieldInfo) -> Option:
    return key, type_name(field.annotation, field.metadata), field.default, field.description or ""


def describe(registry: Registry) -> list[dict[str, Any]]:
    """``[{"name", "summary", "options": [(option, type, default, description), ...]}, ...]`` per entry, sorted."""
    out = []
    for name in registry.names():
        entry = registry.entry(name)
        options = [_option(key, f) for key, f in entry.options.model_fields.items()]
        out.append({"name": name, "summary": entry.summary, "options": options})
    return out


def common_options(section: str, *, key: str | None = "name") -> list[Option]:
    """``(option, type, default, description)`` of the fields a config section has for every component of its
    kind (all but the ``key`` field that names the component; ``key=None``: every field)."""
    cls = Config.model_fields[section].annotation
    key = "source" if section == "data" else key
    return [_option(k, f) for k, f in cls.model_fields.items() if k != key]


def _option_lines(section: str, options: list[Option], indent: str) -> list[str]:
    lines = []
    for option, kind, default, description in options:
        shown = list(default) if isinstance(default, tuple) else default
        note = f"  # {description}" if description else ""
        lines.append(f"{indent}{section}.{option} = {shown!r}    ({kind}){note}")
    return lines


def format_components(sections: list[str] | None = None) -> str:
    """The text of ``segtune list``: each section's components, one option per line with type and default.

    Raises:
        ConfigError: an unknown section name (one is suggested).
    """
    known = [*REGISTRIES, *SETTINGS]
    chosen = sections or known
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}{suggest(unknown[0], known)}; "
                          f"choose from {', '.join(known)}")
    lines = []
    for section in chosen:
        if section in SETTINGS:  # a section of plain settings: no component to choose
            lines.append(f"{section}  (settings of every run)")
            lines += _option_lines(section, common_options(section, key=None), "      ")
            lines.append("")
            continue
        key = "source" if section == "data" else "name"
        lines.append(f"{section}  ({section}.{key}: one of {', '.join(REGISTRIES[section].names())})")
        common = common_options(section)
        if common:
            lines.append("  common options:")
            lines += _option_lines(section, common, "      ")
        for item in describe(REGISTRIES[section]):
            lines.append(f"  {item['name']}: {item['summary']}")
            lines += _option_lines(section, item["options"], "      ")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
