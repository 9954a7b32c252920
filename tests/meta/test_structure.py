"""Meta tests: every hook documented and exercised, every built-in relaxation documented (layers: test_layers.py)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import relaxlab
from relaxlab import hookspecs
from relaxlab.properties import derive

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "relaxlab"


def test_every_hook_is_documented_with_its_signature() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [
        name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("relaxlab_")
    ]
    assert len(hooks) == 6
    for name in hooks:
        assert re.search(rf"### `{name}\(\)", text), f"{name} is not documented in docs/plugins.md"


def test_every_hook_is_exercised_by_a_test() -> None:
    """Each hook is implemented by a plugin some test builds or installs, besides the built-ins."""
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if "meta" not in p.parts)
    sources += "\n".join(p.read_text() for p in (ROOT / "plugins").rglob("*.py"))
    hooks = [
        name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("relaxlab_")
    ]
    for name in hooks:
        assert re.search(rf"\b{name}\b", sources), f"no test or test plugin implements {name}"


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
