"""One vocabulary across the CLI: every command's options are walked and checked.

The rules are those of ``relaxlab.cli.options``: one spelling and one meaning per option. Where a
rule depends on what a command does (prints a table, reads a dataset, computes with tensors),
the command's callback is followed through the functions of its own module (by their names in
the source, with ``ast``) to the library calls that do it, so a new command is held to the rules
without being listed here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator

import click
import pytest

from relaxlab.cli import COMMANDS, cli

_CONTEXT = click.Context(cli)
COMMANDS_ = [(name, cli.get_command(_CONTEXT, name)) for name in cli.list_commands(_CONTEXT)]
IDS = [n for n, _ in COMMANDS_]

#: Calls that print a table (the command must take --wide and pass the width on).
PRINTS_TABLE = {"render_table"}
#: Calls that read a dataset's files (the command must take --data-dir).
READS_DATA = {"load_test_split", "_load", "load_config", "load_sweep", "load_screen"}
#: Calls that compute with tensors (the command must take --device).
COMPUTES = {
    "train",
    "certify",
    "cr_curves",
    "compute_bounds",
    "landscape",
    "discontinuity_share",
    "run_sweep",
    "run_screen",
    "run_paradox",
    "run_table10",
}
#: Spellings that are gone, with the one that replaced them (tests/unit/cli checks the hints).
RETIRED = {"--output": "--neuron", "--samples": "--n", "--examples": "--sample"}


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def _spellings(command: click.Command, *, hidden: bool = False) -> set[str]:
    return {s for o in _options(command) if hidden or not o.hidden for s in (*o.opts, *o.secondary_opts)}


def _functions(command: click.Command) -> tuple[str, dict[str, ast.FunctionDef]]:
    """The callback's name and every function of its module, by name."""
    callback = command.callback
    assert callback is not None
    tree = ast.parse(inspect.getsource(importlib.import_module(callback.__module__)))
    return callback.__name__, {
        node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
    }


def _calls(command: click.Command) -> set[str]:
    """Names the command's callback calls, directly or through functions of its own module."""
    callback, functions = _functions(command)
    seen: set[str] = set()
    todo = [callback]
    called: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Call):
                target = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                called.add(target)
                todo.append(target)
    return called


def _strings(command: click.Command) -> Iterator[str]:
    """String constants (f-string parts included, docstrings not) in the callback and the module functions it calls."""
    callback, functions = _functions(command)
    reached = _calls(command) | {callback}
    for name in reached & set(functions):
        body = functions[name].body
        docstring = body[0].value if body and isinstance(body[0], ast.Expr) else None
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node is not docstring:
                yield node.value


@pytest.mark.parametrize(("name", "command"), COMMANDS_, ids=IDS)
def test_shared_options_are_spelled_and_typed_alike(name: str, command: click.Command) -> None:
    for option in _options(command):
        spellings = set(option.opts) | set(option.secondary_opts)
        if option.hidden:
            continue
        if any("relaxation" in s for s in spellings):
            assert option.opts == ["-r", "--relaxation"], (
                f"{name}: relaxations are chosen with -r/--relaxation"
            )
            assert option.multiple, f"{name}: -r/--relaxation is repeatable"
        if "--data-dir" in spellings:
            assert isinstance(option.type, click.Path) and not option.type.file_okay, (
                f"{name}: --data-dir is a directory"
            )
        if "--store" in spellings:
            assert isinstance(option.type, click.Path) and not option.type.dir_okay, (
                f"{name}: --store is a file"
            )
        if "--threads" in spellings:
            assert isinstance(option.type, click.IntRange) and option.type.min == 1, f"{name}: --threads >= 1"
        if "--quiet" in spellings:
            assert "-q" in spellings, f"{name}: --quiet is also -q"
        if "--out" in spellings:
            assert (
                option.name == "out_dir" and isinstance(option.type, click.Path) and not option.type.file_okay
            ), f"{name}: --out is always a directory (a file has its own name: --plot, --onnx, ...)"
        if "--plot" in spellings:
            assert isinstance(option.type, click.Path) and not option.type.dir_okay, (
                f"{name}: --plot is an image file"
            )
        if "--n" in spellings:
            assert isinstance(option.type, click.IntRange) and option.type.min == 1, (
                f"{name}: --n counts, from 1"
            )
        if "--device" in spellings:
            assert option.default == "cpu", f"{name}: --device defaults to cpu everywhere"


@pytest.mark.parametrize(("name", "command"), COMMANDS_, ids=IDS)
def test_retired_spellings_are_refused_not_meant(name: str, command: click.Command) -> None:
    """``--output`` is no output index, counts are ``--n``: an old spelling, where a command had it, is a hint."""
    for option in _options(command):
        for spelling in set(option.opts) & set(RETIRED):
            assert option.hidden and not option.expose_value, f"{name}: {spelling} is {RETIRED[spelling]} now"


@pytest.mark.parametrize(("name", "command"), COMMANDS_, ids=IDS)
def test_relaxations_are_never_positional(name: str, command: click.Command) -> None:
    """Every command names relaxations with -r; the old positional form only refuses itself with a hint."""
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        if "name" in (argument.name or ""):
            assert not argument.expose_value, (
                f"{name}: relaxation names are given with -r, not as {argument.name}"
            )


@pytest.mark.parametrize(("name", "command"), COMMANDS_, ids=IDS)
def test_commands_take_the_options_their_work_needs(name: str, command: click.Command) -> None:
    calls, spellings = _calls(command), _spellings(command)
    if calls & PRINTS_TABLE:
        assert "--wide" in spellings, f"{name} prints a table: it takes --wide"
    if calls & READS_DATA:
        assert "--data-dir" in spellings, f"{name} reads a dataset: it takes --data-dir"
    if calls & COMPUTES:
        assert "--device" in spellings, f"{name} computes with tensors: it takes --device"


def test_every_table_passes_its_width() -> None:
    """``render_table`` without ``width=`` would ignore --wide."""
    import relaxlab.cli

    for path in sorted(__import__("pathlib").Path(relaxlab.cli.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "render_table":
                assert any(k.arg == "width" for k in node.keywords), f"{path.name}:{node.lineno}: pass width="


@pytest.mark.parametrize(("name", "command"), COMMANDS_, ids=IDS)
def test_every_hint_names_an_option_the_command_has(name: str, command: click.Command) -> None:
    """A message of the command that tells the user to pass ``--x`` names an option of that command."""
    own = _spellings(command, hidden=True) | {"--help"}
    for text in _strings(command):
        if "relaxlab " in text:  # a whole command line, of this or another command
            continue
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text):
            assert option in own, f"{name}: a message names {option}, which {name} does not take: {text!r}"


def test_command_functions_share_one_naming_convention() -> None:
    for target, _ in COMMANDS.values():
        assert target.endswith("_command"), f"{target}: command functions are named *_command"


def test_commands_that_read_relaxations_all_take_r() -> None:
    takes = {n for n, c in COMMANDS_ if any(o.opts == ["-r", "--relaxation"] for o in _options(c))}
    assert {
        "bounds",
        "certify",
        "tightness",
        "landscape",
        "continuity",
        "sensitivity",
        "gd-experiment",
        "show",
        "check",
    } <= takes


@pytest.mark.parametrize(("name", "command"), COMMANDS_, ids=IDS)
def test_every_command_and_option_has_help(name: str, command: click.Command) -> None:
    assert command.help or command.short_help, f"{name} has no help"
    for option in _options(command):
        if not option.hidden and option.name not in ("help",):
            assert option.help, f"{name} {option.opts} has no help text"


def test_importing_the_cli_changes_nothing_in_the_process() -> None:
    """No process-wide side effect at import (``OMP_WAIT_POLICY`` is set by the program's ``main`` only)."""
    import subprocess
    import sys

    probe = "import os; os.environ.pop('OMP_WAIT_POLICY', None); import relaxlab.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "None"
