"""Bounds transforms in discovery: LooseIBP-C and LooseIBP-DC_F rediscovered under their registered names,
widened combinations enumerated, proved and placed in the genealogy, unsound transforms filtered, the grid."""

from __future__ import annotations

import json
import types

import pytest
import torch
from attrs import evolve
from click.testing import CliRunner

import relaxlab
from relaxlab import registry as registry_module
from relaxlab.cli import cli
from relaxlab.core.expr import L, Param, U
from relaxlab.core.lines import LOWER, ZERO
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, ParamSpec, ReluRelaxation
from relaxlab.discovery import discover
from relaxlab.discovery.transforms import choose
from relaxlab.properties import derive
from relaxlab.properties.prover import PROVED
from relaxlab.properties.soundness import check_soundness, find_counterexample, prove_soundness
from relaxlab.registry import build_registry

IBP_LINES = "gen(neg 0..0, unst 0..u, pos l..u)"
HBOX_LINES = "gen(neg 0..0, unst 0..u, pos x..x)"
CROWN_LINES = "gen-switch(neg 0..0, unst 0..λx-λl or x..λx-λl, pos x..x)"
OMEGA = Param("omega")
OMEGA_SPEC = ParamSpec("omega", 1.0, minimum=0.0)


def _raw_bounds(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pre-activation bounds in all three cases, near the floor/ceil steps too."""
    gen = torch.Generator().manual_seed(3)
    a = torch.empty(n, dtype=torch.float64).uniform_(-4.0, 4.0, generator=gen)
    b = torch.empty(n, dtype=torch.float64).uniform_(-4.0, 4.0, generator=gen)
    lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    edges_l = torch.tensor([-1.0, 0.0, 1.0, -2.5], dtype=torch.float64)  # l, u on the steps of F = 1
    edges_u = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    return torch.cat((lower, edges_l)), torch.cat((upper, edges_u))


def _same_coefficients(a: ReluRelaxation, b: ReluRelaxation) -> bool:
    lower, upper = _raw_bounds()
    return all(
        torch.equal(x, y)
        for x, y in zip(
            a.coefficients(lower, upper).tensors, b.coefficients(lower, upper).tensors, strict=True
        )
    )


@pytest.mark.parametrize(("name", "token"), [("LooseIBP-C", "loose-C"), ("LooseIBP-DC", "loose-DC")])
def test_looseibp_is_rediscovered_from_ibps_lines_and_a_transform(
    discovered, builtin_registry, name: str, token: str
) -> None:  # noqa: ANN001
    status = {r.name: r for r in discovered.rediscovered}[name]
    assert (status.status, status.result) == ("kept", name)
    result = discovered.get(name)
    registered = builtin_registry.relaxations[name]
    assert result.name == name and result.equivalent_to == (name,)
    assert result.generated_name == f"{IBP_LINES} + {token}" and result.untransformed == "IBP"
    assert result.relaxation.transform == registered.transform
    assert result.relaxation.parameters == registered.parameters
    assert _same_coefficients(result.relaxation, registered)
    assert (result.continuous, result.sensitive) == (name == "LooseIBP-C", False)  # Sec. 6: ✓C / ✗C, both ✓S


def test_other_grid_values_are_named_with_their_values(builtin_registry) -> None:  # noqa: ANN001
    found = discover(builtin_registry, grid={"omega": (0.5, 2.0), "F": (10.0,)}, families=[], relations=False)
    assert [t.label for t in found.transforms] == [
        "loose-C(omega=0.5)",
        "loose-C(omega=2)",
        "loose-DC(omega=0.5, F=10)",
        "loose-DC(omega=2, F=10)",
    ]
    stages = dict(found.stages)
    assert stages["+ transforms"] == 4 * stages["non-dominated"]
    for label in ("LooseIBP-C(omega=0.5)", "LooseIBP-C(omega=2)", "LooseIBP-DC(omega=0.5, F=10)"):
        result = found.get(label)
        assert _same_coefficients(result.relaxation, relaxlab.get_relaxation(label)), label
    # the registered defaults (omega=1) are not on this grid: the first grid value is named
    status = {r.name: r for r in found.rediscovered}
    assert (status["LooseIBP-C"].status, status["LooseIBP-C"].result) == ("kept", "LooseIBP-C(omega=0.5)")


def test_a_widened_combination_is_enumerated_proved_and_related(discovered) -> None:  # noqa: ANN001
    widened = discovered.get(f"{HBOX_LINES} + loose-C")  # hBox's lines on [l - ω, u + ω]
    assert widened.family == "combination" and widened.untransformed == "hBox"
    assert widened.transform == "loose-C(omega=1)" and widened.flags == "✗C ✓S"
    verdict = prove_soundness(widened.relaxation)
    assert verdict.outcome == PROVED and verdict.part("all", "transform").outcome == PROVED
    # looser than its lines on the raw bounds, tighter than IBP's lines on the same widened bounds
    assert widened.relations["hBox"].overall == "looser"
    assert widened.relations["LooseIBP-C"].overall == "tighter"
    # CROWN on widened bounds: the switch of the widened CROWN-0 and CROWN-1, proved sound
    crown = discovered.get(f"{CROWN_LINES} + loose-C")
    assert crown.family == "switch" and crown.untransformed == "CROWN"
    assert set(crown.parents) == {
        "gen(neg 0..0, unst 0..λx-λl, pos x..x) + loose-C",
        "gen(neg 0..0, unst x..λx-λl, pos x..x) + loose-C",
    }
    assert check_soundness(crown.relaxation) is None
    assert discovered.get(f"{CROWN_LINES} (R) + loose-DC").parents == (f"{CROWN_LINES} + loose-DC",)


def test_widened_results_have_their_parents_in_the_genealogy(discovered_graph) -> None:  # noqa: ANN001
    graph = discovered_graph
    for source, target in (
        ("IBP", "LooseIBP-C"),
        ("IBP", "LooseIBP-DC"),
        ("hBox", f"{HBOX_LINES} + loose-C"),
        ("CROWN", f"{CROWN_LINES} + loose-C"),
    ):
        assert graph.edges[source, target]["kind"] == "transform", (source, target)
    assert graph.edges["IBP", "LooseIBP-C"]["label"] == "bounds widened to [l - omega, u + omega] (omega=1)"
    assert not graph.has_edge("LooseIBP-C", "IBP")  # one direction
    # switch edges among widened relaxations, and line/case edges only at the same widening
    assert (
        graph.edges["gen(neg 0..0, unst 0..λx-λl, pos x..x) + loose-C", f"{CROWN_LINES} + loose-C"]["kind"]
        == "switch"
    )
    assert graph.edges["LooseIBP-C", f"{HBOX_LINES} (R) + loose-C"]["kind"] == "case"
    assert not graph.has_edge("LooseIBP-C", f"{HBOX_LINES} (R) + loose-DC")
    assert graph.nodes["LooseIBP-DC"]["depth"] == 1


@pytest.mark.parametrize(
    ("lines", "token", "flags"),
    [
        (HBOX_LINES, "loose-C", "✗C ✓S"),  # discontinuous lines, continuous widening
        ("gen(neg x..x-l, unst x..x-l, pos x..x)", "loose-C", "✓C ✓S"),  # hBox-Diag-C: both continuous
        ("gen(neg x..x-l, unst x..x-l, pos x..x)", "loose-DC", "✗C ✓S"),  # the floor/ceil steps jump
        ("gen(neg 0..0, unst λx..λx-λl, pos x..x)", "loose-C", "✓C ✗S"),  # DeepZ stays sensitive
    ],
)
def test_flags_of_widened_results_are_those_derive_finds(
    discovered, lines: str, token: str, flags: str
) -> None:  # noqa: ANN001
    result = discovered.get(f"{lines} + {token}")
    props = derive(result.relaxation)
    assert result.flags == flags
    assert (result.continuous, result.sensitive) == (props.continuous, props.sensitive)


def test_a_registered_widened_relaxation_with_dominated_lines_is_reported_dominated() -> None:
    # hBox with the lower line l for negative ReLUs, on [l - ω, u + ω]: hBox's lines dominate its lines
    loose = relaxlab.get_relaxation("LooseIBP-C")
    worse = evolve(
        relaxlab.get_relaxation("hBox"),
        name="acme-Loose-hBox-l",
        negative=CaseBounds(LOWER, ZERO),
        transform=loose.transform,
        params=loose.params,
    )
    registry = build_registry(load_entry_points=False)
    registry.relaxations.add(worse, "test")
    found = discover(registry, families=[], relations=False)
    status = {r.name: r for r in found.rediscovered}["acme-Loose-hBox-l"]
    assert status.status == "dominated" and f"{HBOX_LINES} + loose-C" in status.dominated_by
    result = found.get("acme-Loose-hBox-l")
    assert result.status == "dominated" and result.transform == "loose-C(omega=1)"
    assert result.generated_name == "gen(neg l..0, unst 0..u, pos x..x) + loose-C"


def _plugin(**hooks: object) -> types.ModuleType:
    module = types.ModuleType("acme_transforms")
    for name, fn in hooks.items():
        setattr(module, name, relaxlab.hookimpl(fn))
    return module


class _EntryPoint:
    name, value, group = "acme", "acme_transforms", "relaxlab"

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def load(self) -> types.ModuleType:
        return self.module


def test_an_unsound_transform_is_filtered_and_a_bad_one_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    shift = BoundsTransform(L + OMEGA, U + OMEGA)  # moves [l, u] up: narrows at l
    # widens at the grid value omega = 1 (by 2), narrows for 2 < omega < 3: only the prover sees it
    window = BoundsTransform(L - (OMEGA - 2.0) * (OMEGA - 3.0), U + OMEGA)
    module = _plugin(
        relaxlab_candidate_transforms=lambda: [
            ("shift", shift, (OMEGA_SPEC,)),
            ("window", window, (OMEGA_SPEC,)),
            ("undeclared", BoundsTransform(L - Param("z"), U), ()),
            ("junk", "not a transform", ()),
        ]
    )
    monkeypatch.setattr(
        registry_module.importlib.metadata,
        "entry_points",
        lambda group: [_EntryPoint(module)] if group == "relaxlab" else [],
    )
    monkeypatch.delenv("RELAXLAB_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    registry = build_registry()
    assert [c.name for c in registry.candidate_transforms] == ["loose-C", "loose-DC", "shift", "window"]
    errors = " ".join(str(e) for e in registry.errors)
    assert "undeclared parameter(s) ['z']" in errors and "'junk'" in errors
    probe = evolve(relaxlab.get_relaxation("IBP"), name="probe", transform=window, params=(OMEGA_SPEC,))
    assert find_counterexample(probe, *_raw_bounds()) is None  # sound at omega = 1

    found = discover(registry, families=[], relations=False)
    rejected = {r.token: r for r in found.rejected if r.side == "transform"}
    assert set(rejected) == {"shift", "window"}
    assert all(r.kind == "unsound" and "narrows the bounds" in r.reason for r in rejected.values())
    assert 2.0 <= float(rejected["window"].reason.split("omega=")[1].split(":")[0]) <= 3.0
    assert [t.name for t in found.transforms] == ["loose-C", "loose-DC"]
    assert not [r for r in found.results if "shift" in r.name or "window" in r.name]
    for result in found.results:
        assert check_soundness(result.relaxation) is None, result.name


def test_grid_and_transform_choice(builtin_registry) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unknown parameter 'omgea' in the transform grid: .*F, omega"):
        discover(builtin_registry, grid={"omgea": (1.0,)})
    with pytest.raises(ValueError, match="parameter F must be > 0, got 0"):
        discover(builtin_registry, grid={"F": (0.0,)})
    with pytest.raises(ValueError, match="unknown transform 'loose': choose from loose-C, loose-DC, none"):
        choose(builtin_registry.candidate_transforms, ["loose"])
    assert choose(builtin_registry.candidate_transforms, ["none"]) == []
    plain = discover(builtin_registry, transforms=[], families=[], relations=False)
    assert "+ transforms" not in dict(plain.stages) and plain.transforms == ()
    assert {r.name: r.status for r in plain.rediscovered}["LooseIBP-C"] == "not found"


def test_cli_transform_and_grid_options() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "discover",
            "--json",
            "--family",
            "none",
            "--no-relations",
            "--transform",
            "loose-C",
            "--grid",
            "omega=0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [t["label"] for t in data["transforms"]] == ["loose-C(omega=0.5)"]
    widened = [r for r in data["results"] if r["transform"]]
    assert len(widened) == len(data["results"]) // 2 and {r["transform"] for r in widened} == {
        "loose-C(omega=0.5)"
    }
    assert "LooseIBP-C(omega=0.5)" in {r["name"] for r in widened}
    for args, message in (
        (["--grid", "omega"], "--grid expects PARAM=V1,V2"),
        (["--transform", "nope"], "unknown transform 'nope'"),
        (["--transform", "none", "--transform", "loose-C"], "cannot be combined"),
    ):
        bad = CliRunner().invoke(cli, ["discover", "--family", "none", *args])
        assert bad.exit_code != 0 and message in bad.output, bad.output
