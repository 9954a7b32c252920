"""CLI command ``relaxlab sweep``: a grid of runs x seeds on Ray (or in-process), resumable.

A thin layer over :mod:`relaxlab.experiments`: the sweep file is validated completely before any
work (an invalid one exits with status 2 and one message naming the key and the fix); runs already
done in the output directory's store are skipped; a failed run is recorded and the others go on
(exit status 1 at the end when any failed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from relaxlab.cli.format import clear_errors, fail, render_table
from relaxlab.cli.options import DEVICE, QUIET, check_device, executor_options, out_dir_option, start_executor

if TYPE_CHECKING:
    from relaxlab.experiments.sweep import SweepPlan, SweepSummary


class SweepFileError(click.ClickException):
    """An invalid sweep file: exit status 2."""

    exit_code = 2


#: ``--yes``: start a large sweep without asking.
YES = click.option("--yes", "-y", is_flag=True,
                   help="Start without asking, however many runs there are (more than 1,000 ask first).")


def confirm_size(what: str, plan: SweepPlan, workers: int, yes: bool) -> None:
    """Ask before training more than :data:`~relaxlab.experiments.sweep.LARGE_SWEEP` runs (the count and an
    estimate); without a terminal to ask on, refuse unless ``--yes``."""
    from relaxlab.experiments.sweep import LARGE_SWEEP

    if yes or plan.todo <= LARGE_SWEEP:
        return
    question = f"{what}: {plan.describe(workers)}"
    if not sys.stdin.isatty():
        fail(f"{question}; pass --yes to start it (or make the grid smaller)")
    if not click.confirm(f"{question}. Start?", default=False, err=True):
        raise SystemExit(1)


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option("Output directory: one sub-directory per run and results.sqlite (default: runs/<sweep name>).")
@executor_options
@DEVICE
@click.option("--dry-run", is_flag=True, help="List the runs, their ids and status; train nothing.")
@YES
@QUIET
def sweep_cmd(
    sweep_file: Path,
    out_dir: Path | None,
    address: str | None,
    workers: int,
    executor_name: str,
    device: str,
    dry_run: bool,
    yes: bool,
    quiet: bool,
) -> None:
    """Train and certify every run of SWEEP_FILE (TOML: [base], [grid], [[runs]], seeds, [certify], [select])."""
    from relaxlab.cli.progress import Phases
    from relaxlab.experiments.sweep import STORE_NAME, SweepError, load_sweep, plan, run_status, run_sweep
    from relaxlab.store import Store

    try:
        sweep = load_sweep(sweep_file)
    except SweepError as error:
        raise SweepFileError(str(error)) from error
    out_dir = out_dir or Path("runs") / sweep.name
    store_path = out_dir / STORE_NAME
    if dry_run:
        statuses: dict[str, str] = {}
        if store_path.is_file():
            with clear_errors(), Store(store_path, readonly=True) as store:  # a dry run writes nothing
                statuses = {run.key: run_status(store, run.key) for run in sweep.runs}
        rows = [(run.key, statuses.get(run.key, "pending"), run.label) for run in sweep.runs]
        click.echo(f"sweep {sweep.name}: {len(rows)} runs -> {out_dir}")
        click.echo(render_table(["id", "status", "run"], rows))
        return
    device = check_device(device)
    with clear_errors():
        confirm_size(f"sweep {sweep.name}", plan(sweep, out_dir), workers, yes)
        executor = start_executor(executor_name, workers, address)
        with Phases(quiet=quiet, prefix="sweep: ") as phases:
            summary = run_sweep(sweep, out_dir, executor, progress=phases.start, device=device)
    finish(f"sweep {sweep.name}", summary, executor.name, f"report: relaxlab report --store {summary.store}")


def finish(what: str, summary: SweepSummary, executor: str, last: str) -> None:
    """The closing lines of a command of the sweep engine: counts, each failure, ``last``; exit 1 on failures."""
    click.echo(
        f"{what}: {len(summary.trained)} trained, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed in {summary.seconds:.1f} s ({executor}); store {summary.store}"
    )
    for key, error in summary.failed.items():
        click.echo(f"  failed {key}: {error}")
    if summary.elsewhere:
        click.echo(f"  {len(summary.elsewhere)} run(s) left to another process training them on this store: "
                   f"{', '.join(summary.elsewhere)}")
    click.echo(last)
    if summary.failed:
        raise SystemExit(1)
