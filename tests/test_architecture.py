"""The architecture: one direction of flow between the subpackages, no private names across them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import segtune

PACKAGE = Path(segtune.__file__).parent
# Lowest first: a module may import its own layer and the layers before it, never a later one.
LAYERS = [
    {"registry", "errors"},
    {"components"},
    {"data"},
    {"config", "planning"},
    {"catalog"},
    {"training"},
    {"study"},
    {"report"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    """The top-level part of segtune that ``path`` belongs to: ``training``, ``config``, ..."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every ``segtune.X`` import in ``path`` (also inside functions, not under ``if TYPE_CHECKING``):
    (line, module, names)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test).endswith("TYPE_CHECKING") for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segtune":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "segtune"]
    return found


def _target(module: str, names: list[str]) -> list[str]:
    parts = module.split(".")
    if len(parts) > 1:
        return [parts[1]]
    return names  # `from segtune import x`: x is the part


def test_the_layer_table_names_every_part_of_the_package():
    assert {_part(p) for p in _modules()} <= set(RANK)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_later_layer(path):
    # e.g. training/pretrain.py importing segtune.report would break the flow (training never reports)
    own = RANK[_part(path)]
    upward = [f"line {line}: {module}" for line, module, names in _imports(path)
              for part in _target(module, names) if part in RANK and RANK[part] > own]
    assert not upward, f"{path.relative_to(PACKAGE)} imports a later layer: {upward}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_from_another_part(path):
    own = _part(path)
    private = [f"line {line}: {module}.{name}" for line, module, names in _imports(path) for name in names
               if name.startswith("_") and not name.endswith("__") and _target(module, [name])[0] != own]
    assert not private, f"{path.relative_to(PACKAGE)} imports private names: {private}"


def test_every_module_declares_its_public_names():
    missing = [str(p.relative_to(PACKAGE)) for p in _modules()
               if p.name != "__main__.py" and "__all__" not in p.read_text()]
    assert not missing, f"modules without __all__: {missing}"


@pytest.mark.parametrize("path", [p for p in _modules() if p.name != "__main__.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_name_in_all_exists(path):
    # a name listed but not defined breaks `from segtune.x import *` and the documented API
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(("segtune",) + (parts[:-1] if parts[-1] == "__init__" else parts))
    module = importlib.import_module(name)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
