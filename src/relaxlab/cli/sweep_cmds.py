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

from relaxlab.cli.format import TABLE_WIDTH, clear_errors, fail, render_table
from relaxlab.cli.options import QUIET, WIDE, check_device, executor_options, out_dir_option, start_executor
from relaxlab.cli.progress import interruptible

if TYPE_CHECKING:
    from relaxlab.experiments.sweep import SweepPlan, SweepSummary

#: What Ctrl-C and SIGTERM say: the store and the checkpoints keep everything done so far.
RESUME = (
    "rerun the same command to resume: finished runs are kept in the store, and an interrupted run "
    "continues from its last epoch's checkpoint"
)


class SweepFileError(click.ClickException):
    """An invalid sweep file: exit status 2."""

    exit_code = 2


#: ``--yes``: start a large sweep without asking.
YES = click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Start without asking, however many runs there are (more than 1,000 ask first).",
)


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
@out_dir_option(
    "Output directory: one sub-directory per run and results.sqlite (default: runs/<sweep name>)."
)
@executor_options
@click.option("--dry-run", is_flag=True, help="List the runs, their ids and status; train nothing.")
@YES
@WIDE
@QUIET
def sweep_command(
    sweep_file: Path,
    out_dir: Path | None,
    address: str | None,
    workers: int,
    executor_name: str,
    device: str,
    data_dir: str | None,
    dry_run: bool,
    yes: bool,
    wide: bool,
    quiet: bool,
) -> None:
    """Train and certify every run of SWEEP_FILE (TOML: [base], [grid], [[runs]], seeds, [certify], [select]).

    --data-dir sets every run's data_dir (a config key, so part of the runs' ids, as in the file's
    [base]). Ctrl-C or SIGTERM stop it; the same command resumes.
    """
    from relaxlab.cli.progress import Phases
    from relaxlab.experiments.sweep import STORE_NAME, SweepError, load_sweep, plan, run_sweep

    try:
        sweep = load_sweep(sweep_file, data_dir=data_dir)
    except SweepError as error:
        raise SweepFileError(str(error)) from error
    out_dir = out_dir or Path("runs") / sweep.name
    store_path = out_dir / STORE_NAME
    if dry_run:
        statuses = run_statuses(store_path, out_dir, [run.key for run in sweep.runs])
        rows = [(run.key, statuses.get(run.key, "pending"), run.label) for run in sweep.runs]
        click.echo(f"sweep {sweep.name}: {len(rows)} runs -> {out_dir}")
        click.echo(render_table(["id", "status", "run"], rows, width=None if wide else TABLE_WIDTH))
        return
    device = check_device(device)
    with clear_errors():
        confirm_size(f"sweep {sweep.name}", plan(sweep, out_dir), workers, yes)
    with clear_errors(), interruptible(RESUME):
        executor = start_executor(executor_name, workers, address)
        with Phases(quiet=quiet, prefix="sweep: ") as phases:
            summary = run_sweep(sweep, out_dir, executor, progress=phases.start, device=device)
    finish(f"sweep {sweep.name}", summary, executor.name, f"report: relaxlab report --store {summary.store}")


def run_statuses(store_path: Path, out_dir: Path, keys: list[str]) -> dict[str, str]:
    """Each run's status for ``--dry-run``: done, failed, pending, or how far an interrupted run got.

    An interrupted run has no record in the store yet (a run is recorded when it ends) but a
    checkpoint in its directory: it shows as ``interrupted after epoch E/N (resumes)``.
    """
    from relaxlab.experiments.sweep import run_status
    from relaxlab.store import Store
    from relaxlab.training.checkpoint import CheckpointError, read_checkpoint
    from relaxlab.training.trainer import CHECKPOINT_NAME

    recorded: dict[str, str] = {}
    if store_path.is_file():
        with Store(store_path, readonly=True) as store:  # a dry run writes nothing
            recorded = {key: run_status(store, key) for key in keys}
    statuses = {}
    for key in keys:
        status = recorded.get(key, "pending")
        checkpoint = out_dir / key / CHECKPOINT_NAME
        if status != "done" and checkpoint.is_file():
            try:
                payload = read_checkpoint(checkpoint)
                import json

                epochs, epoch = json.loads(payload["config"]).get("epochs"), int(payload["epoch"])
                status = (
                    f"interrupted after epoch {epoch}/{epochs} (resumes)"
                    if epoch != epochs
                    else "trained, not recorded (resumes: certifies and records it)"
                )
            except (CheckpointError, OSError, ValueError, KeyError):
                status = f"{status} (an unreadable checkpoint: starts over)"
        statuses[key] = status
    return statuses


def finish(what: str, summary: SweepSummary, executor: str, last: str) -> None:
    """The closing lines of a command of the sweep engine: counts, each failure, ``last``; exit 1 on failures."""
    click.echo(
        f"{what}: {len(summary.trained)} trained, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed in {summary.seconds:.1f} s ({executor}); store {summary.store}"
    )
    for key, error in summary.failed.items():
        click.echo(f"  failed {key}: {error}")
    if summary.elsewhere:
        click.echo(
            f"  {len(summary.elsewhere)} run(s) left to another process training them on this store: "
            f"{', '.join(summary.elsewhere)}"
        )
    click.echo(last)
    if summary.failed:
        raise SystemExit(1)
