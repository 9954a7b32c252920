"""The package tree is the layer diagram: every import points down it, and neither packages nor files form a cycle.

The import graph of ``src/relaxlab`` is built from the source (``ast``), with three kinds of
edges: module-level imports, function-local imports (including those under
``TYPE_CHECKING``), and module names given as strings (the built-in plugin list, the CLI's
``"module:attribute"`` command table, the facade's lazy names). Each module belongs to a layer
of :data:`LAYERS`; an edge into a later layer, a cycle between packages, or a cycle between the
files of one package (an import inside a function does not hide it) fails the test.
``docs/architecture.md`` draws the same layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: Layers in order; a module may import its own layer and the layers before it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("relaxlab.core", "relaxlab.nn", "relaxlab.runtime", "relaxlab.examples")),
    (
        "registry",
        (
            "relaxlab.hookspecs",
            "relaxlab.registry",
            "relaxlab.relaxations",
            "relaxlab.architectures",
            "relaxlab.data",
            "relaxlab.objectives",
        ),
    ),
    ("engine", ("relaxlab.engine",)),
    ("reference", ("relaxlab.reference",)),
    ("properties", ("relaxlab.properties",)),
    ("testing", ("relaxlab.testing",)),
    ("discovery", ("relaxlab.discovery",)),
    ("facade", ("relaxlab.api", "relaxlab")),
    ("evaluation", ("relaxlab.store", "relaxlab.evaluation")),
    ("training", ("relaxlab.training",)),
    ("experiments", ("relaxlab.experiments",)),
    ("cli", ("relaxlab.cli", "relaxlab.__main__")),
)
#: What any module may take from the package root without depending on the facade.
ROOT_BASICS = {"hookimpl", "__version__"}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer item a module belongs to (its package, or the top-level module itself)."""
    items = sorted((item for _, items in LAYERS for item in items), key=len, reverse=True)
    for item in items:
        if module == item or (item != "relaxlab" and module.startswith(item + ".")):
            return item
    raise AssertionError(f"module {module} is in no layer of LAYERS; add its package there")


def rank(module: str) -> int:
    item = unit(module)
    return next(i for i, (_, items) in enumerate(LAYERS) if item in items)


def import_edges(src: Path) -> list[tuple[str, str, str]]:
    """``(importer, imported, how)`` for every relaxlab-internal dependency under ``src/relaxlab``."""
    modules = {module_name(p, src): p for p in (src / "relaxlab").rglob("*.py")}
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, str]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, "import") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([base] if base else [])
                    )
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        targets.append((full, "import"))
                    elif base == "relaxlab" and alias.name in ROOT_BASICS:
                        continue
                    else:
                        targets.append((base, "import"))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
                # "module" or "module:attribute" (the CLI's command table); not a message that starts with one
                named, colon, attribute = node.value.partition(":")
                if named in modules and (not colon or attribute.isidentifier()):
                    targets = [(named, "string")]
            for target, how in targets:
                if target == "relaxlab" or target.startswith("relaxlab."):
                    edges.append((name, target, how))
    return edges


def violations(src: Path) -> list[str]:
    """Every edge against the layer order and every cycle between layer items."""
    found = []
    for path in (src / "relaxlab").rglob("*.py"):
        try:
            unit(module_name(path, src))
        except AssertionError as error:
            found.append(str(error))
    if found:
        return found
    graph: nx.DiGraph = nx.DiGraph()
    for importer, imported, how in import_edges(src):
        if rank(imported) > rank(importer):
            found.append(
                f"{importer} -> {imported} ({how}): layer {LAYERS[rank(importer)][0]!r} may not "
                f"use layer {LAYERS[rank(imported)][0]!r}"
            )
        if unit(importer) != unit(imported):
            graph.add_edge(unit(importer), unit(imported))
    found += [f"cycle between packages: {' -> '.join(cycle)}" for cycle in nx.simple_cycles(graph)]
    found += file_cycles(src)
    return found


def file_cycles(src: Path) -> list[str]:
    """Every cycle between the files of one package (layer item)."""
    graphs: dict[str, nx.DiGraph] = {}
    for importer, imported, _ in import_edges(src):
        if importer != imported and unit(importer) == unit(imported):
            graphs.setdefault(unit(importer), nx.DiGraph()).add_edge(importer, imported)
    found = []
    for package, graph in sorted(graphs.items()):
        for cycle in nx.simple_cycles(graph):
            found.append(f"cycle between files of {package}: {' -> '.join([*cycle, cycle[0]])}")
    return found


def test_the_package_follows_the_layer_order() -> None:
    problems = violations(SRC)
    assert not problems, "\n".join(problems)


def test_the_graph_sees_all_three_kinds_of_edges() -> None:
    edges = {(a, b, how) for a, b, how in import_edges(SRC)}
    assert ("relaxlab.registry", "relaxlab.relaxations.builtin", "string") in edges  # built-in plugin list
    assert ("relaxlab.cli", "relaxlab.cli.training_cmds", "string") in edges  # CLI assembly
    assert any(a == "relaxlab.engine.bounds" and b == "relaxlab.core.relaxer" for a, b, _ in edges)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "src"
    for path in (SRC / "relaxlab").rglob("*.py"):
        target = src / path.relative_to(SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    for relative, text in files.items():
        (src / relative).write_text(text)
    return src


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (
            {"relaxlab/core/planted.py": "def f():\n    from relaxlab.cli import main\n"},
            "relaxlab.core.planted -> relaxlab.cli",
        ),
        (
            {"relaxlab/engine/planted.py": "import relaxlab.training.loss\n"},
            "relaxlab.engine.planted -> relaxlab.training",
        ),
        (
            {"relaxlab/relaxations/planted.py": "PLUGINS = ('relaxlab.experiments.paradox',)\n"},
            "relaxlab.relaxations.planted -> relaxlab.experiments.paradox (string)",
        ),
        (
            {"relaxlab/core/planted.py": "COMMAND = 'relaxlab.cli.registry_cmds:list_command'\n"},
            "relaxlab.core.planted -> relaxlab.cli.registry_cmds (string)",
        ),
        (
            {"relaxlab/properties/planted.py": "from relaxlab import get_registry\n"},
            "relaxlab.properties.planted -> relaxlab (import)",
        ),
        ({"relaxlab/stray.py": ""}, "in no layer"),
    ],
)
def test_a_planted_violation_fails(tmp_path: Path, planted: dict[str, str], expected: str) -> None:
    problems = violations(_plant(tmp_path, planted))
    assert any(expected in problem for problem in problems), problems


def test_a_planted_cycle_between_packages_fails(tmp_path: Path) -> None:
    src = _plant(
        tmp_path,
        {
            "relaxlab/data/planted.py": "from relaxlab.architectures import Architecture\n",
            "relaxlab/architectures.py": (SRC / "relaxlab" / "architectures.py").read_text()
            + "\nfrom relaxlab.data import planted\n",
        },
    )
    assert any("cycle between packages" in p for p in violations(src))


def test_a_planted_cycle_between_files_fails_even_through_a_function_local_import(tmp_path: Path) -> None:
    src = _plant(
        tmp_path,
        {
            "relaxlab/core/planted_a.py": "from relaxlab.core.planted_b import B\nA = 1\n",
            "relaxlab/core/planted_b.py": "B = 2\n\n\ndef f():\n    from relaxlab.core.planted_a import A\n",
        },
    )
    problems = violations(src)
    assert any(
        "cycle between files of relaxlab.core" in p and "planted_a" in p and "planted_b" in p
        for p in problems
    ), problems
    # and one through TYPE_CHECKING counts too
    src = _plant(
        tmp_path / "2",
        {
            "relaxlab/properties/planted_a.py": "import relaxlab.properties.planted_b\n",
            "relaxlab/properties/planted_b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from relaxlab.properties.planted_a import X\n"
            ),
        },
    )
    assert any("cycle between files of relaxlab.properties" in p for p in violations(src))


def test_the_package_imports_cleanly_under_warnings_as_errors() -> None:
    modules = sorted(module_name(p, SRC) for p in (SRC / "relaxlab").rglob("*.py") if p.name != "__main__.py")
    script = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_architecture_page_draws_these_layers() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    positions = [text.find(f"`{items[0]}`") for _, items in LAYERS]
    assert all(p >= 0 for p in positions), [
        items[0] for (_, items), p in zip(LAYERS, positions, strict=True) if p < 0
    ]
    assert positions == sorted(positions), "docs/architecture.md lists the layers out of order"
