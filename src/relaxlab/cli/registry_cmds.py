"""``relaxlab list``, ``show`` and ``check``: what the registry holds and what it derives."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, fail, render_table
from relaxlab.cli.options import QUIET, WIDE


def _registry() -> Any:
    from relaxlab.api import get_registry

    return get_registry()


def _lookup(name: str) -> Any:
    from relaxlab.api import get_relaxation

    try:
        return get_relaxation(name, allow_unsound=True)
    except (LookupError, ValueError, TypeError) as error:
        fail(str(error))


def relaxation_record(name: str) -> dict[str, Any]:
    """The facts ``list --json`` reports for one registered relaxation."""
    from relaxlab.properties import derive

    registry = _registry().relaxations
    relaxation = registry[name]
    try:
        props = derive(relaxation)
        continuous, sensitive = props.continuous, props.sensitive
    except Exception:  # a plugin relaxation whose lines raise: listed, flags unknown, marked unsound
        continuous = sensitive = None
    return {
        "name": relaxation.name,
        "aliases": registry.aliases(name),
        "origin": registry.source(name),
        "continuous": continuous,
        "sensitive": sensitive,
        "sound": registry.soundness(name) == "proved",
        "soundness": registry.soundness(name),
        "intermediate": relaxation.intermediate,
        "params": {p.name: relaxation.parameters[p.name] for p in relaxation.params},
        "transform": None if relaxation.transform is None else str(relaxation.transform),
        "cases": {str(s): str(c) for s, c in relaxation.cases()},
        "summary": relaxation.summary,
        "reference": relaxation.reference,
    }


def _flag(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else (yes if value else no)


def origin_label(module: str) -> str:
    """The one way ``list`` and ``show`` name where a relaxation comes from.

    :param module: the module of the plugin that registered it (``relaxlab.relaxations.builtin``).
    :return: ``"built-in"`` for relaxlab's own plugin, else ``"plugin <module>"``.
    """
    return "built-in" if module.startswith("relaxlab.") else f"plugin {module}"


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
@click.option("--objectives", is_flag=True, help="List the training objectives (relaxlab train --objective) instead.")
@WIDE
def list_command(as_json: bool, objectives: bool, wide: bool) -> None:
    """List registered relaxations with their derived C/S flags.

    Names whose specs are identical are shown once, the others as aliases. With --objectives, the
    training objectives with their parameters (defaults) and origin.
    """
    registry = _registry()
    if objectives:
        _list_objectives(registry, as_json, wide)
        return
    names = [n for n in registry.relaxations.names() if registry.relaxations.primary(n) == n]
    records = [relaxation_record(n) for n in names]
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        rows = [
            [
                r["name"], ", ".join(r["aliases"]) or "-", origin_label(r["origin"]),
                _flag(r["continuous"], "✓C", "✗C"), _flag(r["sensitive"], "✗S", "✓S"),
                r["intermediate"], ", ".join(f"{k}={v:g}" for k, v in r["params"].items()) or "-",
                {"proved": "yes", "sampled": "sampled", "unsound": "NO"}[r["soundness"]],
            ]
            for r in records
        ]
        click.echo(render_table(["name", "aliases", "origin", "C", "S", "intermediate", "params", "sound"], rows,
                                width=None if wide else TABLE_WIDTH))
    for error in registry.errors:
        click.echo(f"warning: {error}", err=True)


def _list_objectives(registry: Any, as_json: bool, wide: bool) -> None:
    from relaxlab.objectives import describe, format_value

    records = [{**describe(o), "origin": registry.objectives.source(o.name)} for o in registry.objectives.values()]
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        rows = [[r["name"], ", ".join(f"{k}={format_value(v)}" for k, v in r["params"].items()) or "-",
                 origin_label(r["origin"]), "yes" if r["attack"] else "no", "yes" if r["fusable"] else "no",
                 r["summary"]] for r in records]
        click.echo(render_table(["name", "parameters (defaults)", "origin", "attack", "fusion", "summary"], rows,
                                width=None if wide else TABLE_WIDTH))
    for error in registry.errors:
        click.echo(f"warning: {error}", err=True)


@click.command("show")
@click.argument("name")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              help="Write a PNG of ReLU and both lines for each case on example bounds.")
def show_command(name: str, plot_path: str | None) -> None:
    """Show one relaxation: its lines per case in words, and its derived properties.

    NAME may carry parameters, e.g. 'LooseIBP-DC(F=10, omega=0.5)'.
    """
    from relaxlab.core.stability import Stability
    from relaxlab.properties import derive
    from relaxlab.registry import is_sampled

    relaxation = _lookup(name)
    registry = _registry().relaxations
    props = derive(relaxation)
    click.echo(f"{relaxation.label}: {relaxation.summary}")
    if relaxation.reference:
        click.echo(f"  reference: {relaxation.reference}")
    if relaxation.name in registry:
        aliases = registry.aliases(relaxation.name)
        click.echo(f"  origin: {origin_label(registry.source(relaxation.name))}"
                   + (f"; aliases: {', '.join(aliases)}" if aliases else ""))
    conditions = {Stability.NEGATIVE: "u <= 0", Stability.UNSTABLE: "l < 0 < u", Stability.POSITIVE: "l >= 0"}
    for stability, case in relaxation.cases():
        click.echo(f"  {str(stability):9s} ({conditions[stability]:9s}): {case}")
    if relaxation.transform is not None:
        click.echo(f"  before each ReLU, [l, u] becomes {relaxation.transform}")
    mode = "full backsubstitution" if relaxation.intermediate == "backsub" else "interval arithmetic"
    click.echo(f"  intermediate bounds: {mode}")
    for spec in relaxation.params:
        click.echo(f"  parameter {spec.name} = {relaxation.parameters[spec.name]:g} ({spec.description})")
    sampled = "sound (sampled, not proved)" if is_sampled(relaxation) else "sound"
    click.echo(f"  properties: {props.flags}, {sampled if props.sound else 'UNSOUND'}")
    for item in props.discontinuities:
        click.echo(f"    discontinuous: {item}")
    for reason in props.sensitivity:
        click.echo(f"    sensitive: {reason}")
    if props.counterexample is not None:
        click.echo(f"    counterexample: {props.counterexample}")
    if plot_path:
        from relaxlab.properties.plotting import plot_relaxation

        plot_relaxation(relaxation, plot_path)
        click.echo(f"wrote {plot_path}")


def _verdict(relaxation: Any, counterexample: Any) -> str:
    """One line: proved / sampled / UNDECIDED / UNSOUND, with what backs it."""
    if counterexample is None:
        from relaxlab.properties.soundness import prove_soundness

        outcome = prove_soundness(relaxation).outcome
        return "sound (proved)" if outcome == "proved" else "sound (sampled, not proved: opaque lines)"
    if getattr(counterexample, "side", None) == "undecided":
        return f"UNDECIDED (refused, not proved within the budget): {counterexample}"
    return f"UNSOUND: {counterexample}"


@click.command("check")
@click.argument("names", nargs=-1)
@click.option("--all", "check_all", is_flag=True, help="Check every registered relaxation.")
@click.option("--examples", default=300, show_default=True, help="Hypothesis examples per relaxation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@QUIET
def check_command(names: Sequence[str], check_all: bool, examples: int, as_json: bool, quiet: bool) -> None:
    """Check soundness exactly at interval end points over hard and random (l, u).

    Exit status 1, with a counterexample (case, l, u, x, line value, ReLU value),
    when some relaxation is unsound.
    """
    from relaxlab.cli.progress import Progress
    from relaxlab.registry import is_sampled
    from relaxlab.testing import find_unsound_example

    if check_all and names:
        fail("give relaxation NAMES or --all, not both")
    if not check_all and not names:
        fail("give relaxation NAMES to check, or --all for every registered relaxation")
    if examples < 1:
        fail(f"--examples must be at least 1, got {examples}")
    targets = [_lookup(n) for n in (_registry().relaxations.names() if check_all else names)]
    results = []
    with Progress("check", len(targets), quiet=quiet, unit="relaxation") as progress:
        for relaxation in targets:
            try:
                counterexample = find_unsound_example(relaxation, max_examples=examples)
            except Exception as error:  # lines that raise are as bad as unsound ones, and say why
                counterexample = f"evaluating its lines raised {type(error).__name__}: {error}"
            results.append((relaxation, counterexample))
            progress.update()
    if as_json:
        click.echo(json.dumps([
            {"name": r.label, "sound": c is None and not is_sampled(r),
             "soundness": "unsound" if c is not None else "sampled" if is_sampled(r) else "proved",
             "counterexample": None if c is None else (c if isinstance(c, str) else c.as_dict())}
            for r, c in results
        ], indent=2, ensure_ascii=False))
    else:
        for relaxation, counterexample in results:
            verdict = _verdict(relaxation, counterexample)
            click.echo(f"{relaxation.label}: {verdict}")
    if any(c is not None for _, c in results):
        sys.exit(1)
