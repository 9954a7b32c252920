"""CLI command ``export``: a checkpoint as ONNX and its test-set robustness properties as VNN-LIB.

Output for external verifiers in the VNN-COMP layout: ``model.onnx``, one ``prop_<i>.vnnlib``
per test image (the l_inf box clipped to [0, 1], the negated robustness spec) and
``instances.csv`` (``onnx,vnnlib,timeout`` per line) in the VNN-LIB directory, its paths relative
to that directory (as VNN-COMP benchmarks have them), so the folder can move as a whole.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from relaxlab.cli.format import clear_errors, fail
from relaxlab.cli.options import DATA_DIR, check_eps, count_option, load_test_split


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the network as ONNX.",
)
@click.option(
    "--vnnlib",
    "vnnlib_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for one VNN-LIB robustness property per test image, and instances.csv.",
)
@click.option("--eps", type=float, default=None, help="Radius in [0, 1] (default: the run's eps_test).")
@count_option("Properties for the first N test images.", default=10)
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Per-instance timeout (seconds) in instances.csv.",
)
@DATA_DIR
def export_command(
    checkpoint: Path,
    onnx_path: Path,
    vnnlib_dir: Path | None,
    eps: float | None,
    n: int,
    timeout: float,
    data_dir: str | None,
) -> None:
    """Write CHECKPOINT's network to ONNX and (with --vnnlib) VNN-LIB robustness properties."""
    from relaxlab.engine.export import export_onnx, write_vnnlib
    from relaxlab.training.checkpoint import build_model, read_checkpoint

    if not (math.isfinite(timeout) and timeout > 0):
        fail(f"--timeout must be a number of seconds > 0, got {timeout}")
    with clear_errors():
        if n < 1:
            fail(f"--n must be at least 1, got {n}")
        payload = read_checkpoint(checkpoint)
        config = json.loads(payload["config"])
        model = build_model(payload, source=f"checkpoint {checkpoint}")
        run_eps = check_eps(float(config.get("eps_test", 0.0)) if eps is None else eps)  # --eps, or the run's
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, tuple(payload["input_shape"]), onnx_path)
        click.echo(f"wrote {onnx_path}")
        if vnnlib_dir is None:
            return
        dataset, x, y = load_test_split(config, data_dir, n)
        vnnlib_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(int(y.shape[0])):
            path = vnnlib_dir / f"prop_{index}.vnnlib"
            write_vnnlib(path, x[index], run_eps, int(y[index]), dataset.num_classes)
            rows.append(f"{_relative(onnx_path, vnnlib_dir)},{path.name},{timeout:g}")
        (vnnlib_dir / "instances.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        click.echo(f"wrote {len(rows)} properties (eps {run_eps:g}) and instances.csv to {vnnlib_dir}")


def _relative(path: Path, start: Path) -> str:
    """``path`` as seen from the directory ``start`` (``../model.onnx``), in the form instances.csv uses."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
