"""The ``relaxlab`` command line: a thin layer over the Python API.

Each command group lives in its own module and exposes ``COMMANDS``; this
module only assembles them. Nothing in the library imports the CLI.
"""

from __future__ import annotations

import importlib
import os

# OpenMP threads that wait for work sleep instead of spinning: on a machine shared with other
# CPU-bound work, spinning threads burn the other process's share (the main job took 1,447 s of
# CPU instead of about 340 s under load, issue 13). Read when torch loads its OpenMP runtime,
# so it is set before anything imports torch; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from relaxlab.runtime import tune_allocator  # noqa: E402

#: Modules that contribute commands, in the order ``relaxlab --help`` lists them.
COMMAND_MODULES = (
    "relaxlab.cli.registry_cmds",
    "relaxlab.cli.engine_cmds",
    "relaxlab.cli.discovery_cmds",
    "relaxlab.cli.training_cmds",
    "relaxlab.cli.analysis_cmds",
    "relaxlab.cli.sweep_cmds",
    "relaxlab.cli.screen_cmds",
    "relaxlab.cli.export_cmds",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relaxlab")
def cli() -> None:
    """relaxlab: a laboratory for ReLU convex relaxations in certified training."""
    # Bound computations free and reallocate tensors of many MiB per batch; keep that memory in
    # the process instead of page-faulting it back every time (docs/performance.md).
    tune_allocator()


def _assemble() -> None:
    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            cli.add_command(command)


_assemble()


def main() -> None:
    """Entry point of the ``relaxlab`` script."""
    cli(prog_name="relaxlab")
