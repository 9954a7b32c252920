"""CLI command ``relaxlab screen``: candidate relaxations trained with k seeds and ranked (Table 3).

A thin layer over :mod:`relaxlab.experiments.screen`: the screen file is validated completely before
any work (an invalid one exits with status 2 and one message naming the key and the fix); the runs
go through the sweep engine (resumable, in-process or on Ray); a failed run is recorded, the others
go on, and the command exits with status 1 at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, clear_errors, fail, render_table
from relaxlab.cli.options import QUIET, WIDE, check_device, executor_options, out_dir_option, start_executor
from relaxlab.cli.progress import interruptible
from relaxlab.cli.sweep_cmds import RESUME, YES, confirm_size, finish, run_statuses


@click.command("screen")
@click.argument("screen_file", type=click.Path(dir_okay=False, path_type=Path))
@out_dir_option(
    "Output directory: runs, results.sqlite, screen.md/.csv/.json, screen.png, genealogy.png "
    "(default: runs/<screen name>)."
)
@executor_options
@click.option("--dry-run", is_flag=True, help="List the candidates and the runs' status; train nothing.")
@YES
@WIDE
@QUIET
def screen_command(
    screen_file: Path,
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
    """Train every candidate of SCREEN_FILE with k seeds, certify it with its own relaxation, rank them.

    SCREEN_FILE (TOML): seeds, [candidates] (discovered = true, families, names, exclude),
    [schedule] (train-config keys), [certify] (n, eps, pgd), [tightness] (eps_max, points, n,
    checkpoint). Writes the table (lines per case, C/S flags, CR-AUC, CR mean ± std over seeds,
    wall time), CR against tightness with the Pareto front, and the genealogy coloured by CR.
    """
    from relaxlab.cli.progress import Phases
    from relaxlab.experiments.screen import TABLE_HEADERS, ScreenError, load_screen, run_screen, table_cells
    from relaxlab.experiments.sweep import STORE_NAME, plan

    width = None if wide else TABLE_WIDTH
    if not dry_run:
        device = check_device(device)
    try:
        screen = load_screen(screen_file, data_dir=data_dir)
    except ScreenError as error:
        fail(str(error))
    out_dir = out_dir or Path("runs") / screen.name
    click.echo(
        f"screen {screen.name}: {len(screen.candidates)} candidates x {len(screen.seeds)} seeds"
        f"{' + 1 natural run' if screen.natural else ''} = {len(screen.sweep.runs)} runs -> {out_dir}"
    )
    plugins = plugin_sources(screen)
    if plugins:
        click.echo(
            f"note: plugin(s) {', '.join(plugins)} add candidate lines or transforms to discovery's catalog, "
            "so `discovered = true` selects more candidates than the built-in catalog "
            f"(RELAXLAB_BLOCK_PLUGINS={','.join(plugins)} leaves them out)",
            err=True,
        )
    if dry_run:
        statuses = run_statuses(out_dir / STORE_NAME, out_dir, [run.key for run in screen.sweep.runs])
        rows = []
        for candidate in screen.candidates:
            runs = [statuses.get(run.key, "pending") for run in screen.runs_of(candidate)]
            halfway = sum(status.startswith("interrupted") for status in runs)
            rows.append(
                [
                    candidate.name,
                    candidate.family,
                    *candidate.lines,
                    *candidate.flags,
                    f"{runs.count('done')}/{len(screen.seeds)}"
                    + (f" (+{halfway} interrupted)" if halfway else ""),
                ]
            )
        click.echo(
            render_table(
                ["relaxation", "family", "negative", "unstable", "positive", "C", "S", "done"],
                rows,
                width=width,
            )
        )
        return
    with clear_errors():
        confirm_size(f"screen {screen.name}", plan(screen.sweep, out_dir), workers, yes)
    with clear_errors(), interruptible(RESUME):
        executor = start_executor(executor_name, workers, address)
        with Phases(quiet=quiet, prefix="screen: ") as phases:
            report = run_screen(screen, out_dir, executor, device=device, progress=phases.start)
    # the terminal table: the three cases in one column, accuracy left to screen.md
    cells = [table_cells(row, rank) for rank, row in enumerate(report.rows, 1)]
    rows = [[c[0], c[1], " | ".join(c[2:5]), *c[5:10], c[11]] for c in cells]
    headers = [
        TABLE_HEADERS[0],
        TABLE_HEADERS[1],
        "lines (neg | unst | pos)",
        *TABLE_HEADERS[5:10],
        TABLE_HEADERS[11],
    ]
    click.echo(render_table(headers, rows, width=width))
    click.echo("")
    finish(
        f"screen {screen.name}",
        report.summary,
        executor.name,
        f"wrote {', '.join(path.name for path in report.files)} to {out_dir}",
    )


def plugin_sources(screen: Any) -> list[str]:
    """The plugins other than relaxlab's own that contributed discovery's candidate lines or transforms."""
    if not any(c.family != "registered" for c in screen.candidates):
        return []
    sources = {line.source for line in screen.discovery.catalog.lines}
    sources |= {setting.source for setting in screen.discovery.transforms}
    return sorted(s for s in sources if not s.startswith("relaxlab."))
