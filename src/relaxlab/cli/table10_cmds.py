"""CLI command ``relaxlab table10``: the paper's released MNIST networks certified with each relaxation.

A thin layer over :func:`relaxlab.experiments.table10.run_table10`: it reads the MNIST test
split (``--data-dir``), certifies every released network (``--networks``) with every relaxation
(``-r``, default the paper's five) on the first ``--n`` images, continuing the record
``table10.json`` in the directory ``--out``, and prints the matrix beside the paper's Table 10
(and the clean accuracy beside Table 11's).
"""

from __future__ import annotations

from pathlib import Path

import click

from relaxlab.cli.format import TABLE_WIDTH, clear_errors, render_table
from relaxlab.cli.options import (
    DATA_DIR,
    DEVICE,
    QUIET,
    THREADS,
    WIDE,
    count_option,
    out_dir_option,
    relaxation_option,
    select_methods,
)

#: The record's name in the ``--out`` directory.
RECORD = "table10.json"


@click.command("table10")
@out_dir_option(
    f"Directory of the record {RECORD} (per cell one bit per test image; continued when it exists).",
    default=Path("runs/table10"),
)
@relaxation_option(
    default="paper",
    help_text="Certifying relaxation(s), the columns (opt:NAME: its parameters optimised per neuron)",
)
@click.option(
    "--net",
    "nets",
    multiple=True,
    help="Released network(s), the rows: a file stem (mnist_CONV_zono), FC or CONV; repeatable "
    "(default: all twelve).",
)
@count_option("Certify the first N MNIST test images (at most 10,000).", default=10_000)
@click.option("--eps", type=float, default=0.3, show_default=True, help="l_inf radius in pixel space [0, 1].")
@click.option(
    "--networks",
    "networks_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the released mnist_*.pt files (default: $RELAXLAB_PARADOX_PRETRAINED, "
    "./paradox-pretrained, ~/.cache/relaxlab/paradox-pretrained).",
)
@DATA_DIR
@click.option(
    "--show", is_flag=True, help="Only print what --out holds for the first N images; certify nothing."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Images bounded at once (memory vs speed).",
)
@DEVICE
@THREADS
@WIDE
@QUIET
def table10_command(
    out_dir: Path,
    relaxation: tuple[str, ...],
    nets: tuple[str, ...],
    n: int,
    eps: float,
    networks_dir: Path | None,
    data_dir: str | None,
    show: bool,
    batch_size: int,
    device: str,
    threads: int | None,
    wide: bool,
    quiet: bool,
) -> None:
    """Certify the paper's 12 released MNIST networks with each relaxation (Table 10); print the matrix."""
    from relaxlab.cli.options import check_device, check_eps
    from relaxlab.cli.progress import Progress, duration
    from relaxlab.experiments.released import select_released
    from relaxlab.experiments.table10 import Table10Record, load_record, run_table10, table10_rows

    out = out_dir / RECORD
    with clear_errors():
        eps = check_eps(eps)
        relaxations = select_methods(relaxation)
        networks = select_released(nets)
        if show:
            record = load_record(out) if out.exists() else Table10Record(eps=eps)
        else:
            from relaxlab.api import get_registry
            from relaxlab.runtime import set_threads

            images, labels = get_registry().datasets["mnist"].load("test", data_dir)
            images, labels = images[:n], labels[:n]
            n = int(labels.shape[0])  # fewer when the files hold fewer
            set_threads(threads)
            device = check_device(device)
            existing = load_record(out) if out.exists() else Table10Record(eps=eps)
            todo = sum(
                max(0, n - (cell.done if cell else 0))
                for network in networks
                for r in relaxations
                if (cell := existing.cell(network.name, r.label)) is None or cell.done < n
            )
            with Progress("table10", todo, quiet=quiet, unit="img") as progress:
                record = run_table10(
                    out,
                    images,
                    labels,
                    relaxations,
                    networks=networks,
                    networks_dir=networks_dir,
                    eps=eps,
                    batch_size=batch_size,
                    device=device,
                    progress=progress.update,
                    log=None if quiet else progress.write,
                )
    names = [r.label for r in relaxations]
    headers, rows = table10_rows(record, names, n, networks=networks)
    click.echo(
        f"CR (%) at eps={record.eps:g} on the first {n} MNIST test images: ours (paper's Table 10; "
        "Acc: Table 11)"
    )
    click.echo(render_table(headers, rows, width=None if wide else TABLE_WIDTH))
    cells = [cell for network in networks for name in names if (cell := record.cell(network.name, name))]
    if cells:
        seconds = sum(cell.seconds for cell in cells)
        click.echo(
            f"\n{len(cells)} cells recorded in {out}; certifying took {duration(seconds)} in all "
            f"({max(cell.threads for cell in cells)} torch thread(s))."
        )
