"""``relaxlab bounds``: bound a saved network's outputs over an l_inf box."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from relaxlab.cli.format import TABLE_WIDTH, fail, render_table
from relaxlab.cli.options import DEVICE, WIDE, check_device, input_file_option, relaxation_option, select


def load_model_file(path: Path) -> Any:
    """A module from an ``.onnx`` file or a relaxlab ``.pt`` checkpoint."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from relaxlab.engine.onnx import OnnxLoadError, load_onnx

        try:
            return load_onnx(path)
        except OnnxLoadError as error:
            fail(str(error))
    if suffix in (".pt", ".pth"):
        try:
            from relaxlab.training.checkpoint import load_model
        except ImportError as error:  # the training package is optional for bounds
            fail(f"cannot read checkpoint {path}: relaxlab.training is unavailable ({error}); export to ONNX")
        try:
            return load_model(path)
        except (ValueError, OSError) as error:
            fail(str(error))
    fail(f"--model {path}: unknown file type {suffix!r}; give an .onnx file or a relaxlab .pt checkpoint")


def load_input_file(path: Path) -> Any:
    """A float tensor from ``.npy`` or ``.pt`` (a saved tensor)."""
    import numpy as np
    import torch

    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            fail(f"--input {path}: cannot read the array: {error}")
        if array.dtype.kind not in "fiub":  # complex, strings, objects: not points of a box
            fail(
                f"--input {path}: an array of dtype {array.dtype} ({_KINDS.get(array.dtype.kind, 'not real numbers')}); "
                "give real numbers"
            )
        tensor = torch.from_numpy(np.array(array, dtype=np.float64))
    elif suffix in (".pt", ".pth"):
        try:
            tensor = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:  # torch.load raises many types for a bad file
            fail(f"--input {path}: cannot read a tensor: {error}")
        if not isinstance(tensor, torch.Tensor):
            fail(f"--input {path}: expected a saved tensor, found {type(tensor).__name__}")
        if tensor.is_complex():
            fail(f"--input {path}: a complex tensor; give real numbers")
    else:
        fail(f"--input {path}: unknown file type {suffix!r}; give .npy or .pt")
    if tensor.numel() == 0:
        fail(f"--input {path}: the array is empty (shape {tuple(tensor.shape)}); give at least one point")
    if not tensor.is_floating_point():
        tensor = tensor.double()
    return tensor


_KINDS = {
    "c": "complex numbers",
    "U": "strings",
    "S": "bytes",
    "O": "Python objects",
    "M": "dates",
    "m": "time spans",
    "V": "raw records",
}


def _batched(model: Any, x: Any) -> Any:
    """``x`` with a batch dimension: as given if the model accepts it, else with one added."""
    from relaxlab.engine import UnsupportedNetworkError, parse_model

    try:
        parse_model(model, tuple(x.shape[1:]), clean=x)
        return x
    except UnsupportedNetworkError as first:
        try:
            parse_model(model, tuple(x.shape), clean=x.unsqueeze(0))
        except UnsupportedNetworkError:
            fail(f"the input of shape {tuple(x.shape)} does not fit the model: {first}")
        return x.unsqueeze(0)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.6g}"


def _margin_rows(outputs: Any, label: int | None) -> tuple[Any, Any, Any]:
    """``(C, labels, others)`` for ``--spec margins``: the library's margin rows, against ``label`` or the prediction."""
    import torch

    from relaxlab.engine.spec import margin_spec, other_classes

    if outputs.dim() != 2:
        fail(f"--spec margins needs a model with flat outputs, got shape {tuple(outputs.shape)}")
    classes = outputs.shape[1]
    if label is not None and not 0 <= label < classes:
        fail(f"--label {label} is not a class of a model with {classes} outputs")
    labels = (
        outputs.argmax(dim=1)
        if label is None
        else torch.full((outputs.shape[0],), label, dtype=torch.long, device=outputs.device)
    )
    return margin_spec(labels, classes, dtype=outputs.dtype), labels, other_classes(labels, classes)


def _records(lb: Any, ub: Any, outputs: Any, labels: Any, others: Any) -> list[dict[str, Any]]:
    """One JSON record per example: its bounds and, for margins, the label, the other classes, certified."""
    from relaxlab.engine.spec import is_certified

    records: list[dict[str, Any]] = [
        {"index": index, "lower": lb[index].tolist(), "upper": ub[index].tolist()}
        for index in range(lb.shape[0])
    ]
    if labels is not None:
        certified = is_certified(lb, outputs)
        for record, label, other, ok in zip(
            records, labels.tolist(), others.tolist(), certified.tolist(), strict=True
        ):
            record.update(label=label, others=other, certified=ok)
    return records


@click.command("bounds")
@input_file_option("--model", "model_path", "Network: an .onnx file or a relaxlab .pt checkpoint.")
@input_file_option("--input", "input_path", "Input point(s): .npy or .pt tensor, one example or a batch.")
@click.option("--eps", required=True, type=float, help="l_inf radius of the input box.")
@relaxation_option(help_text="The relaxation(s), e.g. 'CROWN-IBP (R)' or 'LooseIBP-C(omega=0.5)'")
@click.option(
    "--spec",
    type=click.Choice(["identity", "margins"]),
    default="identity",
    show_default=True,
    help="Bound the outputs (identity) or the margins z_y - z_j (certification).",
)
@click.option(
    "--label",
    type=int,
    default=None,
    help="Class y for --spec margins (all examples); default: the model's prediction on each input.",
)
@click.option(
    "--domain",
    nargs=2,
    type=float,
    default=None,
    metavar="LO HI",
    help="Clip the box to [LO, HI], e.g. 0 1 for pixels.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float64",
    show_default=True,
    help="Precision of the bound computation.",
)
@DEVICE
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of a table: one object, or a list of one per relaxation when -r selects several.",
)
@WIDE
def bounds_command(
    model_path: Path,
    input_path: Path,
    eps: float,
    relaxation: tuple[str, ...],
    spec: str,
    label: int | None,
    domain: tuple[float, float] | None,
    dtype: str,
    device: str,
    as_json: bool,
    wide: bool,
) -> None:
    """Bound a network's outputs (or margins) for every input within EPS (l_inf) of INPUT."""
    import torch

    from relaxlab.engine import UnsupportedNetworkError
    from relaxlab.engine.bounds import compute_bounds

    if not relaxation:
        fail("give the relaxation(s) with -r/--relaxation, e.g. -r CROWN or -r paper")
    chosen = select(relaxation)
    device = check_device(device)
    model = load_model_file(model_path)
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    x = _batched(model, load_input_file(input_path)).to(torch_dtype)
    model, x = model.to(device=device, dtype=torch_dtype), x.to(device)
    with torch.no_grad():
        outputs = model(x)
    C, labels, others = _margin_rows(outputs, label) if spec == "margins" else (None, None, None)
    results = []
    for relax in chosen:
        try:
            with torch.no_grad():
                lb, ub = compute_bounds(model, x, eps, relax, C=C, domain=domain)
        except (
            UnsupportedNetworkError,
            ValueError,
            TypeError,
            OverflowError,
        ) as error:  # overflow: eps too large
            fail(str(error))
        results.append((relax.label, _records(lb.cpu(), ub.cpu(), outputs.cpu(), labels, others)))
    if as_json:
        head = {
            "model": str(model_path),
            "eps": eps,
            "domain": list(domain) if domain else None,
            "spec": spec,
            "dtype": dtype,
        }
        payloads = [{**head, "relaxation": name, "examples": records} for name, records in results]
        click.echo(json.dumps(payloads[0] if len(payloads) == 1 else payloads, indent=2))
        return
    rows = []
    for name, records in results:
        for record in records:
            names = (
                [f"z{record['label']}-z{j}" for j in record["others"]]
                if labels is not None
                else [f"z{j}" for j in range(len(record["lower"]))]
            )
            for row_name, low, high in zip(names, record["lower"], record["upper"], strict=True):
                rows.append([name, record["index"], row_name, _fmt(low), _fmt(high)])
    click.echo(
        render_table(
            ["relaxation", "example", "spec", "lower", "upper"], rows, width=None if wide else TABLE_WIDTH
        )
    )
    if labels is not None:
        for name, records in results:
            count = sum(record["certified"] for record in records)
            click.echo(
                f"certified: {count}/{len(records)} with {name} (every margin lower bound above the "
                "tolerance of relaxlab.engine.spec.is_certified)"
            )
