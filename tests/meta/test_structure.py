"""Meta tests: layering, documented hooks, documented relaxations."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import relaxlab
from relaxlab import hookspecs
from relaxlab.properties import derive

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "relaxlab"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["core", "engine"])
def test_core_and_engine_know_nothing_of_plugins(package: str) -> None:
    forbidden = ("pluggy", "relaxlab.registry", "relaxlab.relaxations", "relaxlab.cli", "relaxlab.training")
    for path in (SRC / package).rglob("*.py"):
        bad = [name for name in _imports(path) if name.startswith(forbidden)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_nothing_imports_the_cli() -> None:
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts or path.name == "__main__.py":
            continue
        assert not [n for n in _imports(path) if n.startswith("relaxlab.cli")], path


def test_every_hook_is_documented_with_its_signature() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("relaxlab_")]
    assert len(hooks) == 4
    for name in hooks:
        assert re.search(rf"### `{name}\(\)", text), f"{name} is not documented in docs/plugins.md"


def test_every_builtin_is_in_the_catalogue_with_its_flags() -> None:
    text = (ROOT / "docs" / "relaxations.md").read_text()
    registry = relaxlab.get_registry().relaxations
    for name in registry.names():
        if registry.source(name) != "relaxlab.relaxations.builtin":
            continue
        props = derive(registry[name])
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| {name} ")), None)
        assert row is not None, f"{name} missing from docs/relaxations.md"
        cells = [c.strip() for c in row.split("|")]
        assert cells[6] == ("✓C" if props.continuous else "✗C"), name
        assert cells[7] == ("✗S" if props.sensitive else "✓S"), name
        assert registry[name].summary, f"{name} has no summary"
