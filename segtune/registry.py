"""One registry pattern for every swappable component (models, losses, optimizers, ...).

A component is a *builder* function. Its positional parameters are what the training code
hands it at build time (for example the model parameters for an optimizer); its keyword-only
parameters are what a user sets in the config. Their defaults and type annotations are the
single place where a component's options, defaults and ranges live::

    OPTIMIZERS = Registry("optimizer")

    @OPTIMIZERS.register("adam")
    def adam(params, /, *, lr: PositiveFloat = 1e-3, weight_decay: NonNegativeFloat = 0.0):
        \"\"\"Adam (Kingma & Ba 2015), torch.optim.Adam.\"\"\"
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    OPTIMIZERS.validate("adam", {"lr": 0.01})   # -> {"lr": 0.01, "weight_decay": 0.0}
    OPTIMIZERS.build("adam", {"lr": 0.01}, model.parameters())
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import pydantic

__all__ = ["Entry", "Registry", "RegistryError", "suggest"]


class RegistryError(ValueError):
    """An unknown component name or an invalid option of a component."""


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    options: type[pydantic.BaseModel]
    summary: str
    check: Callable[[dict[str, Any]], None] | None = None  # a rule between options; raises ValueError


def _options_model(name: str, builder: Callable[..., Any]) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    for param in inspect.signature(builder, eval_str=True).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"option {param.name!r} of {name!r} needs a default")
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        fields[param.name] = (annotation, param.default)
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{name}_options", __config__=config, **fields)


def suggest(name: str, options: list[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest option, or an empty string."""
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry:
    """Named builders of one kind of component.

    Args:
        kind: what the registry holds, used in error messages ("model", "loss", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, check: Callable[[dict[str, Any]], None] | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers ``builder`` under ``name``; names are unique.

        ``check`` gets the validated options and raises ValueError for a rule between them that
        the options' own types cannot say (``tversky``: alpha and beta not both 0).
        """

        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise TypeError(f"{self.kind} {name!r} is registered twice")
            summary = (inspect.getdoc(builder) or "").split("\n\n")[0].replace("\n", " ")
            self._entries[name] = Entry(name, builder, _options_model(name, builder), summary, check)
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        """Return the entry for ``name``.

        Raises:
            RegistryError: unknown name; the message lists the names and suggests one.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}{suggest(str(name), self.names())}; "
                f"choose one of: {', '.join(self.names())}"
            ) from None

    def defaults(self, name: str) -> dict[str, Any]:
        """The options of ``name`` with their default values."""
        return {k: f.default for k, f in self.entry(name).options.model_fields.items()}

    def validate(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Check ``options`` against the builder's keyword-only parameters.

        Returns:
            All options of the component, defaults filled in, values coerced to their types.

        Raises:
            RegistryError: unknown name, unknown option (listing the valid ones), a value
                of the wrong type or out of range (naming the option and the rule), or options
                that break the component's ``check``.
        """
        entry = self.entry(name)
        allowed = list(entry.options.model_fields)
        for key in options:
            if key not in allowed:
                hint = f"; it takes: {', '.join(allowed)}" if allowed else "; it takes no options"
                raise RegistryError(
                    f"{self.kind} {name!r} has no option {key!r}{suggest(key, allowed)}{hint}"
                )
        try:
            valid = dict(entry.options(**options))
        except pydantic.ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in err.errors()
            )
            raise RegistryError(f"{self.kind} {name!r}: {problems}") from None
        if entry.check is not None:
            try:
                entry.check(valid)
            except ValueError as err:
                raise RegistryError(f"{self.kind} {name!r}: {err}") from None
        return valid

    def build(self, name: str, options: dict[str, Any], /, *context: Any) -> Any:
        """Validate ``options`` and call the builder with ``context`` positionally."""
        return self.entry(name).builder(*context, **self.validate(name, options))
