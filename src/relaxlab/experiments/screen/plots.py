"""The screen's two plots: CR against tightness with the Pareto front, and the genealogy coloured by CR."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from relaxlab.api import get_relaxation
from relaxlab.discovery.genealogy import BASE_RELAXATIONS, draw, genealogy
from relaxlab.experiments.screen.model import Screen
from relaxlab.experiments.screen.rows import ScreenRow


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (higher is better), by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


def plot_screen(screen: Screen, rows: Sequence[ScreenRow], path: str | Path) -> Path:
    """CR (mean ± std over seeds) against CR-AUC; marker: continuity, colour: sensitivity; the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from relaxlab.properties.plotting import flag_legend, flag_style

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8.5, 4.8) if len(rows) <= 10 else (10, 5.6), dpi=120)
    # (rank, row, its point: CR-AUC and CR in percent) of the rows with both
    shown = [
        (rank, r, (r.cr_auc, 100 * r.certified.mean))
        for rank, r in enumerate(rows, 1)
        if r.cr_auc is not None and r.certified is not None
    ]
    for _, row, _ in shown:
        c, cr = row.candidate, row.certified
        assert cr is not None and row.cr_auc is not None
        ax.errorbar(
            row.cr_auc,
            100 * cr.mean,
            yerr=None if cr.std is None else 100 * cr.std,
            markersize=7,
            capsize=3,
            linestyle="none",
            alpha=0.85,
            **flag_style(c.continuous, c.sensitive),
        )
    front = pareto_front(point for _, _, point in shown)
    if front:
        # the staircase that bounds what the front dominates, from the left of the data to its bottom
        left = min(x for _, _, (x, _) in shown)
        bottom = min(y for _, _, (_, y) in shown)
        xs = [left, *(x for x, _ in front for _ in (0, 1))]
        ys = [*(y for _, y in front for _ in (0, 1)), bottom]
        ax.plot(xs, ys, "--", color="black", linewidth=1, zorder=1)
        front_x, front_y = zip(*front, strict=True)
        ax.scatter(front_x, front_y, s=180, facecolors="none", edgecolors="black", linewidths=1)
    # names where they fit, else the ranks of the table (the front's in bold)
    on_front = set(front)
    for index, (rank, row, point) in enumerate(shown):
        name = row.candidate.name if len(row.candidate.name) <= 30 else row.candidate.name[:28] + "…"
        offset = (6, 5) if index % 2 == 0 else (6, -12)
        ax.annotate(
            name if len(shown) <= 10 else str(rank),
            point,
            textcoords="offset points",
            xytext=offset,
            fontsize=7,
            fontweight="bold" if point in on_front else "normal",
        )

    undecided = any(r.candidate.continuous is None or r.candidate.sensitive is None for _, r, _ in shown)
    handles = [
        *flag_legend(undecided=undecided),
        Line2D(
            [],
            [],
            color="black",
            marker="|",
            ls="",
            markersize=10,
            label=f"± std over seeds (k = {len(screen.seeds)})",
        ),
        Line2D(
            [],
            [],
            color="black",
            ls="--",
            marker="o",
            markerfacecolor="none",
            markersize=10,
            label="Pareto front (no candidate\nboth tighter and certifying more)",
        ),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
        fontsize=8,
        title="marker: C, colour: S",
        title_fontsize=8,
    )
    spec = screen.tightness
    ax.set_xlabel(
        f"tightness: CR-AUC on a naturally trained network (n = {spec.n}, "
        f"{spec.points} radii in [0, {spec.eps_max:g}])"
    )
    ax.set_ylabel(f"CR after screening training [%] (ε = {screen.sweep.runs[0].eps:g})")
    labels = "" if len(shown) <= 10 else "; numbers: rank in screen.md (bold: on the front)"
    ax.set_title(
        f"Screen {screen.name}: CR against tightness, {len(shown)} of {len(rows)} candidates\n"
        f"CR with its own relaxation on {screen.images}, ε = {screen.sweep.runs[0].eps:g}{labels}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_genealogy(screen: Screen, rows: Sequence[ScreenRow], path: str | Path) -> Path:
    """The genealogy of the candidates (and the base relaxations), each node coloured by its mean CR."""
    registered = [c.relaxation for c in screen.candidates if c.family == "registered"]
    graph = genealogy(screen.discovery, [*registered, *(get_relaxation(name) for name in BASE_RELAXATIONS)])
    values = {r.candidate.relaxation.name: 100 * r.certified.mean for r in rows if r.certified is not None}
    nodes = {*(c.relaxation.name for c in screen.candidates), *BASE_RELAXATIONS}
    draw(graph, path, nodes=nodes, values=values, value_label=f"mean CR [%] of screen {screen.name}")
    return Path(path)
