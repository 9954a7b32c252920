"""One vocabulary across the CLI: every command's options are walked and checked."""

from __future__ import annotations

import click
import pytest

from relaxlab.cli import cli

_CONTEXT = click.Context(cli)
COMMANDS = [(name, cli.get_command(_CONTEXT, name)) for name in cli.list_commands(_CONTEXT)]


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_shared_options_are_spelled_and_typed_alike(name: str, command: click.Command) -> None:
    for option in _options(command):
        spellings = set(option.opts) | set(option.secondary_opts)
        if any("relaxation" in s for s in spellings):
            assert option.opts == ["-r", "--relaxation"], f"{name}: relaxations are chosen with -r/--relaxation"
            assert option.multiple, f"{name}: -r/--relaxation is repeatable"
        if "--data-dir" in spellings:
            assert isinstance(option.type, click.Path) and not option.type.file_okay, f"{name}: --data-dir is a directory"
        if "--store" in spellings:
            assert isinstance(option.type, click.Path) and not option.type.dir_okay, f"{name}: --store is a file"
        if "--threads" in spellings:
            assert isinstance(option.type, click.IntRange) and option.type.min == 1, f"{name}: --threads >= 1"
        if "--quiet" in spellings:
            assert "-q" in spellings, f"{name}: --quiet is also -q"
        if option.name == "out_dir":
            assert isinstance(option.type, click.Path) and not option.type.file_okay, f"{name}: --out DIR"


def test_commands_that_read_relaxations_all_take_r() -> None:
    takes = {n for n, c in COMMANDS if any(o.opts == ["-r", "--relaxation"] for o in _options(c))}
    assert {"bounds", "certify", "tightness", "landscape", "continuity", "sensitivity", "gd-experiment"} <= takes


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_and_option_has_help(name: str, command: click.Command) -> None:
    assert command.help or command.short_help, f"{name} has no help"
    for option in _options(command):
        if not option.hidden and option.name not in ("help",):
            assert option.help, f"{name} {option.opts} has no help text"
