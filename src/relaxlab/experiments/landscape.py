"""Bound landscapes along a direction (Fig. 4, 5 and 9 of *On the Paradox of Certified Training*).

Sec. 5.1: "we measure the change in the lower bound of one output neuron as we shift all
first layer weights by δ in the gradient direction of that neuron." :func:`landscape` does
this for any set of relaxations: for each one it takes the gradient of *its own* bound (or
certified loss) with respect to the moved parameters at ``δ = 0``, normalises it to unit
length, and evaluates the bound at ``n`` points ``δ ∈ [-a, a]``. :func:`write_csv` and
:func:`plot_landscape` store the numbers and draw one curve per relaxation.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from relaxlab.api import get_relaxation
from relaxlab.core.relaxer import Relaxer
from relaxlab.properties.continuity import find_discontinuities
from relaxlab.properties.directions import (
    DEFAULT_POINTS_PER_CALL,
    along_segments,
    bound_value,
    first_layer_names,
    gradient_directions,
)

if TYPE_CHECKING:  # matplotlib loads with the first plot
    from matplotlib.lines import Line2D


@attrs.frozen(eq=False)
class Landscape:
    """Bounds of several relaxations along their gradient directions.

    :param deltas: ``(n,)`` the shifts ``δ`` (distance in parameter space).
    :param values: relaxation label -> ``(n,)`` values (lower bound of ``output``, or the certified loss).
    :param gradient_norms: relaxation label -> the norm of the gradient that gave the direction.
    :param quantity: ``"lower bound of output j"`` or ``"certified loss"``.
    :param parameters: names of the parameters that moved.
    :param jumps: relaxation label -> indices ``i`` where the App. E.2 test sees a jump between
        ``deltas[i]`` and ``deltas[i + 1]``.
    """

    deltas: Tensor
    values: dict[str, Tensor]
    gradient_norms: dict[str, float]
    quantity: str
    parameters: tuple[str, ...]
    jumps: dict[str, list[int]]


def landscape(
    model: nn.Module,
    x: Tensor,
    eps: float,
    relaxations: Sequence[str | Relaxer],
    *,
    output: int | None = None,
    label: int | None = None,
    radius: float = 1.0,
    points: int = 500,
    parameters: Sequence[str] | None = None,
    direction_from: object | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    points_per_call: int = DEFAULT_POINTS_PER_CALL,
    progress: Callable[[int], None] | None = None,
) -> Landscape:
    """The bound of each relaxation as the moved parameters shift by ``δ ∈ [-radius, radius]``.

    :param model: the network (an ``nn.Sequential`` the engine accepts).
    :param x: one input, ``(1, *input_shape)``.
    :param eps: l_inf radius of the input box.
    :param relaxations: names or specs.
    :param output: follow the lower bound of this output (the paper's Fig. 5)...
    :param label: ...or the certified loss for this label (exactly one of the two).
    :param radius: ``a``: shifts range over ``[-a, a]``.
    :param points: ``n``.
    :param parameters: names of the parameters that move; default the first layer's weights
        and bias (Sec. 4.3).
    :param direction_from: take every curve's direction from this relaxation's gradient
        instead of each relaxation's own (the same line through parameter space for all).
    :param domain: the input domain the box is clipped to.
    :param progress: called with ``1`` after each relaxation's curve.
    """
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a finite number > 0, got {radius}")
    if (output is None) == (label is None):
        raise ValueError("give output= (lower bound of that output) or label= (certified loss), exactly one")
    if not relaxations:
        raise ValueError("give at least one relaxation")
    if x.dim() < 2 or x.shape[0] != 1:
        raise ValueError(f"landscape follows one input: x must have batch size 1, got shape {tuple(x.shape)}")
    resolved = [get_relaxation(r) for r in relaxations]
    names = list(parameters) if parameters is not None else first_layer_names(model)
    labels = None if label is None else torch.tensor([label], device=x.device)
    deltas = torch.linspace(-radius, radius, points, dtype=x.dtype)
    shared = None
    if direction_from is not None:
        shared_fn = bound_value(direction_from, eps, output=output, labels=labels, domain=domain)
        shared, _ = gradient_directions(model, x, names, shared_fn, labels, normalize=True)
    values: dict[str, Tensor] = {}
    norms: dict[str, float] = {}
    jumps: dict[str, list[int]] = {}
    for relaxation in resolved:
        fn = bound_value(relaxation, eps, output=output, labels=labels, domain=domain)
        own, norm = gradient_directions(model, x, names, fn, labels, normalize=True)
        direction = shared if shared is not None else own
        curve = along_segments(model, x, direction, deltas, fn, labels, points_per_call=points_per_call)[0]
        key = relaxation.label
        values[key] = curve
        norms[key] = float(norm[0])
        jumps[key] = [int(i) for i in find_discontinuities(curve)]
        if progress is not None:
            progress(1)
    quantity = f"lower bound of output {output}" if output is not None else f"certified loss (label {label})"
    return Landscape(deltas, values, norms, quantity, tuple(names), jumps)


def write_csv(result: Landscape, path: str | Path) -> Path:
    """The raw numbers: one row per ``δ``, one column per relaxation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(result.values)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["delta", *keys])
        for i, delta in enumerate(result.deltas.tolist()):
            writer.writerow([repr(delta), *(repr(float(result.values[k][i])) for k in keys)])
    return path


#: Colour of the jump marks: one colour for "jump" in every panel, distinct from every curve's.
JUMP_COLOUR = "#d62728"


def plot_landscape(
    result: Landscape, path: str | Path, *, title: str | None = None, separate: bool = True
) -> Path:
    """One image: a panel per relaxation with its own y-axis, then one with every curve; jumps marked.

    A landscape is read two ways. Its *shape* (CROWN's jumps, DeepZ's curvature against IBP's
    straight line) shows only when each curve fills its own panel: one y-axis for curves
    hundreds apart flattens them all to lines. The *comparison* (which relaxation bounds
    higher) needs one y-axis: the last panel draws every curve on it. Each jump the App. E.2
    test finds is a red dashed line through the panel with red dots on the curve either side.

    :param result: the landscape.
    :param path: the image to write (PNG when it has no suffix: ``.png`` is added).
    :param title: the title (default: the quantity along the gradient direction); a line with
        the number of points and the range of δ is added below it.
    :param separate: a panel per relaxation and the comparison panel (else all curves in one panel).
    :return: the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(result.values)
    deltas = result.deltas.cpu().numpy()
    colours = {key: f"C{(i if i < 3 else i + 1) % 10}" for i, key in enumerate(keys)}  # C3 is the jump red
    if separate and len(keys) > 1:
        panels = len(keys) + 1
        cols = min(panels, 3)
        rows = -(-panels // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax, key in zip(flat, keys, strict=False):
            _draw(ax, deltas, result, key, colours[key])
            jumps = len(result.jumps[key])
            ax.set_title(f"{key}: {jumps} jump{'' if jumps == 1 else 's'} (own y-axis)", fontsize=9)
        comparison = flat[len(keys)]
        for key in keys:
            _draw(comparison, deltas, result, key, colours[key], label=key, marks=False)
        comparison.set_title("all relaxations, one y-axis (comparison)", fontsize=9)
        comparison.legend(fontsize=7, loc="best")
        for ax in flat[panels:]:
            ax.set_visible(False)
        for index, ax in enumerate(flat[:panels]):
            if index % cols:
                ax.set_ylabel("")
        handles = [Line2D([], [], color="grey", lw=1.2), _jump_handle()]
        labels = ["bound: own y-axis per panel, the last panel shares one", "jump (App. E.2 test)"]
        layout = "panels: each relaxation on its own y-axis (shape), the last on one y-axis (comparison)"
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for key in keys:
            _draw(ax, deltas, result, key, colours[key], label=key)
        ax.legend(fontsize=8, loc="best")
        handles, labels = [_jump_handle()], ["jump (App. E.2 test)"]
        layout = "one y-axis"
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    span = f"δ ∈ [{float(deltas[0]):g}, {float(deltas[-1]):g}]"
    fig.suptitle(
        f"{title or f'{result.quantity} along the gradient direction'}\n"
        f"{len(deltas)} points, {span}; {layout}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jump_handle() -> Line2D:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=JUMP_COLOUR, ls="--", lw=1.2, marker="o", markersize=4)


def _draw(
    ax: Any,
    deltas: Any,
    result: Landscape,
    key: str,
    colour: str,
    label: str | None = None,
    marks: bool = True,
) -> None:
    """One curve; with ``marks`` its jumps as red dashed lines and red dots either side."""
    from matplotlib.ticker import MaxNLocator

    values = result.values[key].cpu().numpy()
    ax.plot(deltas, values, lw=1.2, color=colour, label=label)
    if marks:
        for i in result.jumps[key]:
            ax.axvline(
                0.5 * (deltas[i] + deltas[i + 1]), color=JUMP_COLOUR, ls="--", lw=1.0, alpha=0.8, zorder=1
            )
            ax.plot(deltas[i : i + 2], values[i : i + 2], "o", color=JUMP_COLOUR, markersize=3.5, zorder=3)
    ax.set_xlim(float(deltas[0]), float(deltas[-1]))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("δ")
    ax.set_ylabel(result.quantity)
    ax.grid(alpha=0.25)


__all__ = ["Landscape", "landscape", "plot_landscape", "write_csv"]
