"""Start-up: the command table matches the commands, and help and a warm ``list`` never import torch.

Not timed: each check runs the CLI in a fresh interpreter and looks at ``sys.modules`` afterwards,
so a module-level ``import torch`` on the way to these commands fails here, whatever the machine.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import relaxlab.cli
from relaxlab.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "numpy", "sympy", "matplotlib")

_PROBE = f"""
import json, sys
from relaxlab.cli import cli
for args in json.loads(sys.argv[1]):
    try:
        cli.main(args, prog_name="relaxlab", standalone_mode=False)
    except SystemExit as stop:
        assert not stop.code, (args, stop.code)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith("relaxlab.cli."))))
"""


def _modules_after(*invocations: list[str]) -> tuple[list[str], str]:
    """Run the CLI in a fresh interpreter; the heavy and command modules it imported, and its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(invocations))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *output, modules = result.stdout.rstrip("\n").split("\n")
    return json.loads(modules), "\n".join(output)


def test_the_table_names_every_command_with_its_own_help() -> None:
    context = click.Context(cli)
    for name, (target, summary) in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command is not None and command.name == name, target
        own = command.short_help or (command.help or "").split("\n\n")[0]  # click's short help, untruncated
        assert " ".join(own.split()) == summary, f"{name}: the table's help differs from the command's"
    defined = set()
    for info in pkgutil.iter_modules(relaxlab.cli.__path__, "relaxlab.cli."):
        module = importlib.import_module(info.name)
        defined |= {
            f"{info.name}:{attr}"
            for attr, value in vars(module).items()
            if isinstance(value, click.Command) and getattr(value.callback, "__module__", None) == info.name
        }
    assert defined == {target for target, _ in COMMANDS.values()}, (
        "a command is missing from relaxlab.cli.COMMANDS"
    )


def test_help_lists_every_command_without_importing_one() -> None:
    modules, output = _modules_after(["--help"])
    assert modules == []  # no command module, no torch
    for name, (_, summary) in COMMANDS.items():
        assert name in output and summary.split()[0] in output


def test_each_commands_help_starts_without_torch() -> None:
    modules, _ = _modules_after(*([name, "--help"] for name in COMMANDS))
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("invocation", [["list"], ["list", "--json"], ["show", "-r", "CROWN"]])
def test_a_warm_cache_answers_without_torch(invocation: list[str]) -> None:
    """With the verdict cache warm (the first run fills it), the registry and ``list``/``show`` need no
    prover, no derivation and no tensor. The suite's cache directory is a fresh one (tests/conftest.py)."""
    _modules_after(invocation)
    modules, output = _modules_after(invocation)
    assert not [m for m in modules if m.split(".")[0] in HEAVY], modules
    assert "CROWN" in output
