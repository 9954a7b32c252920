"""Derived continuity and sensitivity flags equal the paper's, and probing confirms them."""

from __future__ import annotations

import pytest
from attrs import evolve

import relaxlab
from relaxlab.core.expr import L, Opaque, U
from relaxlab.core.lines import EXACT_NEGATIVE, EXACT_POSITIVE, IDENTITY, ZERO
from relaxlab.core.relaxation import CaseBounds, Line, ReluRelaxation
from relaxlab.properties import derive, probe

#: Flags stated by the paper (Table 2, Sec. 6, App. H; DESIGN.md §1): (continuous, sensitive).
PAPER_FLAGS = {
    "IBP": (True, False),
    "hBox": (False, False),
    "DeepZ": (True, True),
    "CROWN": (False, True),
    "CROWN-IBP (R)": (False, True),
    "CROWN-0": (False, True),
    "CROWN-1": (False, True),
    "CROWN-0-C": (True, True),
    "CROWN-1-C": (True, True),
    "CROWN-0-Tria": (False, False),
    "CROWN-1-Tria": (False, False),
    "CROWN-0-Tria-C": (True, False),
    "CROWN-1-Tria-C": (True, False),
    "DeepZ-Soft": (True, True),
    "CROWN-Soft": (True, True),
    "CROWN-Soft-IBP": (True, True),
    "hBox-Diag": (False, False),
    "hBox-Diag-C": (True, False),
    "hBox-Switch": (False, False),
    "DeepZ-Box": (False, False),
    "DeepZ-Diag": (False, False),
    "DeepZ-Diag-C": (True, False),
    "DeepZ-Switch": (False, False),
    "DeepZ-IBP (R)": (True, True),
    "LooseIBP-C": (True, False),
    "LooseIBP-DC": (False, False),
}


@pytest.mark.parametrize("name", sorted(PAPER_FLAGS))
def test_derived_flags_equal_the_papers(name: str) -> None:
    props = derive(relaxlab.get_relaxation(name))
    assert (props.continuous, props.sensitive) == PAPER_FLAGS[name]
    assert props.sound and props.method == "derived"


@pytest.mark.parametrize(
    "name",
    [
        "IBP",
        "hBox",
        "DeepZ",
        "CROWN",
        "CROWN-0-C",
        "CROWN-1-Tria",
        "DeepZ-Soft",
        "hBox-Switch",
        "LooseIBP-C",
        "LooseIBP-DC",
    ],
)
def test_probing_confirms_the_derived_flags(name: str) -> None:
    relaxation = relaxlab.get_relaxation(name)
    derived, probed = derive(relaxation), probe(relaxation)
    assert (probed.continuous, probed.sensitive) == (derived.continuous, derived.sensitive)


def test_discontinuities_name_their_source() -> None:
    sources = {d.source for d in derive(relaxlab.get_relaxation("CROWN")).discontinuities}
    assert sources == {"switch -l >= u"}
    sources = {d.source for d in derive(relaxlab.get_relaxation("hBox")).discontinuities}
    assert sources == {"case boundary l = 0"}
    sources = {d.source for d in derive(relaxlab.get_relaxation("CROWN-1")).discontinuities}
    assert sources == {"case boundary u = 0"}
    dc = derive(relaxlab.get_relaxation("LooseIBP-DC"))
    assert any("floor" in d.source for d in dc.discontinuities)
    assert any("ceil" in d.source for d in dc.discontinuities)


def test_the_soft_switch_is_continuous_because_its_branches_meet() -> None:
    # DeepZ-Soft's upper line switches at kappa = lambda, where both pivots give the same line
    props = derive(relaxlab.get_relaxation("DeepZ-Soft"))
    assert props.continuous and props.discontinuities == ()


def test_looseibp_dc_is_continuous_when_omega_is_zero() -> None:
    relaxation = relaxlab.get_relaxation("LooseIBP-DC(omega=0)")
    assert derive(relaxation).continuous
    assert probe(relaxation).continuous


def test_opaque_relaxations_are_judged_by_probing() -> None:
    half = Opaque("u/(u-l)", lambda env: env["u"] / (env["u"] - env["l"]))
    relaxation = ReluRelaxation(
        name="opaque-DeepZ",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(Line(half, 0.0), Line(half, -half * L)),
    )
    props = derive(relaxation)
    assert props.method == "probed"
    assert props.continuous and props.sensitive


def test_a_new_discontinuity_is_detected() -> None:
    # hBox-Diag's band, but negative ReLUs exact: jumps at u = 0 (App. H)
    relaxation = evolve(relaxlab.get_relaxation("hBox-Diag-C"), name="probe-me", negative=EXACT_NEGATIVE)
    assert not derive(relaxation).continuous
    assert not probe(relaxation).continuous
    affine = ReluRelaxation(
        name="affine-upper",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, Line(0.0, U - 0 * L)),
    )
    assert not derive(affine).sensitive
    shifted = ReluRelaxation(
        name="shifted-upper",
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(IDENTITY, Line(1.0, -L + U * L / (U - L) * 0.01)),
    )
    assert derive(shifted).sensitive  # an offset with a rational term bends
