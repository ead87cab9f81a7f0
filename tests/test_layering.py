"""
The direction of imports between the layers of DESIGN.md: a module may
import from its own layer or a layer above it, never from one below.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "mailframe"

#: Layers from the top (imported by everything) down.
LAYERS = [
    ("values", {"mailframe.envelope", "mailframe.errors", "mailframe.reply",
                "mailframe.address", "mailframe.verdict"}),
    ("core", {"mailframe.core"}),
    ("contracts", {"mailframe.interfaces", "mailframe.components"}),
    ("adapters", {"mailframe.protocols", "mailframe.logs"}),
    ("built-ins", {"mailframe.policies", "mailframe.stores", "mailframe.routing",
                   "mailframe.transports"}),
    ("services", {"mailframe.services"}),
    ("composition", {"mailframe.config", "mailframe.plugins", "mailframe.tap",
                     "mailframe.cli", "mailframe.testing", "mailframe.compose",
                     "mailframe"}),
]


def layer_of(module: str) -> int:
    best = (-1, -1)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), index))
    if best[1] < 0:
        raise AssertionError(f"{module} belongs to no layer")
    return best[1]


def modules() -> list[tuple[str, pathlib.Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "mailframe":
            names.update(f"mailframe.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "mailframe" or name.startswith("mailframe.")}


def test_every_module_has_a_layer() -> None:
    for module, _ in modules():
        layer_of(module)


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_up(module: str, path: pathlib.Path) -> None:
    own = layer_of(module)
    for imported in imports(path):
        assert layer_of(imported) <= own, (
            f"{module} ({LAYERS[own][0]}) imports {imported}"
            f" ({LAYERS[layer_of(imported)][0]})"
        )


def test_only_composition_touches_the_global_reactor() -> None:
    for module, path in modules():
        text = path.read_text()
        if "from twisted.internet import reactor" in text:
            assert layer_of(module) == len(LAYERS) - 1, module
