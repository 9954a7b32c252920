"""The genealogy of relaxations: who is a one-change modification of whom (Fig. 10 of the paper).

Nodes are the discovery results (registered names where equivalent) and every
other registered relaxation. Lines are identified numerically per slot (two
relaxations use "the same line" in a case when the line values agree on the
comparison points of :mod:`relaxlab.properties.tightness`), and an edge
``A → B`` says that ``B`` is one change away from ``A``:

- ``line``: ``B`` differs from ``A`` in one line of one case (both directions);
- ``case``: both lines of one case differ (both directions; hBox → hBox-Diag);
- ``continuity``: only stable-case lines differ, in both stable cases, and they make
  a discontinuous ``A`` continuous (CROWN-0-Tria → CROWN-0-Tria-C; one direction);
- ``switch`` / ``soft`` / ``interval``: the family changes of discovery (the two
  parents → their switch → its soft version; any relaxation → its (R) variant);
- ``transform``: the same lines on widened bounds (IBP → LooseIBP-C, hBox → hBox + loose-C).

Lines of a relaxation with a bounds transform are identified as declared (on the widened
bounds), so line/case/continuity edges join relaxations with the same transform and parameter
values as they join plain ones. Edges only join relaxations with the same intermediate mode and
transform, except the ``interval`` and ``transform`` ones. A family label replaces a
line/case label on the same edge.
"""

from __future__ import annotations

import itertools
import textwrap
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
from attrs import evolve

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.stability import Stability
from relaxlab.discovery.catalog import SLOTS
from relaxlab.discovery.flags import fast_flags
from relaxlab.discovery.pipeline import Discovery
from relaxlab.properties.tightness import effective_intermediate, profile, values_equal

if TYPE_CHECKING:
    from torch import Tensor

#: The paper's base relaxations (Table 2), highlighted in drawings.
BASE_RELAXATIONS = ("IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)")
EDGE_KINDS = ("line", "case", "continuity", "switch", "soft", "interval", "transform")
_SYMMETRIC = ("line", "case")


class _LineIds:
    """Numeric identity of lines per slot: the same values on the comparison points, the same id."""

    def __init__(self) -> None:
        self.representatives: dict[int, list[Tensor]] = {k: [] for k in range(len(SLOTS))}
        self.labels: dict[tuple[int, int], str] = {}

    def ids(self, relaxation: ReluRelaxation, labels: Iterable[str] | None = None) -> tuple[int, ...]:
        plain = relaxation if relaxation.transform is None else evolve(relaxation, transform=None)
        values = profile(plain)  # the lines as declared, on the (widened) bounds they are given
        out = []
        label_list = list(labels) if labels is not None else [None] * len(SLOTS)
        for k, ((stability, side), label) in enumerate(zip(SLOTS, label_list, strict=True)):
            target = values.case(stability)[:, 0 if side == "lower" else 1]
            reps = self.representatives[k]
            found = next((i for i, rep in enumerate(reps) if values_equal(rep, target, stability)), None)
            if found is None:
                reps.append(target)
                found = len(reps) - 1
            line = relaxation.case(stability).lower if side == "lower" else relaxation.case(stability).upper
            self.labels.setdefault((k, found), label if label is not None else str(line))
            out.append(found)
        return tuple(out)


def _widening(relaxation: ReluRelaxation) -> str:
    """The transform and the values of the parameters it uses (``""`` without one)."""
    transform = relaxation.transform
    if transform is None:
        return ""
    used = transform.lower.variables() | transform.upper.variables()
    values = ", ".join(f"{k}={v:g}" for k, v in relaxation.parameters.items() if k in used)
    return f"{transform} ({values})" if values else str(transform)


def _slot_text(k: int) -> str:
    stability, side = SLOTS[k]
    return f"{stability} {side}"


def genealogy(discovery: Discovery, registered: Iterable[ReluRelaxation] = ()) -> nx.DiGraph:
    """The genealogy graph of a discovery run (plus ``registered`` relaxations it did not produce).

    Node attributes: ``family``, ``registered`` (a registered name), ``base``, ``aliases``,
    ``generated_name``, ``continuous``, ``sensitive``, ``intermediate``, ``transform`` (the
    widening and its parameter values, or ``""``), ``depth`` (edges from a base relaxation).
    Edge attributes: ``kind`` (one of :data:`EDGE_KINDS`) and ``label``.
    """
    graph = nx.DiGraph()
    ids = _LineIds()
    slots: dict[str, tuple[int, ...]] = {}
    modes: dict[str, tuple[str, str]] = {}  # (effective intermediate mode, widening): edges join equal ones
    for result in discovery.results:
        labels = [t for c in result.cases for t in (c.lower, c.upper)]
        slots[result.name] = ids.ids(result.relaxation, labels)
        modes[result.name] = (effective_intermediate(result.relaxation), _widening(result.relaxation))
        graph.add_node(
            result.name,
            family=result.family,
            registered=bool(result.equivalent_to),
            base=result.name in BASE_RELAXATIONS,
            aliases=", ".join(result.equivalent_to),
            generated_name=result.generated_name,
            continuous=result.continuous,
            sensitive=result.sensitive,
            intermediate=modes[result.name][0],
            transform=modes[result.name][1],
        )
    known = {alias for r in discovery.results for alias in r.equivalent_to}
    for relaxation in registered:
        if relaxation.name in known or relaxation.name in graph:
            continue
        slots[relaxation.name] = ids.ids(relaxation)
        modes[relaxation.name] = (effective_intermediate(relaxation), _widening(relaxation))
        continuous, sensitive = fast_flags(relaxation)
        graph.add_node(
            relaxation.name,
            family="registered",
            registered=True,
            base=relaxation.name in BASE_RELAXATIONS,
            aliases=relaxation.name,
            generated_name="",
            continuous=continuous,
            sensitive=sensitive,
            intermediate=modes[relaxation.name][0],
            transform=modes[relaxation.name][1],
        )

    def label(k: int, i: int) -> str:
        return ids.labels[(k, i)]

    stable = {k for k, (s, _) in enumerate(SLOTS) if s is not Stability.UNSTABLE}
    for a, b in itertools.permutations(slots, 2):
        if slots[a] == slots[b] and modes[a][0] == modes[b][0] and not modes[a][1] and modes[b][1]:
            graph.add_edge(a, b, kind="transform", label=f"bounds widened to {modes[b][1]}")
        if modes[a] != modes[b]:
            continue
        diff = [k for k in range(len(SLOTS)) if slots[a][k] != slots[b][k]]
        if len(diff) == 1:
            k = diff[0]
            graph.add_edge(
                a, b, kind="line", label=f"{_slot_text(k)}: {label(k, slots[a][k])} → {label(k, slots[b][k])}"
            )
        elif len(diff) == 2 and SLOTS[diff[0]][0] is SLOTS[diff[1]][0]:
            k0, k1 = diff
            graph.add_edge(
                a,
                b,
                kind="case",
                label=(
                    f"{SLOTS[k0][0]}: {label(k0, slots[a][k0])}..{label(k1, slots[a][k1])} → "
                    f"{label(k0, slots[b][k0])}..{label(k1, slots[b][k1])}"
                ),
            )
        elif (
            diff and set(diff) <= stable and not graph.nodes[a]["continuous"] and graph.nodes[b]["continuous"]
        ):
            changes = "; ".join(
                f"{_slot_text(k)}: {label(k, slots[a][k])} → {label(k, slots[b][k])}" for k in diff
            )
            graph.add_edge(a, b, kind="continuity", label=f"make continuous: {changes}")

    by_generated = {r.generated_name: r.name for r in discovery.results}
    for result in discovery.results:
        if result.family == "switch":
            then, other = result.parents
            graph.add_edge(then, result.name, kind="switch", label=f"switch with {other} by -l >= u")
            graph.add_edge(other, result.name, kind="switch", label=f"switch with {then} by -l >= u")
        elif result.family == "soft":
            switch_name = by_generated.get(result.generated_name.replace("gen-soft(", "gen-switch(", 1))
            if switch_name is not None:
                graph.add_edge(switch_name, result.name, kind="soft", label="soft switch κ = σ(γ(l/u - u/l))")
        elif result.family == "interval":
            graph.add_edge(
                result.parents[0], result.name, kind="interval", label="(R): interval intermediate bounds"
            )

    _set_depth(graph)
    return graph


def _set_depth(graph: nx.DiGraph) -> None:
    depth = {n: 0 for n in graph if graph.nodes[n]["base"]}
    queue = deque(depth)
    while queue:
        node = queue.popleft()
        for nxt in graph.successors(node):
            if nxt not in depth:
                depth[nxt] = depth[node] + 1
                queue.append(nxt)
    unreachable = max(depth.values(), default=0) + 1
    for node in graph:
        graph.nodes[node]["depth"] = depth.get(node, unreachable)


def write_graphml(graph: nx.DiGraph, path: str | Path) -> None:
    """GraphML with all node and edge attributes."""
    nx.write_graphml(graph, str(path))


def _dot_quote(text: object) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text (symmetric line/case edges written once, undirected-looking)."""
    out = ["digraph genealogy {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
    for node, data in graph.nodes(data=True):
        style = (
            ', style=filled, fillcolor="gold"'
            if data["base"]
            else (', style=filled, fillcolor="lightblue"' if data["registered"] else "")
        )
        out.append(f"  {_dot_quote(node)} [label={_dot_quote(node)}{style}];")
    done: set[frozenset[str]] = set()
    for a, b, data in graph.edges(data=True):
        if data["kind"] in _SYMMETRIC:
            key = frozenset((a, b))
            if key in done:
                continue
            done.add(key)
        extra = ", dir=none" if data["kind"] in _SYMMETRIC and graph.has_edge(b, a) else ""
        out.append(
            f"  {_dot_quote(a)} -> {_dot_quote(b)} [label={_dot_quote(data['label'])}, "
            f"kind={_dot_quote(data['kind'])}{extra}];"
        )
    out.append("}")
    return "\n".join(out) + "\n"


def write_dot(graph: nx.DiGraph, path: str | Path) -> None:
    Path(path).write_text(to_dot(graph), encoding="utf-8")


_EDGE_COLOURS = {
    "line": "#888888",
    "case": "#1f77b4",
    "continuity": "#2ca02c",
    "switch": "#d62728",
    "soft": "#9467bd",
    "interval": "#ff7f0e",
    "transform": "#8c564b",
}


def draw(
    graph: nx.DiGraph,
    path: str | Path,
    *,
    scope: str = "registered",
    nodes: Iterable[str] | None = None,
    values: Mapping[str, float] | None = None,
    value_label: str = "",
) -> None:
    """Draw the genealogy to an image (PNG, SVG, PDF by suffix) with matplotlib.

    :param scope: ``"registered"`` draws the relaxations with a registered name (readable);
        ``"all"`` draws every node.
    :param nodes: draw exactly these nodes (those in the graph) instead of ``scope``.
    :param values: a number per node (e.g. CR after training): nodes are coloured by it, with
        a colour bar, and it is printed under the flags; nodes without one are grey.
    :param value_label: what the values are, for the colour bar.
    """
    if scope not in ("registered", "all"):
        raise ValueError(f"scope must be 'registered' or 'all', got {scope!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if nodes is not None:
        wanted = set(nodes)
        nodes = [n for n in graph if n in wanted]
    else:
        nodes = [n for n in graph if scope == "all" or graph.nodes[n]["registered"]]
    sub = graph.subgraph(nodes).copy()
    _set_depth(sub)
    layers: dict[int, list[str]] = {}
    for node in sorted(sub, key=lambda n: (sub.nodes[n]["intermediate"], n)):
        layers.setdefault(sub.nodes[node]["depth"], []).append(node)
    pos = {}
    for depth, members in layers.items():
        for i, node in enumerate(members):
            pos[node] = (depth * 2.6, -(i - (len(members) - 1) / 2) * 1.0)
    height = max(len(m) for m in layers.values()) if layers else 1
    fig, ax = plt.subplots(figsize=(3 + 2.9 * len(layers), 1.5 + 0.62 * height))
    drawn: set[frozenset[str]] = set()
    kinds: set[str] = set()  # the kinds of change drawn: the legend lists these only
    for a, b, data in sub.edges(data=True):
        key = frozenset((a, b))
        if data["kind"] in _SYMMETRIC and key in drawn:
            continue
        drawn.add(key)
        src, dst = (a, b) if sub.nodes[a]["depth"] <= sub.nodes[b]["depth"] else (b, a)
        if sub.nodes[dst]["depth"] != sub.nodes[src]["depth"] + 1 or not sub.has_edge(src, dst):
            continue  # draw the layered genealogy only; same-layer links stay in the graph and exports
        kind = sub.edges[src, dst]["kind"]
        kinds.add(kind)
        ax.annotate(
            "",
            xy=pos[dst],
            xytext=pos[src],
            arrowprops={
                "arrowstyle": "-|>",
                "color": _EDGE_COLOURS[kind],
                "lw": 1.0,
                "alpha": 0.8,
                "shrinkA": 14,
                "shrinkB": 14,
                "connectionstyle": "arc3,rad=0.05",
            },
        )
    shown = {n: v for n, v in (values or {}).items() if n in pos}
    cmap = matplotlib.colormaps["RdYlGn"]
    low, high = min(shown.values(), default=0.0), max(shown.values(), default=1.0)
    # one value for every node: one colour, no colour bar (a bar around it would invent a range)
    norm = (
        matplotlib.colors.Normalize(low, high)
        if high > low
        else matplotlib.colors.Normalize(low - 1, low + 1)
    )
    for node, (x, y) in pos.items():
        data = sub.nodes[node]
        face: str | tuple[float, float, float, float] = (
            "gold" if data["base"] else ("#cfe3f7" if data["registered"] else "#eeeeee")
        )
        flags = f"{'✓' if data['continuous'] else '✗'}C {'✗' if data['sensitive'] else '✓'}S"
        if values is not None:
            face = cmap(0.15 + 0.7 * norm(shown[node])) if node in shown else "#eeeeee"
            flags += f"  {shown[node]:.1f}" if node in shown else ""
        suffix = " (R)" if node.endswith(" (R)") else ""  # shortened names keep their family mark
        text = node if len(node) <= 40 else node[: 38 - len(suffix)] + "…" + suffix
        ax.text(
            x,
            y,
            f"{text}\n{flags}",
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold" if data["base"] else "normal",
            bbox={
                "boxstyle": "round,pad=0.3",
                "facecolor": face,
                "edgecolor": "black" if data["base"] else "#666666",
            },
        )
    handles = [Line2D([0], [0], color=c, lw=2, label=k) for k, c in _EDGE_COLOURS.items() if k in kinds]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            fontsize=8,
            title="change",
            frameon=False,
            bbox_to_anchor=(1.0, 1.0),
        )
    if values is not None and high > low:
        # the colour bar shows the part of the colour map the nodes use (light ends keep labels readable)
        bar_cmap = matplotlib.colors.ListedColormap(cmap([0.15 + 0.7 * i / 255 for i in range(256)]))
        bar = fig.colorbar(
            matplotlib.cm.ScalarMappable(norm=norm, cmap=bar_cmap),
            ax=ax,
            shrink=0.5,
            location="left",
            pad=0.01,
        )
        bar.set_label(f"{value_label} (grey: none)", fontsize=8)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 1.8, max(xs) + 1.8)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_axis_off()
    base = "gold" if values is None else "bold"
    title = (
        "Genealogy of relaxations: column = number of one-line/one-case/family/transform changes from a "
        f"base relaxation ({base}); rightmost column: no one-change link. "
    )
    if not kinds:
        title += "No one-change link joins two columns here (links within a column are in the GraphML / DOT exports). "
    if values is not None and shown and high == low:
        title += f"Every coloured node: {value_label} = {low:.1f}."
    # wrapped to the figure's width (about 0.55 em per character at 9 pt), so that no line is clipped
    chars = max(40, int(fig.get_figwidth() * 72 / (9 * 0.55)))
    fig.suptitle(
        textwrap.fill(title.strip(), width=chars), fontsize=9
    )  # centred on the figure, colour bar or not
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
