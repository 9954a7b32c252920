"""A plugin's candidate line takes part in discovery with no change in relaxlab.

The example distribution plugins/relaxlab-example contributes the lower line x/2 through
relaxlab_candidate_lines (and the relaxation example-Half-Slope that uses it). When it is not
installed, its module is loaded through a faked entry point (pluggy's own testing technique),
so the registry takes exactly the code path of an installed plugin.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from relaxlab import registry as registry_module
from relaxlab.core.stability import Stability
from relaxlab.discovery import discover
from relaxlab.discovery.catalog import SLOTS
from relaxlab.properties.soundness import check_soundness
from relaxlab.registry import build_registry

EXAMPLE_SRC = Path(__file__).resolve().parents[3] / "plugins" / "relaxlab-example" / "src"


class _EntryPoint:
    name, value, group = "example", "relaxlab_example.plugin", "relaxlab"

    def load(self) -> object:
        return importlib.import_module(self.value)


@pytest.fixture
def example_registry(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    installed = [ep for ep in importlib.metadata.entry_points(group="relaxlab") if ep.name == "example"]
    if not installed:
        if not EXAMPLE_SRC.exists():
            pytest.fail(f"the example plugin distribution is missing at {EXAMPLE_SRC}")
        monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
        monkeypatch.setattr(
            registry_module.importlib.metadata,
            "entry_points",
            lambda group: [_EntryPoint()] if group == "relaxlab" else [],
        )
    monkeypatch.delenv("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    registry = build_registry()
    assert not registry.errors, registry.errors
    return registry


def test_a_plugin_candidate_line_changes_the_enumeration(example_registry) -> None:  # noqa: ANN001
    baseline = discover(build_registry(load_entry_points=False), families=[], relations=False)
    found = discover(example_registry, relations=False)
    sources = {c.name: c.source for c in example_registry.candidate_lines}
    assert sources["x/2"] == "example"
    # x/2 is a sound lower line in every case: x/2 <= relu(x) whenever l <= x <= u
    tokens = {
        slot: {c.token for c in lines} for slot, lines in zip(SLOTS, found.catalog.distinct, strict=True)
    }
    for stability in Stability:
        assert "x/2" in tokens[(stability, "lower")]
        assert "x/2" not in tokens[(stability, "upper")]
    base, new = dict(baseline.stages), dict(found.stages)
    assert new["all combinations"] > base["all combinations"]
    # one more lower line per case (5, 4 and 4 distinct ones without it: the chord's lines are not sound in
    # the positive case as computed, near its pole l = u)
    assert new["sound, distinct lines"] == base["sound, distinct lines"] // (5 * 4 * 4) * (6 * 5 * 5)
    # the plugin's own relaxation (x/2 <= y <= chord for unstable ReLUs) is rediscovered from its line
    status = {r.name: r for r in found.rediscovered}["example-Half-Slope"]
    assert status.status in ("kept", "dominated")
    result = found.get("example-Half-Slope")
    assert result.cases[1].lower == "x/2" and result.cases[1].upper == "λx-λl"
    assert check_soundness(result.relaxation) is None
    assert any("x/2" in r.generated_name or "x/2" in {c.lower for c in r.cases} for r in found.results)

    # the counts docs/discovery.md gives for a run with the example plugin
    plain = new["total"] - new["+ transforms"]
    text = " ".join((Path(__file__).resolve().parents[3] / "docs" / "discovery.md").read_text().split())
    assert (
        f"the plain stages keep {plain} and the transforms add {new['+ transforms']}: {new['total']} in all"
        in text
    )
