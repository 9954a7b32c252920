"""CLI commands for the analyses of continuity and sensitivity (Sec. 4, 5.1, App. D, E of the paper).

``landscape``, ``continuity``, ``sensitivity``, ``gd-experiment`` and ``tracking-plot``: thin
wrappers over :mod:`relaxlab.properties` (the measures) and :mod:`relaxlab.experiments` (the
landscape, App. D and tracking experiments). Every command checks its input before any work.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, clear_errors, fail, render_table
from relaxlab.cli.options import (
    DATA_DIR,
    DEVICE,
    QUIET,
    THREADS,
    WIDE,
    check_device,
    check_eps,
    count_option,
    image_path,
    one_relaxation,
    plot_option,
    relaxation_option,
    renamed_option,
    select,
)
from relaxlab.runtime import set_threads


def _load(checkpoint: Path, split: str, data_dir: str | None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """The model of a checkpoint (on ``device``) and the dataset split it was trained on (there too)."""
    from relaxlab.api import get_registry
    from relaxlab.training.checkpoint import checkpoint_config, load_model

    model = load_model(checkpoint).to(device)
    config = checkpoint_config(checkpoint)
    dataset = get_registry().datasets[config.get("dataset", "mnist-mini")]
    x, y = dataset.load(split, root=data_dir or config.get("data_dir"))
    return model, x.to(device), y.to(device)


def _table(headers: list[str], rows: list[list[Any]], wide: bool) -> None:
    click.echo(render_table(headers, rows, width=None if wide else TABLE_WIDTH))


CHECKPOINT = click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
RELAXATIONS = relaxation_option(default="paper")
EPS = click.option("--eps", type=float, required=True, help="l_inf radius in pixel space [0, 1].")
SPLIT = click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["train", "test"]),
    help="Which split of the checkpoint's dataset the examples come from.",
)
#: The retired spellings of the analysis commands, refused with the new one.
OUT_IS_A_DIRECTORY = renamed_option(
    "--out", "--out names a directory everywhere; give the image with --plot FILE"
)
OUTPUT_IS_NEURON = renamed_option("--output", "the output neuron whose bound is followed is --neuron N")


@click.command("landscape")
@CHECKPOINT
@RELAXATIONS
@EPS
@click.option("--index", type=int, default=0, show_default=True, help="Which example of the split.")
@click.option(
    "--neuron",
    type=int,
    default=None,
    help="Follow the lower bound of this output neuron (default: the example's label).",
)
@click.option("--loss", is_flag=True, help="Follow the certified loss instead of a lower bound.")
@click.option("--radius", type=float, default=1.0, show_default=True, help="δ ranges over [-radius, radius].")
@click.option(
    "--points", type=click.IntRange(min=2), default=500, show_default=True, help="Points along the segment."
)
@click.option(
    "--shared-direction", default=None, help="Use this relaxation's gradient direction for every curve."
)
@plot_option(
    "The image (PNG unless the suffix says otherwise); the CSV is written next to it.",
    default=Path("landscape.png"),
)
@SPLIT
@DATA_DIR
@DEVICE
@THREADS
@WIDE
@QUIET
@OUT_IS_A_DIRECTORY
@OUTPUT_IS_NEURON
def landscape_command(
    checkpoint: Path,
    relaxation: tuple[str, ...],
    eps: float,
    index: int,
    neuron: int | None,
    loss: bool,
    radius: float,
    points: int,
    shared_direction: str | None,
    plot_path: Path,
    split: str,
    data_dir: str | None,
    device: str,
    threads: int | None,
    wide: bool,
    quiet: bool,
) -> None:
    """Bounds along the gradient direction of the first-layer weights (Fig. 5): PNG + CSV.

    One panel per relaxation with its own y-axis (the shape: jumps, marked in red, and
    curvature), and a last panel with every curve on one axis (the comparison).
    """
    set_threads(threads)
    check_eps(eps)
    chosen = select(relaxation)
    device = check_device(device)
    with clear_errors():
        from relaxlab.cli.progress import Progress
        from relaxlab.experiments.landscape import landscape, plot_landscape, write_csv

        model, x, y = _load(checkpoint, split, data_dir, device)
        if not 0 <= index < x.shape[0]:
            fail(f"--index {index} is out of range: the {split} split has {x.shape[0]} examples")
        xi, yi = x[index : index + 1], int(y[index])
        with Progress("landscape", len(chosen), quiet=quiet, unit="curve") as progress:
            result = landscape(
                model,
                xi,
                eps,
                chosen,
                output=None if loss else (yi if neuron is None else neuron),
                label=yi if loss else None,
                radius=radius,
                points=points,
                direction_from=shared_direction,
                progress=progress.update,
            )
        png = plot_landscape(
            result,
            image_path(plot_path),
            title=f"{result.quantity} along the gradient "
            f"direction, {split} example {index} (label {yi}), ε = {eps:g}",
        )
        table = write_csv(result, png.with_suffix(".csv"))
    rows = [
        [k, f"{float(v.min()):.4g}", f"{float(v.max()):.4g}", len(result.jumps[k])]
        for k, v in result.values.items()
    ]
    _table(["relaxation", "min", "max", "jumps (App. E.2 test)"], rows, wide)
    click.echo(f"wrote {png} and {table}")


@click.command(
    "continuity", short_help="Share of inputs whose bound jumps along a gradient segment (App. E.2)."
)
@CHECKPOINT
@RELAXATIONS
@EPS
@count_option("Examples measured: N from --start on (paper: 100).", default=10)
@click.option(
    "--start", type=click.IntRange(min=0), default=0, show_default=True, help="First example of the split."
)
@click.option(
    "--points", type=click.IntRange(min=3), default=500, show_default=True, help="n (App. E.2: 500)."
)
@click.option("--alpha", type=float, default=0.03, show_default=True, help="α (App. E.2: 0.03).")
@SPLIT
@DATA_DIR
@DEVICE
@THREADS
@WIDE
@renamed_option("--samples", "the number of examples is --n N, as on every command")
def continuity_command(
    checkpoint: Path,
    relaxation: tuple[str, ...],
    eps: float,
    n: int,
    start: int,
    points: int,
    alpha: float,
    split: str,
    data_dir: str | None,
    device: str,
    threads: int | None,
    wide: bool,
) -> None:
    """App. E.2's empirical continuity: share of examples whose certified loss jumps along ±α∇θL."""
    set_threads(threads)
    check_eps(eps)
    chosen = select(relaxation)
    device = check_device(device)
    with clear_errors():
        from relaxlab.properties.continuity import discontinuity_share
        from relaxlab.properties.sensitivity import measured_log_sensitivity

        model, x, y = _load(checkpoint, split, data_dir, device)
        xs, ys = x[start : start + n], y[start : start + n]
        if xs.shape[0] == 0:
            fail(f"--start {start} is past the end of the {split} split ({x.shape[0]} examples)")
        rows = []
        for spec in chosen:
            result = discontinuity_share(model, xs, ys, eps, spec, alpha=alpha, points=points)
            logs, counts = measured_log_sensitivity(model, xs, eps, spec)
            rows.append(
                [
                    spec.label,
                    f"{result.share:.2f}",
                    int(result.counts.sum()),
                    f"{sum(logs) / len(logs):.3f}",
                    f"{sum(counts) / len(counts):.2f}",
                ]
            )
    _table(["relaxation", "discontinuity share", "jumps", "log-sensitivity", "unstable layers"], rows, wide)


@click.command(
    "sensitivity", short_help="Theoretical degree and measured log-sensitivity (Sec. 4.3, App. E.2, J)."
)
@RELAXATIONS
@click.option("--blocks", "-B", type=int, default=None, help="B: ReLU-affine blocks after the first ReLU.")
@click.option("--width", "-M", type=int, default=None, help="M: width of every layer.")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Use this network's architecture (fan-ins) instead of B and M.",
)
@WIDE
def sensitivity_command(
    relaxation: tuple[str, ...], blocks: int | None, width: int | None, checkpoint: Path | None, wide: bool
) -> None:
    """Theoretical sensitivity (degree N of R_N, Sec. 4.3 / App. J) derived from each relaxation's spec."""
    if checkpoint is None and (blocks is None or width is None):
        fail("give --blocks and --width (the paper's B and M), or --checkpoint")
    if checkpoint is not None and (blocks is not None or width is not None):
        fail("give either --checkpoint or --blocks/--width, not both")
    if blocks is not None and blocks < 0:
        fail(f"--blocks must be >= 0, got {blocks}")
    if width is not None and width < 1:
        fail(f"--width must be >= 1, got {width}")
    chosen = select(relaxation)
    with clear_errors():
        from relaxlab.properties.sensitivity import OpaqueRelaxationError, degree_on, fan_ins_of

        if checkpoint is not None:
            from relaxlab.api import get_registry
            from relaxlab.training.checkpoint import checkpoint_config, load_model

            model = load_model(checkpoint)
            shape = (
                get_registry()
                .datasets[checkpoint_config(checkpoint).get("dataset", "mnist-mini")]
                .input_shape
            )
            fan_ins = fan_ins_of(model, shape)
        else:
            assert blocks is not None and width is not None
            fan_ins = [width] * (blocks + 1)
        rows = []
        for spec in chosen:
            try:
                result = degree_on(spec, fan_ins)
                rows.append([spec.label, spec.intermediate, str(result.output), _short(result.degree)])
            except OpaqueRelaxationError as error:
                rows.append([spec.label, spec.intermediate, "unknown", str(error)])
    click.echo(f"fan-ins after each ReLU layer: {fan_ins}")
    _table(["relaxation", "intermediate", "class", "sensitivity N"], rows, wide)


def _short(value: float) -> str:
    if math.isinf(value):
        return "∞ (not rational)"
    text = str(int(value))
    return text if len(text) <= 20 else f"{text[:6]}…e{len(text) - 1}"


@click.command("gd-experiment", short_help="Gradient descent on a bound landscape vs IBP (Sec. 4.4, App. D).")
@relaxation_option(default="CROWN", help_text="The relaxation compared with IBP")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of App. D's random network.")
@click.option(
    "--search",
    type=int,
    default=0,
    show_default=True,
    help="Try seeds seed..seed+N-1 and keep the first where GD ends below IBP (Fig. 4's behaviour).",
)
@click.option(
    "--neuron",
    type=int,
    default=0,
    show_default=True,
    help="Output neuron whose lower bound is maximised (0 or 1).",
)
@click.option("--lr", type=float, default=None, help="Initial learning rate (default: App. D's).")
@click.option("--decay", type=float, default=None, help="Learning-rate decay per epoch (default 0.99).")
@click.option("--epochs", type=int, default=None, help="Epochs (default: App. D's).")
@plot_option(
    "Image of both trajectories (PNG unless the suffix says otherwise).", default=Path("gd_experiment.png")
)
@WIDE
@OUT_IS_A_DIRECTORY
@OUTPUT_IS_NEURON
def gd_experiment_command(
    relaxation: tuple[str, ...],
    seed: int,
    search: int,
    neuron: int,
    lr: float | None,
    decay: float | None,
    epochs: int | None,
    plot_path: Path,
    wide: bool,
) -> None:
    """Sec. 4.4 / App. D: gradient ascent on a random 1-10-10-2 net, RELAXATION vs IBP; plot."""
    output = neuron
    if output not in (0, 1):
        fail(f"--neuron must be 0 or 1 (the network has 2 outputs), got {output}")
    chosen = one_relaxation(relaxation)
    with clear_errors():
        from relaxlab.experiments.gd_experiment import (
            default_settings,
            find_illustrative,
            gd_experiment,
            plot_gd,
        )

        base = default_settings(chosen)
        settings = (lr or base[0], decay or base[1], epochs if epochs is not None else base[2])
        if search > 0:
            result = find_illustrative(chosen, range(seed, seed + search), output=output)
            if result is None:
                fail(
                    f"no seed in {seed}..{seed + search - 1} shows GD with {chosen.label} ending below IBP; "
                    "try a larger --search"
                )
            result = gd_experiment(chosen, seed=result.seed, output=output, settings=settings)
        else:
            result = gd_experiment(chosen, seed=seed, output=output, settings=settings)
        path = plot_gd(result, image_path(plot_path))
    rows = [
        [k, f"{t.values[0]:.4g}", f"{t.values[-1]:.4g}", f"{t.deltas[-1]:.4g}"]
        for k, t in result.trajectories.items()
    ]
    click.echo(f"seed {result.seed}, eps {result.eps:.4g}, lr/decay/epochs {result.settings}")
    _table(["relaxation", "bound at δ=0", "bound after GD", "final δ"], rows, wide)
    click.echo(f"wrote {path}")


@click.command("tracking-plot", short_help="Discontinuity share and log-sensitivity over training (Fig. 6).")
@click.argument("run_ids", nargs=-1, type=int, required=True)
@click.option(
    "--store",
    "store_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Results database of the training runs (trained with track_every > 0).",
)
@plot_option(
    "Image of the tracked measures (PNG unless the suffix says otherwise).", default=Path("tracking.png")
)
@OUT_IS_A_DIRECTORY
def tracking_plot_command(run_ids: tuple[int, ...], store_path: Path, plot_path: Path) -> None:
    """Fig. 6: discontinuity share and log-sensitivity over training for some runs."""
    with clear_errors():
        from relaxlab.experiments.tracking import plot_tracking, tracked_curves
        from relaxlab.store import open_store

        with open_store(store_path, readonly=True) as store:  # a plot never writes into what it reads
            curves = tracked_curves(store, list(run_ids))
        empty = [k for k, v in curves.items() if not any(v.values())]
        if len(empty) == len(curves):
            fail("none of these runs has tracked metrics; train with track_every > 0")
        path = plot_tracking(curves, image_path(plot_path))
    for label, metrics in curves.items():
        share = metrics["discontinuity_share"]
        logs = metrics["log_sensitivity"]
        click.echo(
            f"{label}: {len(share)} measurements; mean share "
            f"{sum(v for _, v in share) / max(len(share), 1):.2f}, mean log-sensitivity "
            f"{sum(v for _, v in logs) / max(len(logs), 1):.3f}"
        )
    click.echo(f"wrote {path}")
