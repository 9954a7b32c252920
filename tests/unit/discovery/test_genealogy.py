"""Genealogy graph (Fig. 10 relations of App. H), exports, drawing, emitted plugin, and the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import networkx as nx
import pluggy
import pytest
from click.testing import CliRunner

from relaxlab import hookspecs
from relaxlab.cli import cli
from relaxlab.discovery.emit import new_results, plugin_source
from relaxlab.discovery.genealogy import draw, to_dot, write_graphml
from relaxlab.properties.soundness import check_soundness

#: (from, to, kind) as App. H describes Fig. 10.
FIG10 = [
    ("CROWN", "CROWN-0", "line"),
    ("CROWN-0", "CROWN-0-C", "line"),
    ("CROWN", "CROWN-1", "line"),
    ("CROWN-1", "CROWN-1-C", "line"),
    ("CROWN-0", "CROWN-0-Tria", "line"),
    ("CROWN-1", "CROWN-1-Tria", "line"),
    ("CROWN-0-Tria", "CROWN-0-Tria-C", "continuity"),
    ("CROWN-1-Tria", "CROWN-1-Tria-C", "continuity"),
    ("hBox", "hBox-Diag", "case"),
    ("hBox-Diag", "hBox-Diag-C", "case"),
    ("hBox", "hBox-Switch", "switch"),
    ("hBox-Diag", "hBox-Switch", "switch"),
    ("DeepZ", "hBox", "case"),
    ("DeepZ", "hBox-Diag", "case"),  # DeepZ-Box = hBox, DeepZ-Diag = hBox-Diag
    ("hBox-Switch", "DeepZ-Soft", "soft"),
    ("CROWN", "CROWN-Soft", "soft"),
    ("CROWN", "CROWN-IBP (R)", "interval"),
    ("DeepZ", "DeepZ-IBP (R)", "interval"),
    ("CROWN-Soft", "CROWN-Soft-IBP", "interval"),
]


@pytest.fixture(scope="module")
def found(discovered):  # noqa: ANN001, ANN201
    return discovered


@pytest.fixture(scope="module")
def graph(discovered_graph):  # noqa: ANN001, ANN201
    return discovered_graph


@pytest.mark.parametrize(("source", "target", "kind"), FIG10)
def test_fig10_edges(graph, source: str, target: str, kind: str) -> None:  # noqa: ANN001
    assert graph.has_edge(source, target), f"{source} -> {target} missing"
    assert graph.edges[source, target]["kind"] == kind


def test_edge_labels_name_the_change(graph) -> None:  # noqa: ANN001
    assert graph.edges["CROWN-0", "CROWN-0-C"]["label"] == "positive lower: x → l"
    assert graph.edges["CROWN-0", "CROWN-0-Tria"]["label"] == "unstable upper: λx-λl → x-l"
    assert graph.edges["hBox", "hBox-Diag"]["label"] == "unstable: 0..u → x..x-l"
    assert "negative upper: 0 → x-l" in graph.edges["CROWN-0-Tria", "CROWN-0-Tria-C"]["label"]
    # continuity edges go one way only, line edges both ways
    assert not graph.has_edge("CROWN-0-Tria-C", "CROWN-0-Tria")
    assert graph.has_edge("CROWN-0-C", "CROWN-0")


def test_nodes_bases_and_depth(graph, found) -> None:  # noqa: ANN001
    assert {r.name for r in found.results} <= set(graph)
    assert "LooseIBP-C" in graph  # registered but not generated: still a node
    bases = {n for n in graph if graph.nodes[n]["base"]}
    assert bases == {"IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)"}
    assert graph.nodes["CROWN-0"]["depth"] == 1
    assert graph.nodes["CROWN-0-Tria-C"]["depth"] == 2


def test_the_documented_graph_size_is_that_of_a_run(graph) -> None:  # noqa: ANN001
    text = " ".join((Path(__file__).resolve().parents[3] / "docs" / "discovery.md").read_text().split())
    transforms = sum(1 for _, _, kind in graph.edges(data="kind") if kind == "transform")
    size = (
        f"hold all {graph.number_of_nodes():,} nodes and {graph.number_of_edges():,} edges "
        f"({transforms} of them `transform`)"
    ).replace(",", " ")
    assert size in text


def test_exports_and_drawing(graph, tmp_path: Path) -> None:  # noqa: ANN001
    write_graphml(graph, tmp_path / "g.graphml")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert back.number_of_nodes() == graph.number_of_nodes()
    assert back.number_of_edges() == graph.number_of_edges()
    dot = to_dot(graph)
    assert dot.startswith("digraph genealogy {")
    assert '"CROWN-0" -> "CROWN-0-C"' in dot or '"CROWN-0-C" -> "CROWN-0"' in dot
    draw(graph, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="scope must be"):
        draw(graph, tmp_path / "h.png", scope="some")


def test_emitted_plugin_module_provides_the_same_relaxations(found, tmp_path: Path) -> None:  # noqa: ANN001
    new = new_results(found)
    path = tmp_path / "discovered_plugin.py"
    path.write_text(plugin_source(new), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("discovered_plugin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pm = pluggy.PluginManager("relaxlab")
    pm.add_hookspecs(hookspecs)
    pm.register(module, name="discovered")
    pm.check_pending()
    provided = [r for batch in pm.hook.relaxlab_relaxations() for r in batch]
    assert [r.name for r in provided] == [r.name for r in new]
    for written, result in zip(provided, new, strict=True):
        assert written.spec_key() == result.relaxation.spec_key()
        assert check_soundness(written) is None


def test_cli_json_and_graph(tmp_path: Path) -> None:
    out = tmp_path / "g.png"
    result = CliRunner().invoke(
        cli, ["discover", "--json", "--family", "switch", "--no-relations", "--graph", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    stages = [s["stage"] for s in data["stages"]]
    assert stages[:4] == ["all combinations", "sound", "sound, distinct lines", "non-dominated"]
    assert "+ soft" not in stages and "+ switch" in stages
    crown = next(r for r in data["results"] if r["name"] == "CROWN")
    assert set(crown) >= {"name", "cases", "continuous", "sensitive", "equivalent_to"}
    assert crown["cases"]["unstable"]["upper"] == "λx-λl"
    assert crown["continuous"] is False and crown["sensitive"] is True
    assert out.exists()


def test_cli_table_and_bad_family() -> None:
    result = CliRunner().invoke(cli, ["discover", "--family", "none"])
    assert result.exit_code == 0, result.output
    assert "CROWN-0-Tria-C" in result.output and "+ switch" not in result.output
    assert "DeepZ-Box: kept (as hBox)" in result.output
    bad = CliRunner().invoke(cli, ["discover", "--family", "none", "--family", "soft"])
    assert bad.exit_code != 0 and "cannot be combined" in bad.output
