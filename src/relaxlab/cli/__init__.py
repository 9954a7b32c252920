"""The ``relaxlab`` command line: a thin layer over the Python API.

Each command group lives in its own module. This module only names them: :data:`COMMANDS`
maps every command to the ``"module:attribute"`` that defines it and to its one-line help, and
:class:`LazyGroup` imports a command's module when that command runs (or its own ``--help`` is
asked for). ``relaxlab --help`` lists every command from the table alone. Nothing in the
library imports the CLI.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from relaxlab.runtime import tune_allocator

#: Every command: name -> (``"module:attribute"`` of the click command, its one-line help as
#: ``relaxlab --help`` shows it). A test keeps each help equal to the command's own.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": (
        "relaxlab.cli.registry_cmds:list_command",
        "List registered relaxations with their derived C/S flags.",
    ),
    "show": (
        "relaxlab.cli.registry_cmds:show_command",
        "Show relaxations: their lines per case in words, and their derived properties.",
    ),
    "check": (
        "relaxlab.cli.registry_cmds:check_command",
        "Prove soundness: every line on its side of the ReLU over the whole (l, u, parameter) domain.",
    ),
    "bounds": (
        "relaxlab.cli.engine_cmds:bounds_command",
        "Bound a network's outputs (or margins) for every input within EPS (l_inf) of INPUT.",
    ),
    "discover": (
        "relaxlab.cli.discovery_cmds:discover_command",
        "Discover relaxations: all line combinations -> sound -> non-dominated -> + switch, soft, (R) "
        "-> + transforms.",
    ),
    "train": (
        "relaxlab.cli.training_cmds:train_command",
        "Train a network as CONFIG_FILE (TOML) says; checkpoints every epoch.",
    ),
    "certify": (
        "relaxlab.cli.training_cmds:certify_command",
        "Standard accuracy, PGD accuracy and certified robustness of CHECKPOINTS.",
    ),
    "tightness": (
        "relaxlab.cli.training_cmds:tightness_command",
        "CR curves over an eps grid and CR-AUC (trapezoidal) per relaxation: Fig. 2 and Table 6.",
    ),
    "report": (
        "relaxlab.cli.training_cmds:report_command",
        "Paper-style tables (Table 2 / 11 and Table 10 layouts) from the results store.",
    ),
    "paradox": (
        "relaxlab.cli.training_cmds:paradox_command",
        "Train CONV with IBP, hBox, DeepZ, CROWN, CROWN-IBP (R) on the embedded data and print the "
        "paradox table.",
    ),
    "landscape": (
        "relaxlab.cli.analysis_cmds:landscape_command",
        "Bounds along the gradient direction of the first-layer weights (Fig. 5): PNG + CSV.",
    ),
    "continuity": (
        "relaxlab.cli.analysis_cmds:continuity_command",
        "Share of inputs whose bound jumps along a gradient segment (App. E.2).",
    ),
    "sensitivity": (
        "relaxlab.cli.analysis_cmds:sensitivity_command",
        "Theoretical degree and measured log-sensitivity (Sec. 4.3, App. E.2, J).",
    ),
    "gd-experiment": (
        "relaxlab.cli.analysis_cmds:gd_experiment_command",
        "Gradient descent on a bound landscape vs IBP (Sec. 4.4, App. D).",
    ),
    "tracking-plot": (
        "relaxlab.cli.analysis_cmds:tracking_plot_command",
        "Discontinuity share and log-sensitivity over training (Fig. 6).",
    ),
    "sweep": (
        "relaxlab.cli.sweep_cmds:sweep_command",
        "Train and certify every run of SWEEP_FILE (TOML: [base], [grid], [[runs]], seeds, [certify], "
        "[select]).",
    ),
    "screen": (
        "relaxlab.cli.screen_cmds:screen_command",
        "Train every candidate of SCREEN_FILE with k seeds, certify it with its own relaxation, rank them.",
    ),
    "table10": (
        "relaxlab.cli.table10_cmds:table10_command",
        "Certify the paper's 12 released MNIST networks with each relaxation (Table 10); print the matrix.",
    ),
    "export": (
        "relaxlab.cli.export_cmds:export_command",
        "Write CHECKPOINT's network to ONNX and (with --vnnlib) VNN-LIB robustness properties.",
    ),
    "verify": (
        "relaxlab.cli.verify_cmds:verify_command",
        "Answer VNN-COMP instances: NET.onnx PROP.vnnlib, or instances.csv files (unsat, sat, unknown, timeout).",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, from a table of ``"module:attribute"``."""

    def __init__(self, *args: Any, lazy_commands: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module_name, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise TypeError(f"{self.lazy_commands[cmd_name][0]} is not the click command {cmd_name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from the table: no command module is imported."""
        limit = formatter.width - 6 - max(map(len, self.list_commands(ctx)), default=0)
        rows = [
            (
                name,
                self.lazy_commands[name][1]
                if name in self.lazy_commands
                else self.commands[name].get_short_help_str(limit),
            )
            for name in self.list_commands(ctx)
            if name in self.lazy_commands or not self.commands[name].hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relaxlab")
def cli() -> None:
    """relaxlab: a laboratory for ReLU convex relaxations in certified training."""
    # Bound computations free and reallocate tensors of many MiB per batch; keep that memory in
    # the process instead of page-faulting it back every time (docs/performance.md).
    tune_allocator()


def main() -> None:
    """Entry point of the ``relaxlab`` script (and of ``python -m relaxlab``).

    Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: OpenMP threads that wait for work
    then sleep instead of spinning, so on a machine shared with other CPU-bound work they do not
    burn the other processes' share (the main job took 1,447 s of CPU instead of about 340 s
    under load, issue 13). It is read when torch loads its OpenMP runtime, which no command has
    done yet here. Only the program does this: importing :mod:`relaxlab.cli` changes nothing in
    the process.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cli(prog_name="relaxlab")
