"""``relaxlab list``, ``show`` and ``check``: what the registry holds and what it derives."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from relaxlab.cli.format import TABLE_WIDTH, fail, render_table
from relaxlab.cli.options import QUIET, WIDE, image_path, plot_option, relaxation_option, select

if TYPE_CHECKING:
    from relaxlab.properties.pointwise import Counterexample


def _registry() -> Any:
    from relaxlab.api import get_registry

    return get_registry()


def positional_names(command: str) -> Callable[[Any], Any]:
    """The retired form ``relaxlab COMMAND NAME``: refused with the ``-r`` spelling every command uses."""

    def refuse(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
        if value:
            import shlex

            fail(
                f"name relaxations with -r, as every command does: relaxlab {command} "
                + " ".join(f"-r {shlex.quote(v)}" for v in value)
            )

    return click.argument("legacy_names", nargs=-1, metavar="", expose_value=False, callback=refuse)


def relaxation_record(name: str) -> dict[str, Any]:
    """The facts ``list --json`` reports for one registered relaxation."""
    from relaxlab.properties import derive

    registry = _registry().relaxations
    relaxation = registry[name]
    continuous: bool | None
    sensitive: bool | None
    try:
        props = derive(relaxation)
        continuous, sensitive = props.continuous, props.sensitive
    except Exception:  # a plugin relaxation whose lines raise: listed, flags unknown, marked unsound
        continuous = sensitive = None
    return {
        "name": relaxation.name,
        "aliases": registry.aliases(name),
        "origin": origin(registry.source(name)),
        "plugin": registry.source(name),
        "continuous": continuous,
        "sensitive": sensitive,
        "sound": registry.soundness(name) == "proved",
        "soundness": registry.soundness(name),
        "intermediate": relaxation.intermediate,
        "final": relaxation.final,
        "params": {p.name: relaxation.parameters[p.name] for p in relaxation.params},
        "transform": None if relaxation.transform is None else str(relaxation.transform),
        "cases": {str(s): str(c) for s, c in relaxation.cases()},
        "summary": relaxation.summary,
        "reference": relaxation.reference,
    }


def _flag(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else (yes if value else no)


def origin(plugin: str) -> str:
    """Where a relaxation comes from, as ``list --json`` says it: ``"built-in"`` or the plugin's name.

    :param plugin: the name of the plugin that registered it (``relaxlab.relaxations.builtin``,
        ``example``).
    """
    return "built-in" if plugin.startswith("relaxlab.") else plugin


def origin_label(plugin: str) -> str:
    """The one way the ``list`` table and ``show`` name where a relaxation comes from.

    :param plugin: the name of the plugin that registered it.
    :return: ``"built-in"`` for relaxlab's own plugins, else ``"plugin <name>"``.
    """
    name = origin(plugin)
    return name if name == "built-in" else f"plugin {name}"


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
@click.option(
    "--objectives", is_flag=True, help="List the training objectives (relaxlab train --objective) instead."
)
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
                r["name"],
                ", ".join(r["aliases"]) or "-",
                origin_label(r["origin"]),
                _flag(r["continuous"], "✓C", "✗C"),
                _flag(r["sensitive"], "✗S", "✓S"),
                r["intermediate"],
                ", ".join(f"{k}={v:g}" for k, v in r["params"].items()) or "-",
                {"proved": "yes", "sampled": "sampled", "unsound": "NO"}[r["soundness"]],
            ]
            for r in records
        ]
        click.echo(
            render_table(
                ["name", "aliases", "origin", "C", "S", "intermediate", "params", "sound"],
                rows,
                width=None if wide else TABLE_WIDTH,
            )
        )
    for error in registry.errors:
        click.echo(f"warning: {error}", err=True)


def _list_objectives(registry: Any, as_json: bool, wide: bool) -> None:
    from relaxlab.objectives import describe, format_value

    records = [
        {**describe(o), "origin": registry.objectives.source(o.name)} for o in registry.objectives.values()
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        rows = [
            [
                r["name"],
                ", ".join(f"{k}={format_value(v)}" for k, v in r["params"].items()) or "-",
                origin_label(r["origin"]),
                "yes" if r["attack"] else "no",
                "yes" if r["fusable"] else "no",
                r["summary"],
            ]
            for r in records
        ]
        click.echo(
            render_table(
                ["name", "parameters (defaults)", "origin", "attack", "fusion", "summary"],
                rows,
                width=None if wide else TABLE_WIDTH,
            )
        )
    for error in registry.errors:
        click.echo(f"warning: {error}", err=True)


#: How ``show`` words a propagation mode (``ReluRelaxation.intermediate`` / ``.final``, docs/engine.md).
_MODES = {
    "backsub": "full backsubstitution",
    "interval": "interval arithmetic",
    "forward": "forward affine forms with a box part (hybrid zonotope)",
}


@click.command("show")
@relaxation_option(help_text="The relaxation(s) to show, e.g. 'LooseIBP-DC(F=10, omega=0.5)'")
@plot_option("Write a PNG of ReLU and both lines for each case on example bounds (one relaxation).")
@positional_names("show")
def show_command(relaxation: tuple[str, ...], plot_path: Path | None) -> None:
    """Show relaxations: their lines per case in words, and their derived properties.

    Any name -r takes works, parameters included ('LooseIBP-DC(F=10, omega=0.5)'), and so does
    every name `relaxlab discover` prints.
    """
    if not relaxation:
        fail("name the relaxation with -r, e.g. relaxlab show -r CROWN")
    chosen = select(relaxation, allow_unsound=True)
    if plot_path is not None and len(chosen) != 1:
        fail(f"--plot draws one relaxation; -r selected {len(chosen)}")
    for index, item in enumerate(chosen):
        if index:
            click.echo("")
        _show(item, plot_path)


def _show(relaxation: Any, plot_path: Path | None) -> None:
    """The lines, flags and (with ``plot_path``) the drawing of one relaxation."""
    from relaxlab.core.stability import Stability
    from relaxlab.properties import derive
    from relaxlab.registry import is_sampled

    registry = _registry().relaxations
    props = derive(relaxation)
    click.echo(f"{relaxation.label}: {relaxation.summary}")
    if relaxation.reference:
        click.echo(f"  reference: {relaxation.reference}")
    if relaxation.name in registry:
        aliases = registry.aliases(relaxation.name)
        click.echo(
            f"  origin: {origin_label(registry.source(relaxation.name))}"
            + (f"; aliases: {', '.join(aliases)}" if aliases else "")
        )
    else:
        click.echo("  origin: generated by relaxlab discover (not registered)")
    conditions = {Stability.NEGATIVE: "u <= 0", Stability.UNSTABLE: "l < 0 < u", Stability.POSITIVE: "l >= 0"}
    for stability, case in relaxation.cases():
        click.echo(f"  {str(stability):9s} ({conditions[stability]:9s}): {case}")
    if relaxation.transform is not None:
        click.echo(f"  before each ReLU, [l, u] becomes {relaxation.transform}")
    click.echo(
        f"  intermediate bounds: {_MODES[relaxation.intermediate]}; final bounds: {_MODES[relaxation.final]}"
    )
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

        path = image_path(plot_path)
        plot_relaxation(relaxation, path)
        click.echo(f"wrote {path}")


def _verdict(verdict: Any, sampled: Any) -> tuple[bool, str]:
    """``(sound, one line)``: proved / sampled / UNDECIDED / UNSOUND, with what backs it.

    :param verdict: the prover's :class:`~relaxlab.properties.prover.SoundnessVerdict`.
    :param sampled: what the opt-in Hypothesis search found (``None``: nothing, or not run), or the
        text of an error the lines raised.
    """
    counterexample = verdict.counterexample if verdict.counterexample is not None else sampled
    if counterexample is not None:
        return False, f"UNSOUND: {counterexample}"
    if verdict.outcome == "undecided":
        part = next(p for p in verdict.parts if p.outcome == "undecided")
        return False, f"UNDECIDED (refused, not proved within the budget): {part}"
    if verdict.outcome == "sampled":
        return True, "sound (sampled, not proved: opaque lines)"
    return True, "sound (proved)"


def _targets(spec: tuple[str, ...], check_all: bool) -> list[Any]:
    """What ``check`` checks: each selected spec once (aliases folded), unsound registered ones included."""
    registry = _registry().relaxations
    if check_all:
        return [registry.get(name) for name in registry.names() if registry.primary(name) == name]
    return select(spec, allow_unsound=True)


@click.command("check")
@relaxation_option(help_text="The relaxation(s) to check")
@click.option(
    "--all",
    "check_all",
    is_flag=True,
    help="Check every registered relaxation, each spec once (its aliases named beside it).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also search N random (l, u, parameter) settings per relaxation with Hypothesis "
    "(slow: about 0.7 s of CPU per 100 per relaxation; 0: the proof alone).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
@QUIET
@positional_names("check")
def check_command(
    relaxation: tuple[str, ...], check_all: bool, sample: int, as_json: bool, quiet: bool
) -> None:
    """Prove soundness: every line on its side of the ReLU over the whole (l, u, parameter) domain.

    Interval branch-and-bound on the lines' expressions (seconds for every built-in); lines
    given as opaque callables can only be sampled and say so. Exit status 1, with a
    counterexample (case, l, u, x, line value, ReLU value), when some relaxation is unsound or
    could not be proved.
    """
    from relaxlab.cli.progress import Progress
    from relaxlab.properties.soundness import prove_soundness
    from relaxlab.registry import is_sampled

    if check_all and relaxation:
        fail("give -r/--relaxation or --all, not both")
    if not check_all and not relaxation:
        fail(
            "give the relaxations to check with -r (e.g. -r CROWN, -r paper), or --all for every registered one"
        )
    targets = _targets(relaxation, check_all)
    registry = _registry().relaxations
    # (relaxation, sound, verdict line, counterexample: the prover's, the sampled one, or an error's text)
    results: list[tuple[Any, bool, str, Counterexample | str | None]] = []
    with Progress("check", len(targets), quiet=quiet, unit="relaxation") as progress:
        for item in targets:
            sampled: Any = None
            try:
                verdict = prove_soundness(item)
                if sample and verdict.counterexample is None:
                    from relaxlab.testing.conformance import search_unsound_example

                    sampled = search_unsound_example(item, max_examples=sample)
            except Exception as error:  # lines that raise are as bad as unsound ones, and say why
                results.append(
                    (
                        item,
                        False,
                        f"UNSOUND: evaluating its lines raised {type(error).__name__}: {error}",
                        None,
                    )
                )
                progress.update()
                continue
            sound, line = _verdict(verdict, sampled)
            results.append((item, sound, line, verdict.counterexample or sampled))
            progress.update()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": r.label,
                        "aliases": registry.aliases(r.name) if r.name in registry else [],
                        "sound": sound and not is_sampled(r),
                        "soundness": "unsound"
                        if c is not None
                        else "sampled"
                        if is_sampled(r)
                        else "proved"
                        if sound
                        else "undecided",
                        "verdict": line,
                        "counterexample": None if c is None else (c if isinstance(c, str) else c.as_dict()),
                    }
                    for r, sound, line, c in results
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for item, _, line, _ in results:
            aliases = registry.aliases(item.name) if item.name in registry and item.label == item.name else []
            also = f" (= {', '.join(aliases)})" if aliases else ""
            click.echo(f"{item.label}{also}: {line}")
        if not sample:
            click.echo(
                "(proof only; --sample N also searches N random settings per relaxation with Hypothesis)"
            )
    if not all(sound for _, sound, _, _ in results):
        sys.exit(1)
