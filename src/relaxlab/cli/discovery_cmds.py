"""``relaxlab discover``: enumerate, filter and relate relaxations built from candidate lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, fail, render_table
from relaxlab.cli.options import QUIET, WIDE

_FAMILY_CHOICES = ("switch", "soft", "interval", "none")


def _grid(items: tuple[str, ...]) -> dict[str, tuple[float, ...]] | None:
    """``--grid omega=0.5,1 --grid F=1,10`` as ``{"omega": (0.5, 1.0), "F": (1.0, 10.0)}``."""
    grid: dict[str, tuple[float, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            parsed = ()
        if not sep or not name.strip() or not parsed:
            fail(f"--grid expects PARAM=V1,V2,... (e.g. omega=0.5,1,2), got {item!r}")
        grid[name.strip()] = parsed
    return grid or None


def _relation_summary(result: Any, kind: str) -> str:
    names = [n for n, t in result.relations.items() if t.overall == kind and n not in result.equivalent_to]
    return ", ".join(names) or "-"


@click.command("discover")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(_FAMILY_CHOICES),
    help="Families to add to the non-dominated combinations (repeatable; default: all; 'none': no family).",
)
@click.option(
    "--transform",
    "transform_names",
    multiple=True,
    metavar="NAME",
    help="Bounds transforms to apply to every result (repeatable; default: all candidates, "
    "e.g. loose-C, loose-DC; 'none': no transform).",
)
@click.option(
    "--grid",
    "grid_items",
    multiple=True,
    metavar="PARAM=V1,V2,...",
    help="Values of a transform parameter, each applied (repeatable; default: omega=1, F=1).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (stages, results, dominated, ...)."
)
@click.option(
    "--graph",
    "graph_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Draw the genealogy to this image (PNG/SVG/PDF by suffix).",
)
@click.option(
    "--graph-scope",
    type=click.Choice(("registered", "all")),
    default="registered",
    show_default=True,
    help="Which nodes the drawing shows.",
)
@click.option(
    "--graphml",
    "graphml_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the genealogy graph as GraphML.",
)
@click.option(
    "--dot",
    "dot_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the genealogy graph as Graphviz DOT.",
)
@click.option(
    "--register",
    is_flag=True,
    help="Register the new (not already registered) results in this process's registry.",
)
@click.option(
    "--emit-plugin",
    "plugin_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the new results as a plugin module (install it through the 'relaxlab' entry points).",
)
@click.option(
    "--all-dominated", is_flag=True, help="Report every dominated combination, not only registered ones."
)
@click.option("--no-relations", is_flag=True, help="Skip tightness relations to the registered relaxations.")
@WIDE
@QUIET
def discover_command(
    families: tuple[str, ...],
    transform_names: tuple[str, ...],
    grid_items: tuple[str, ...],
    as_json: bool,
    graph_path: str | None,
    graph_scope: str,
    graphml_path: str | None,
    dot_path: str | None,
    register: bool,
    plugin_path: str | None,
    all_dominated: bool,
    no_relations: bool,
    wide: bool,
    quiet: bool,
) -> None:
    """Discover relaxations: all line combinations -> sound -> non-dominated -> + switch, soft, (R) -> + transforms.

    Candidate lines and bounds transforms come from every installed plugin (hooks
    relaxlab_candidate_lines, relaxlab_candidate_transforms). Results equal to a registered
    relaxation carry its name (LooseIBP-C); the others get a name built from their lines and
    transform, e.g. 'gen(neg 0..0, unst x..x-l, pos x..x) + loose-C' (lower..upper per case).
    """
    from relaxlab.api import get_registry
    from relaxlab.cli.progress import Phases
    from relaxlab.discovery import discover, emit, transforms
    from relaxlab.properties import check_soundness_cached

    if "none" in families and len(families) > 1:
        fail("--family none cannot be combined with other families")
    if "none" in transform_names and len(transform_names) > 1:
        fail("--transform none cannot be combined with other transforms")
    grid = _grid(grid_items)
    registry = get_registry()
    try:
        widenings = (
            None if not transform_names else transforms.choose(registry.candidate_transforms, transform_names)
        )
        with Phases(quiet=quiet, prefix="discover: ") as phases:
            found = discover(
                registry,
                transforms=widenings,
                grid=grid,
                families=None if not families else [f for f in families if f != "none"],
                relations=not no_relations,
                all_dominated=all_dominated,
                progress=phases.start,
            )
    except ValueError as error:
        fail(str(error))
    _draw(found, registry, graph_path, graph_scope, graphml_path, dot_path)
    new = emit.new_results(found)
    if plugin_path:
        _write_text(Path(plugin_path), emit.plugin_source(new), "--emit-plugin")
    registered = emit.register_results(new, registry, check_soundness_cached) if register else []
    if as_json:
        out = found.as_dict(relations=not no_relations)
        out["registered"] = registered
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    _print_listing(found, wide=wide, all_dominated=all_dominated)
    if plugin_path:
        click.echo(f"wrote {len(new)} relaxations as a plugin module to {plugin_path}")
    if graph_path:
        click.echo(f"wrote the genealogy drawing to {graph_path}")
    if register:
        click.echo(f"registered {len(registered)} relaxations in this process")


def _write_text(path: Path, text: str, option: str) -> None:
    """Write a file the user named, a failure as one line naming the option (exit 2)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"{option} {path}: cannot write it ({error.strerror or error})")


def _draw(
    found: Any,
    registry: Any,
    graph_path: str | None,
    scope: str,
    graphml_path: str | None,
    dot_path: str | None,
) -> None:
    """The genealogy as a drawing, GraphML and DOT, each where asked (directories made as needed)."""
    if not (graph_path or graphml_path or dot_path):
        return
    from relaxlab.discovery import genealogy

    graph = genealogy.genealogy(found, registry.relaxations.values())
    for option, path, write in (
        ("--graph", graph_path, lambda p: genealogy.draw(graph, p, scope=scope)),
        ("--graphml", graphml_path, lambda p: genealogy.write_graphml(graph, p)),
        ("--dot", dot_path, lambda p: genealogy.write_dot(graph, p)),
    ):
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                write(path)
            except OSError as error:
                fail(f"{option} {path}: cannot write it ({error.strerror or error})")


def _fill(text: str, wide: bool, indent: str = "  ") -> str:
    """``text`` wrapped at the table width, line by line (as it is with ``--wide``)."""
    if wide:
        return text
    return "\n".join(
        textwrap.fill(part, width=TABLE_WIDTH, subsequent_indent=indent, break_long_words=False)
        for part in text.splitlines()
    )


def _print_listing(found: Any, *, wide: bool, all_dominated: bool) -> None:
    """The stages, the results table (the library's names, flags and lines) and the rediscoveries."""
    stages = (
        "stages: "
        + " -> ".join(f"{stage} {count}" for stage, count in found.stages)
        + f"  ({found.seconds:.1f} s)"
    )
    if found.transforms:
        stages += "\ntransforms: " + ", ".join(t.label for t in found.transforms)
    click.echo(_fill(stages, wide))
    rows = [
        [
            result.name,
            result.family,
            *result.flags.split(),
            f"{result.cases[1].lower}..{result.cases[1].upper}",
            ", ".join(a for a in result.equivalent_to if a != result.name) or "-",
            _relation_summary(result, "tighter"),
            _relation_summary(result, "looser"),
        ]
        for result in found.results
    ]
    click.echo(
        "\n"
        + _fill(
            f"results ({len(rows)}; C: ✓C continuous, S: ✓S not sensitive; tighter/looser than: "
            "registered relaxations; `relaxlab show -r NAME` shows any of them)",
            wide,
        )
    )
    click.echo(
        render_table(
            ["name", "family", "C", "S", "unstable", "aliases", "tighter than", "looser than"],
            rows,
            width=None if wide else TABLE_WIDTH,
        )
    )
    if found.rediscovered:
        click.echo(f"\nregistered relaxations, rediscovered or not ({len(found.rediscovered)}):")
    for item in found.rediscovered:
        click.echo(_fill(f"  {item}", wide, indent="    "))
    if found.dominated and all_dominated:
        click.echo(f"\n{len(found.dominated)} dominated combinations (see --json for their dominators)")
