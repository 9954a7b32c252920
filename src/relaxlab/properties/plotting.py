"""Plots of relaxations (matplotlib, headless)."""

from __future__ import annotations

import os
from typing import TypedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from relaxlab.core.relaxation import ReluRelaxation  # noqa: E402

#: Example bounds per panel: a negative, two unstable (one per side of -l = u) and a positive ReLU.
EXAMPLE_BOUNDS = (
    ("negative", -2.0, -0.5),
    ("unstable, -l > u", -1.5, 1.0),
    ("unstable, -l < u", -0.6, 1.5),
    ("positive", 0.4, 2.0),
)


def plot_relaxation(relaxation: ReluRelaxation, path: str | os.PathLike[str]) -> None:
    """Draw ReLU and the lower/upper line on each example interval, one panel per case.

    The panels share their y-axis; the ReLU is a wide grey band under the lines and the upper
    line is dashed, so that in the stable cases, where all three coincide, each stays visible.

    :param relaxation: the relaxation to draw.
    :param path: the image to write.
    """
    fig, axes = plt.subplots(1, len(EXAMPLE_BOUNDS), figsize=(4 * len(EXAMPLE_BOUNDS), 3.8), sharey=True)
    for ax, (title, lo, hi) in zip(axes, EXAMPLE_BOUNDS, strict=True):
        lb = torch.tensor([lo], dtype=torch.float64)
        ub = torch.tensor([hi], dtype=torch.float64)
        ls, lo_off, us, uo = (float(t) for t in relaxation.coefficients(lb, ub).tensors)
        tl, tu = (float(t) for t in relaxation.transform_bounds(lb, ub))
        xs = torch.linspace(min(lo, tl), max(hi, tu), 200, dtype=torch.float64)
        ax.plot(
            xs, xs.clamp_min(0), color="grey", lw=7, alpha=0.45, solid_capstyle="butt", zorder=1, label="ReLU"
        )
        ax.plot(xs, ls * xs + lo_off, color="tab:blue", lw=1.8, zorder=2, label="lower line")
        ax.plot(xs, us * xs + uo, color="tab:red", lw=1.8, ls=(0, (4, 3)), zorder=3, label="upper line")
        ax.fill_between(
            xs,
            ls * xs + lo_off,
            us * xs + uo,
            color="tab:purple",
            alpha=0.12,
            label="relaxation (between the lines)",
        )
        ax.axvspan(lo, hi, color="grey", alpha=0.08, label="input interval [l, u]")
        ax.set_title(f"{title}: l={lo:g}, u={hi:g}")
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{relaxation.label}: ReLU and its lower and upper line on example bounds")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: How plots of relaxations against a measure show the flags: the marker says continuity (✓C circle,
#: ✗C square), the colour sensitivity (✓S green, ✗S red); a flag nobody could decide is a grey triangle.
FLAG_MARKERS = {True: "o", False: "s", None: "^"}
FLAG_COLOURS = {False: "tab:green", True: "tab:red", None: "tab:grey"}


class FlagStyle(TypedDict):
    """Keyword arguments of a matplotlib marker."""

    marker: str
    color: str


def flag_style(continuous: bool | None, sensitive: bool | None) -> FlagStyle:
    """``marker`` and ``color`` of a point for a relaxation with these flags (:data:`FLAG_MARKERS`)."""
    return {"marker": FLAG_MARKERS[continuous], "color": FLAG_COLOURS[sensitive]}


def flag_legend(*, undecided: bool = False) -> list[Line2D]:
    """Legend entries for every encoding of :func:`flag_style` (``undecided``: also the grey triangle)."""

    def key(marker: str, colour: str, text: str) -> Line2D:
        return Line2D([], [], ls="", marker=marker, color=colour, markersize=7, label=text)

    handles = [
        key("o", "grey", "continuous (✓C)"),
        key("s", "grey", "discontinuous (✗C)"),
        key("o", "tab:green", "not sensitive (✓S)"),
        key("o", "tab:red", "sensitive (✗S)"),
    ]
    return [*handles, key("^", "tab:grey", "flag undecided")] if undecided else handles
