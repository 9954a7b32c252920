"""CLI commands for training and evaluation: train, certify, tightness, report, paradox.

A thin layer over :mod:`relaxlab.training` and :mod:`relaxlab.evaluation`: every command checks
its input (names, eps, files) before any work and turns library errors into one clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, clear_errors, fail, render_table
from relaxlab.cli.options import (
    DATA_DIR,
    DEVICE,
    LOSS_FUSION,
    QUIET,
    SMOOTHING_SAMPLES,
    SMOOTHING_SIGMA,
    STORE,
    THREADS,
    WIDE,
    check_device,
    check_eps,
    count_option,
    load_test_split,
    out_dir_option,
    relaxation_option,
    select,
    select_methods,
)
from relaxlab.cli.progress import interruptible
from relaxlab.runtime import set_threads


def _parse_sets(values: tuple[str, ...]) -> dict[str, Any]:
    from relaxlab.training.config import tomllib  # tomli on Python 3.10

    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            fail(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


@click.command("train")
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_dir_option("Run directory (default: runs/<name>).")
@STORE
@click.option(
    "--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint."
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (TOML value).")
@click.option(
    "--objective",
    default=None,
    metavar="NAME",
    help="Training objective, parameters allowed: 'SABR(lambda=0.6)' (relaxlab list --objectives).",
)
@DATA_DIR
@SMOOTHING_SAMPLES
@SMOOTHING_SIGMA
@LOSS_FUSION
@click.option(
    "--stop-after", type=int, default=None, hidden=True, help="Stop after N epochs (simulate interruption)."
)
@DEVICE
@THREADS
@QUIET
def train_command(
    config_file: Path,
    out_dir: Path | None,
    store_path: Path | None,
    resume: bool,
    sets: tuple[str, ...],
    objective: str | None,
    data_dir: str | None,
    smoothing_samples: int | None,
    smoothing_sigma: float | None,
    loss_fusion: bool | None,
    stop_after: int | None,
    device: str,
    threads: int | None,
    quiet: bool,
) -> None:
    """Train a network as CONFIG_FILE (TOML) says; checkpoints every epoch.

    --objective, --smoothing-samples, --smoothing-sigma and --loss-fusion override the config keys of
    the same names, as --set does.
    """
    from relaxlab.cli.progress import Phases
    from relaxlab.store import Store, default_store_path
    from relaxlab.training.config import load_config, validate_names
    from relaxlab.training.trainer import train

    device = check_device(device)
    with clear_errors():
        overrides = _parse_sets(sets)
        options = {
            "objective": objective,
            "data_dir": data_dir,
            "smoothing_samples": smoothing_samples,
            "smoothing_sigma": smoothing_sigma,
            "loss_fusion": loss_fusion,
        }
        overrides.update({key: value for key, value in options.items() if value is not None})
        config = load_config(config_file, **overrides)
        validate_names(config)
        out_dir = out_dir or Path("runs") / config.name
        store_path = store_path or default_store_path(out_dir)
        callbacks = []
        if config.track_every > 0:
            from relaxlab.experiments.tracking import tracking_callback

            callbacks.append(tracking_callback(every=config.track_every))
        set_threads(threads)
        again = f"relaxlab train {config_file} --out {out_dir} --resume"
        with (
            interruptible(f"continue from the last epoch's checkpoint with: {again}"),
            Store(store_path) as store,
            Phases(quiet=quiet, prefix="train ") as phases,
        ):
            if resume:
                store.verify()
            result = train(
                config,
                out_dir,
                store=store,
                resume=resume,
                callbacks=callbacks,
                progress=phases.start,
                stop_after=stop_after,
                device=device,
                log=phases.write,
            )
    if result.finished:
        click.echo(
            f"{config.name}: test accuracy {100 * result.final['test_accuracy']:.2f}%, certified "
            f"({config.train_relaxations[0] if config.train_relaxations else 'IBP'}, eps={config.eps_test:g}) "
            f"{100 * result.final['test_certified']:.2f}% of {int(result.final.get('test_n', 0)) or 'the'} test images"
            f"  [checkpoint {result.checkpoint}; run {result.run_id} in {store_path}]"
        )
    else:
        click.echo(f"{config.name}: stopped after epoch {len(result.history)}; resume with --resume")


@click.command("certify")
@click.argument(
    "checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@relaxation_option(
    help_text="Certifying relaxation(s), opt:NAME for its parameters optimised per neuron; several print the Table 10 matrix. "
    "Default: each model's training relaxation(s) (IBP for natural training)"
)
@click.option("--eps", type=float, default=None, help="Radius in [0, 1] (default: the run's eps_test).")
@count_option("Certify the first N test images (default: all).")
@click.option("--no-pgd", is_flag=True, help="Skip the PGD attack (100 steps, step size 0.01).")
@DATA_DIR
@STORE
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
def certify_command(
    checkpoints: tuple[Path, ...],
    relaxation: tuple[str, ...],
    eps: float | None,
    n: int | None,
    no_pgd: bool,
    data_dir: str | None,
    store_path: Path | None,
    batch_size: int,
    device: str,
    threads: int | None,
    wide: bool,
    quiet: bool,
) -> None:
    """Standard accuracy, PGD accuracy and certified robustness of CHECKPOINTS.

    Every certification is recorded in a results store (--store; default: results.sqlite beside
    the checkpoint's run directory), where `relaxlab report` finds it next to the others.
    """
    from relaxlab.cli.progress import Progress
    from relaxlab.evaluation.certify import certify, record_results
    from relaxlab.store import Store, default_store_path
    from relaxlab.training.checkpoint import build_model, read_checkpoint
    from relaxlab.training.config import from_dict

    device = check_device(device)
    with clear_errors():
        if eps is not None:
            check_eps(eps)
        certifiers = select_methods(relaxation) if relaxation else None
        loaded = []
        for path in checkpoints:  # check every file before any work
            payload = read_checkpoint(path)
            config = from_dict(__import__("json").loads(payload["config"]))
            model = build_model(payload, source=f"checkpoint {path}")
            loaded.append((path, config, model.to(device)))
        set_threads(threads)
        rows = []
        matrix: dict[str, dict[str, float]] = {}
        stores: dict[Path, int] = {}
        for number, (path, config, model) in enumerate(loaded, 1):
            run_eps = config.eps_test if eps is None else eps
            use = certifiers or select(config.train_relaxations or ("IBP",))
            dataset, x, y = load_test_split(config.to_dict(), data_dir, n)
            desc = "certify" if len(loaded) == 1 else f"certify {number}/{len(loaded)} ({path})"
            with Progress(desc, int(y.shape[0]), quiet=quiet, unit="img") as progress:
                results = certify(
                    model,
                    x.to(device),
                    y.to(device),
                    run_eps,
                    use,
                    num_classes=dataset.num_classes,
                    pgd=not no_pgd,
                    batch_size=batch_size,
                    progress=progress.update,
                )
            where = store_path or default_store_path(path.parent)
            with Store(where) as store:
                trained = {
                    "dataset": config.dataset,
                    "architecture": config.architecture,
                    "method_label": config.label,
                    "objective": config.objective_label,
                }
                record_results(
                    store, results, checkpoint=path, trained=trained, name=f"certify-{config.name}"
                )
            stores[where] = stores.get(where, 0) + len(results)
            for result in results:
                pgd = "—" if result.pgd is None else f"{100 * result.pgd:.2f}"
                rows.append(
                    (
                        str(path),
                        config.label,
                        result.relaxation,
                        f"{run_eps:g}",
                        result.n,
                        f"{100 * result.accuracy:.2f}",
                        pgd,
                        f"{100 * result.certified:.2f}",
                    )
                )
                matrix.setdefault(f"{config.label} ({path.parent})", {})[result.relaxation] = (
                    100 * result.certified
                )
    width = None if wide else TABLE_WIDTH
    click.echo(
        render_table(
            ["checkpoint", "trained", "certified with", "eps", "n", "Acc %", "PGD %", "CR %"],
            rows,
            width=width,
        )
    )
    if certifiers and len(certifiers) > 1:
        names = [c.label for c in certifiers]
        click.echo("\nCR (%): trained with (rows) x certified with (columns)  [Table 10 layout]")
        click.echo(
            render_table(
                ["trained \\ certified", *names],
                [(k, *(f"{v.get(c, float('nan')):.2f}" for c in names)) for k, v in matrix.items()],
                width=width,
            )
        )
    for where, count in stores.items():
        click.echo(
            f"recorded {count} certification{'s' if count > 1 else ''} in the results store {where} "
            f"(tables: relaxlab report --store {where})"
        )


@click.command("tightness")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@relaxation_option(default="paper")
@click.option("--eps-max", type=float, default=0.07, show_default=True, help="Largest radius of the grid.")
@click.option("--points", type=int, default=21, show_default=True, help="Radii in the grid (the paper: 100).")
@count_option("Use the first N test images (default: all).")
@out_dir_option("Where to write tightness.png / .md / .csv (default: next to the checkpoint).")
@DATA_DIR
@STORE
@DEVICE
@THREADS
@QUIET
def tightness_command(
    checkpoint: Path,
    relaxation: tuple[str, ...],
    eps_max: float,
    points: int,
    n: int | None,
    out_dir: Path | None,
    data_dir: str | None,
    store_path: Path | None,
    device: str,
    threads: int | None,
    quiet: bool,
) -> None:
    """CR curves over an eps grid and CR-AUC (trapezoidal) per relaxation: Fig. 2 and Table 6."""
    import json

    from relaxlab.cli.progress import Progress
    from relaxlab.properties.tightness import cr_curves, eps_grid, plot_curves
    from relaxlab.store import Store, default_store_path
    from relaxlab.training.checkpoint import build_model, read_checkpoint
    from relaxlab.training.config import from_dict

    device = check_device(device)
    with clear_errors():
        grid = eps_grid(eps_max, points)
        relaxations = select(relaxation)
        payload = read_checkpoint(checkpoint)
        config = from_dict(json.loads(payload["config"]))
        model = build_model(payload, source=f"checkpoint {checkpoint}").to(device)
        dataset, x, y = load_test_split(config.to_dict(), data_dir, n)
        set_threads(threads)
        with Progress("tightness", len(grid) * len(relaxations), quiet=quiet, unit="radius") as progress:
            result = cr_curves(
                model,
                x.to(device),
                y.to(device),
                grid,
                relaxations,
                num_classes=dataset.num_classes,
                progress=progress.update,
            )
        out_dir = out_dir or checkpoint.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_curves(result, out_dir / "tightness.png", title=f"CR curves, {config.name} ({config.dataset})")
        (out_dir / "tightness.md").write_text(result.table("markdown"))
        (out_dir / "tightness.csv").write_text(result.table("csv"))
        with Store(store_path or default_store_path(checkpoint.parent)) as store:
            run_id = store.create_run(
                "tightness",
                {
                    "checkpoint": str(checkpoint),
                    "eps_max": eps_max,
                    "points": points,
                    "n": result.n,
                    "dataset": config.dataset,
                    "architecture": config.architecture,
                },
                name=f"tightness-{config.name}",
            )
            store.log_metrics(run_id, 0, {f"cr_auc/{k}": v for k, v in result.auc().items()})
            store.finish_run(run_id)
    click.echo(f"n = {result.n}, accuracy {result.accuracy:.1f}%, {points} radii in [0, {eps_max:g}]")
    click.echo(result.table("markdown"))
    click.echo(
        f"wrote tightness.png, tightness.md and tightness.csv to {out_dir}; recorded in the results store "
        f"{store_path or default_store_path(checkpoint.parent)}"
    )


@click.command("report")
@STORE
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "csv"]),
    default="markdown",
    show_default=True,
    help="Markdown tables or one CSV.",
)
@out_dir_option("Write report.md (or report.csv) into this directory instead of printing it.")
def report_command(store_path: Path | None, fmt: str, out_dir: Path | None) -> None:
    """Paper-style tables (Table 2 / 11 and Table 10 layouts) from the results store."""
    from relaxlab.evaluation.report import render_csv, render_markdown
    from relaxlab.store import Store, default_store_path

    if out_dir is not None and out_dir.suffix.lower() in (".md", ".csv"):
        fail(
            f"--out names a directory (report.{'md' if fmt == 'markdown' else 'csv'} is written into it), "
            f"got {out_dir}; give --out {out_dir.parent}"
        )
    path = store_path or default_store_path()
    if not path.is_file():
        fail(f"no results database at {path}; run `relaxlab train` / `certify` first or pass --store")
    with clear_errors(), Store(path, readonly=True) as store:  # a report never writes into what it reads
        store.verify()
        text = render_markdown(store) if fmt == "markdown" else render_csv(store)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / ("report.md" if fmt == "markdown" else "report.csv")
        target.write_text(text, encoding="utf-8")
        click.echo(f"wrote {target}")
    else:
        click.echo(text)


@click.command("paradox")
@out_dir_option("Output directory: runs, store, tables and plots.", default=Path("runs/paradox"))
@click.option("--eps", type=float, default=0.1, show_default=True, help="Training and test radius.")
@click.option("--quick", is_flag=True, help="An even shorter schedule (smoke test).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every training run.")
@DEVICE
@THREADS
@QUIET
def paradox_command(
    out_dir: Path, eps: float, quick: bool, seed: int, device: str, threads: int | None, quiet: bool
) -> None:
    """Train CONV with IBP, hBox, DeepZ, CROWN, CROWN-IBP (R) on the embedded data and print the paradox table.

    The data is relaxlab's embedded MNIST subset (mnist-mini), so there is no --data-dir.
    """
    from relaxlab.cli.progress import Phases
    from relaxlab.experiments.paradox import paradox_markdown, run_paradox
    from relaxlab.store import STORE_NAME

    check_eps(eps)
    device = check_device(device)
    with (
        clear_errors(),
        interruptible(
            "rerun the same command: finished runs are reused, the interrupted one "
            "resumes from its last epoch's checkpoint"
        ),
        Phases(quiet=quiet, prefix="paradox: ") as phases,
    ):
        set_threads(threads)
        rows = run_paradox(
            out_dir,
            eps=eps,
            quick=quick,
            seed=seed,
            device=device,
            progress=phases.start,
            log=phases.write,
        )
    click.echo(paradox_markdown(rows, eps=eps, n=rows[0].n))
    click.echo(
        f"plots: {out_dir / 'tightness.png'}, {out_dir / 'paradox.png'}; store: {out_dir / STORE_NAME}"
    )
