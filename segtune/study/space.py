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

A condition may read several entries; its cases are keyed by their values, comma-separated::

    optimizer.lr:
      when: [optimizer.name, loss.name]
      cases: {"adam, bce": 2.0e-4, "adam, switching": 1.0e-3}   # a single value, a list or a range

A study's ``variants`` (named joint settings) form one more categorical entry, ``variant``, whose
values are the labels; conditions may read it, and :meth:`Space.changes` gives a label's settings.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from segtune.config import Config, apply_changes, build_config
from segtune.errors import ConfigError
from segtune.registry import suggest
from segtune.study.entries import Range, SpaceErrors, case_key, check_path, parse_values, parse_variants

_PRIMITIVE = (str, int, float, bool, type(None))
AUTO_LR = "auto"  # optimizer.lr: auto, found once per optimizer, loss and model by the LR range test


@dataclass(frozen=True)
class Param:
    """One sampled value: a config ``path``, its choices or range, and its condition if any.

    ``when`` names the entries the condition reads (one or several) and ``case`` the values they
    must have, in the same order; both are None for an unconditional entry.
    """

    path: str
    name: str  # the Optuna parameter name: the path, or ``path[case]`` for a conditional one
    choices: tuple[Any, ...] | None = None
    range: Range | None = None
    when: tuple[str, ...] | None = None
    case: tuple[Any, ...] | None = None

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether this entry is set where the entries already chosen have ``values``."""
        return self.when is None or all(w in values and values[w] == c for w, c in zip(self.when, self.case))

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


VARIANT = "variant"  # the parameter a study's variants are chosen by; its values are their labels


class Space:
    """A parsed, checked search space, with the study's variants if it has any.

    Args:
        raw: the ``space`` mapping of a study file (may be empty when there are variants).
        variants: the ``variants`` list of a study file: each a ``label`` and dotted config paths;
            they form one categorical entry, ``variant``, whose values are the labels.

    Raises:
        SpaceErrors: every problem at once, one line each: an unknown path (with a suggestion), an
            empty list, an invalid range, a condition on a path that is not a categorical entry of
            the space, a bad case, a variant without a label, or a path set both by the variants
            and by the space.
    """

    def __init__(self, raw: dict[str, Any] | None, variants: list[dict[str, Any]] | None = None) -> None:
        raw = raw or {}
        if not isinstance(raw, dict) or not (raw or variants):
            raise SpaceErrors(["space: give at least one config path to vary, e.g. optimizer.name: [adam, sgd], "
                               "or a list of variants"])
        self.variants, problems = parse_variants(variants) if variants is not None else ({}, [])
        # settings that follow the value of an entry where a trial does not set them itself: a
        # stage's winners per value ({"optimizer.name": {"adam": {"optimizer.lr": 0.001}}})
        self.follows: dict[str, dict[str, dict[str, Any]]] = {}
        self.params: list[Param] = []
        if self.variants:
            self.params.append(Param(path=VARIANT, name=VARIANT, choices=tuple(self.variants)))
        conditional, bad = {}, set()  # bad: the paths with a problem of their own
        for path, spec in raw.items():
            try:
                check_path(str(path))
            except ConfigError as err:
                problems.append(f"space: {err}")
                bad.add(path)
                continue
            both = sorted(label for label, values in self.variants.items() if path in values)
            if both:
                problems.append(f"space: {path} is set by the variants ({', '.join(both)}) too; "
                                f"set it in one place: the space or the variants")
            elif isinstance(spec, dict) and "when" in spec:
                conditional[path] = spec
            else:
                try:
                    choices, rng = parse_values(path, spec)
                    self.params.append(Param(path=path, name=path, choices=choices, range=rng))
                except ConfigError as err:
                    problems.append(str(err))
                    bad.add(path)
        for path, spec in conditional.items():
            when = spec.get("when")
            if not bad & set(map(str, when if isinstance(when, list) else [when])):  # else its condition's problem
                problems += self._add_conditional(path, spec)
        if problems:
            raise SpaceErrors(problems, self if self.params else None)

    def _add_conditional(self, path: str, spec: dict[str, Any]) -> list[str]:
        """Add the cases of a conditional entry; returns the problem of each bad part (its good cases added)."""
        roots = {p.path: p for p in self.roots}
        extra = set(spec) - {"when", "cases"}
        when, cases = spec.get("when"), spec.get("cases")
        if extra or not isinstance(cases, dict) or not cases:
            return [f"space: {path}: a conditional entry takes exactly when: PATH (or a list of paths) "
                    f"and cases: {{VALUE: values}}, got keys {sorted(spec)}"]
        names = list(when) if isinstance(when, list) else [when]
        categorical = [p for p, r in roots.items() if r.choices]
        problems = [f"space: {path}: when: {name!r} must name a list entry of the space (or variant)"
                    f"{suggest(str(name), categorical)}" for name in names if name not in categorical]
        if len(set(map(str, names))) != len(names):
            problems.append(f"space: {path}: when names {names} with a path twice; name each once")
        if problems:
            return problems
        conditions = [roots[n] for n in names]
        keys: dict[tuple, Any] = {}
        for key, values in cases.items():
            try:
                case = case_key(key, conditions, path)
                shown = ", ".join(map(str, case))
                if case in keys:  # "adam, dice" and "adam,dice": one case given twice, one of them lost
                    raise ConfigError(f"space: {path}: the cases {keys[case]!r} and {key!r} are the same case "
                                      f"({shown}); give it once")
                keys[case] = key
                choices, rng = parse_values(f"{path} (case {shown})", values if isinstance(values, (list, dict))
                                            else [values])  # a single value: that value alone
            except ConfigError as err:
                problems.append(str(err))
                continue
            self.params.append(Param(path=path, name=f"{path}[{shown}]", choices=choices, range=rng,
                                     when=tuple(names), case=case))
        return problems

    @property
    def roots(self) -> list[Param]:
        return [p for p in self.params if p.when is None]

    def changes(self, values: dict[str, Any]) -> dict[str, Any]:
        """The dotted config changes of a trial's ``values``: its variant's settings in place of its
        label, then the settings that follow its values (:attr:`follows`) that it does not set."""
        changes = dict(values)
        if VARIANT in values and self.variants:
            changes = {**self.variants[values[VARIANT]], **{k: v for k, v in values.items() if k != VARIANT}}
        for path, table in self.follows.items():
            for key, value in table.get(str(changes.get(path)), {}).items() if path in changes else ():
                changes.setdefault(key, value)
        return changes

    def _dependents_now(self, values: dict[str, Any], root: Param) -> list[Param]:
        """The conditional entries whose conditions ``values`` meets, with ``root`` the last one chosen."""
        return [p for p in self.params if p.when and root.path in p.when and p.path not in values
                and p.applies(values)]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` for a value of every entry that applies; returns ``{path: value}`` (the
        variant by its label: :meth:`changes` gives its settings)."""
        values: dict[str, Any] = {}
        for root in self.roots:
            values[root.path] = root.suggest(trial)
            for dep in self._dependents_now(values, root):
                values[dep.path] = dep.suggest(trial)
        return values

    def _groups(self) -> list[list[Param]]:
        """The roots in groups that a condition on several of them ties together: one grid dimension each."""
        groups: list[list[Param]] = []
        for root in self.roots:
            tied = [g for g in groups if any(p.when and root.path in p.when and any(r.path in p.when for r in g)
                                             for p in self.params)]
            merged = [r for g in tied for r in g] + [root]
            groups = [g for g in groups if g not in tied] + [merged]
        order = {r.path: i for i, r in enumerate(self.roots)}
        return sorted((sorted(g, key=lambda r: order[r.path]) for g in groups), key=lambda g: order[g[0].path])

    def grid(self) -> dict[str, list[Any]]:
        """The Optuna grid: one dimension per unconditional entry (or per group of entries that one
        condition names together).

        An entry with conditional dependents becomes one dimension of JSON-encoded assignments
        (``{"optimizer.name": "sgd", "optimizer.lr": 0.01}``), so the grid holds each valid
        combination once and no meaningless one.
        """
        return {" x ".join(r.name for r in group): self._grid_dimension(group)[1] for group in self._groups()}

    def _grid_dimension(self, group: list[Param]) -> tuple[list[dict[str, Any]], list[Any]]:
        """The cells of one dimension and their Optuna-stored encodings."""
        cells = []
        for combo in itertools.product(*(r.grid_values() for r in group)):
            roots = {r.path: v for r, v in zip(group, combo)}
            deps = [p for p in self.params if p.when and set(p.when) <= set(roots) and p.applies(roots)]
            for values in itertools.product(*(d.grid_values() for d in deps)):
                cells.append({**roots, **{d.path: v for d, v in zip(deps, values)}})
        plain = len(group) == 1 and not any(p.when and group[0].path in p.when for p in self.params)
        return cells, [_encode(c[group[0].path]) if plain else _encode(c) for c in cells]

    def sample_grid(self, trial: Any) -> dict[str, Any]:
        """Ask a grid trial for its cell; returns ``{path: value}``."""
        values: dict[str, Any] = {}
        for name, group in zip(self.grid(), self._groups()):
            cells, encoded = self._grid_dimension(group)
            values.update(cells[encoded.index(trial.suggest_categorical(name, encoded))])
        return values

    def not_finite(self) -> list[str]:
        """The problem of every entry a grid cannot take (a range of floats without a step), one each."""
        problems = []
        for param in self.params:
            try:
                param.grid_values()
            except ConfigError as err:
                problems.append(str(err))
        return problems

    def n_grid_cells(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def cells(self) -> Iterator[dict[str, Any]]:
        """Every cell of the grid as ``{path: value}``, in the grid's order.

        Raises:
            ConfigError: a range without a step (the space is not finite).
        """
        dims = [self._grid_dimension(group)[0] for group in self._groups()]
        for combo in itertools.product(*dims):
            yield {k: v for cell in combo for k, v in cell.items()}

    def _complete(self, roots: dict[str, Any]) -> dict[str, Any]:
        """``roots`` with every conditional entry that applies to them at its centre."""
        return {**roots, **{p.path: p.centre() for p in self.params if p.when and p.applies(roots)}}

    def edge_probes(self) -> Iterator[dict[str, Any]]:
        """Each choice and each end of a range, the other entries at their centre."""
        # each choice and each end of a range, the other entries at their centre: the ends of two
        # ranges together (tversky's alpha = beta = 0) are a corner no draw reaches
        first = {root.path: root.centre() for root in self.roots}
        yield self._complete(first)
        for param in self.params:
            for value in param.probe_values():
                roots = {**first, param.path: value} if param.when is None else {**first, **dict(zip(param.when,
                                                                                                     param.case))}
                probe = self._complete(roots)
                if param.when is not None:
                    probe[param.path] = value
                yield probe

    def probes(self) -> list[dict[str, Any]]:
        """The values that validate the space: every cell of a finite space, else every choice and
        both ends of every range with the other entries at their centre."""
        try:
            return list(self.cells())
        except ConfigError:
            return list(self.edge_probes())

    def invalid(self, base: dict[str, Any], probes: Sequence[dict[str, Any]]) -> list[str]:
        """The error of every probe whose config is invalid, one line each."""
        errors = []
        for probe in probes:
            try:
                config_for(base, self.changes(probe))
            except ConfigError as err:
                shown = ", ".join(f"{k}={v!r}" for k, v in probe.items())
                errors.append(f"space: the config for {shown} is invalid:\n{err}")
        return errors

    def validate_against(self, base: dict[str, Any]) -> int:
        """Build the config for every choice and both ends of every range, before any trial.

        Returns:
            The number of configs built.

        Raises:
            ConfigError: naming the values that make an invalid config, and the config's error.
        """
        probes = list(self.edge_probes())
        errors = self.invalid(base, probes)
        if errors:
            raise ConfigError(errors[0])
        return len(probes)


def config_for(base: dict[str, Any], values: dict[str, Any], *, auto_lr: Callable[[Config], float] | None = None,
               **top: Any) -> Config:
    """The base config tree with ``values`` (``{dotted.path: value}``) and top-level ``top`` set.

    ``optimizer.lr: auto`` takes the lr that ``auto_lr(config)`` finds for the config built with
    the optimizer's default lr; without ``auto_lr`` (validation) the default lr stands in.
    """
    tree, auto = without_auto_lr(apply_changes({**base, **top}, values))
    if auto and auto_lr is not None:
        tree["optimizer"]["lr"] = auto_lr(build_config(tree, origin="study trial"))
    return build_config(tree, origin="study trial")


def without_auto_lr(tree: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``tree`` with an ``optimizer.lr: auto`` taken out (the optimizer's default lr stands in until the
    range test's is known; ``tree`` itself is not changed), and whether it had one."""
    optimizer = tree.get("optimizer")
    if not (isinstance(optimizer, dict) and optimizer.get("lr") == AUTO_LR):
        return tree, False
    return {**tree, "optimizer": {k: v for k, v in optimizer.items() if k != "lr"}}, True


__all__ = ["AUTO_LR", "VARIANT", "Param", "Space", "SpaceErrors", "check_path", "config_for", "without_auto_lr"]
