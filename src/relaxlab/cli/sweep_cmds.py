"""CLI command ``relaxlab sweep``: a grid of runs x seeds on Ray (or in-process), resumable.

A thin layer over :mod:`relaxlab.experiments`: the sweep file is validated completely before any
work (an invalid one exits with status 2 and one message naming the key and the fix); runs already
done in the output directory's store are skipped; a failed run is recorded and the others go on
(exit status 1 at the end when any failed).
"""

from __future__ import annotations

from pathlib import Path

import click

from relaxlab.cli.format import clear_errors, render_table
from relaxlab.cli.options import QUIET, out_dir_option


class SweepFileError(click.ClickException):
    """An invalid sweep file: exit status 2."""

    exit_code = 2


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option("Output directory: one sub-directory per run and results.sqlite (default: runs/<sweep name>).")
@click.option(
    "--address", default=None, help="Address of an existing Ray cluster (`ray start --head` prints it)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs at the same time (local Ray).",
)
@click.option(
    "--executor",
    "executor_name",
    type=click.Choice(["auto", "ray", "inprocess"]),
    default="auto",
    show_default=True,
    help="auto: Ray when installed, else in-process.",
)
@click.option("--dry-run", is_flag=True, help="List the runs, their ids and status; train nothing.")
@QUIET
def sweep_cmd(
    sweep_file: Path,
    out_dir: Path | None,
    address: str | None,
    workers: int,
    executor_name: str,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Train and certify every run of SWEEP_FILE (TOML: [base], [grid], [[runs]], seeds, [certify], [select])."""
    from relaxlab.cli.progress import Phases
    from relaxlab.experiments.executors import make_executor
    from relaxlab.experiments.sweep import STORE_NAME, SweepError, load_sweep, run_status, run_sweep
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
            with Store(store_path) as store:
                statuses = {run.key: run_status(store, run.key) for run in sweep.runs}
        rows = [(run.key, statuses.get(run.key, "pending"), run.label) for run in sweep.runs]
        click.echo(f"sweep {sweep.name}: {len(rows)} runs -> {out_dir}")
        click.echo(render_table(["id", "status", "run"], rows))
        return
    with clear_errors():
        executor = make_executor(executor_name, workers, address)
        if executor_name == "auto" and executor.name == "in-process" and workers > 1:
            click.echo(
                "Ray is not installed: running one run at a time (pip install 'relaxlab[ray]')", err=True
            )
        with Phases(quiet=quiet, prefix="sweep: ") as phases:
            summary = run_sweep(sweep, out_dir, executor, progress=phases.start)
    click.echo(
        f"sweep {sweep.name}: {len(summary.trained)} trained, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed in {summary.seconds:.1f} s ({executor.name}); store {summary.store}"
    )
    for key, error in summary.failed.items():
        click.echo(f"  failed {key}: {error}")
    click.echo(f"report: relaxlab report --store {summary.store}")
    if summary.failed:
        raise SystemExit(1)
