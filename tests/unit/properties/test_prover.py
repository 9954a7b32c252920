"""The soundness prover: built-ins proved, narrow violations found and confirmed, opaque lines sampled."""

from __future__ import annotations

import pytest
import torch
from attrs import evolve

import relaxlab
from relaxlab.core.expr import Const, L, Opaque, Param, U, ge, switch
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE, KAPPA, LAMBDA, UPPER, ZERO
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, Line, ParamSpec, ReluRelaxation, line
from relaxlab.core.rounding import arithmetic
from relaxlab.core.stability import Stability
from relaxlab.discovery.catalog import check_line
from relaxlab.properties import prover
from relaxlab.properties.prover import (
    COUNTEREXAMPLE,
    PROVED,
    SAMPLED,
    UNDECIDED,
    homogeneity,
    prove_part,
)
from relaxlab.properties.soundness import (
    Undecided,
    check_soundness,
    find_counterexample,
    prove_soundness,
    sampled_check,
)
from relaxlab.properties.tightness import case_pairs
from relaxlab.relaxations.builtin import BUILTINS

#: An upper line that dips below the ReLU only for 4 <= u <= 4.1 (by u/2, far beyond any tolerance).
WINDOW_UPPER = line(0.0, U + switch(ge(U, 4.0), switch(ge(4.1, U), -0.5 * U, 0.0), 0.0))
P = Param("p")
P_SPEC = ParamSpec("p", 1.0, minimum=0.0, maximum=10.0, description="only 3 <= p <= 3.2 is unsound")
#: An upper line that is too low by u/10 only for parameter values 3 <= p <= 3.2.
PARAM_WINDOW_UPPER = line(0.0, U + switch(ge(P, 3.0), switch(ge(3.2, P), -0.1 * U, 0.0), 0.0))


def _relaxation(name: str, unstable: CaseBounds, **kwargs: object) -> ReluRelaxation:
    fields = {"negative": EXACT_NEGATIVE, "positive": EXACT_POSITIVE, **kwargs}
    return ReluRelaxation(name=name, unstable=unstable, **fields)  # type: ignore[arg-type]


def _confirm(relaxation: ReluRelaxation, found: object) -> None:
    """The reported point violates when evaluated independently (the relaxation's own lines, in the
    arithmetic the counterexample names), by more than the line tolerance of that arithmetic."""
    assert found is not None and not isinstance(found, Undecided)
    setting = relaxation.with_params(**dict(found.params)) if relaxation.params else relaxation
    assert find_counterexample(setting, [found.lower], [found.upper], found.arithmetic) is not None
    dtype = getattr(torch, found.arithmetic)
    lb = torch.tensor([found.lower], dtype=dtype)
    ub = torch.tensor([found.upper], dtype=dtype)
    ls, lo, us, uo = (float(v) for v in setting.coefficients(lb, ub).tensors)
    slope, offset = (ls, lo) if found.side == "lower" else (us, uo)
    value = slope * found.x + offset
    gap = value - max(found.x, 0.0) if found.side == "lower" else max(found.x, 0.0) - value
    assert found.lower <= found.x <= found.upper and gap > arithmetic(found.arithmetic).tolerance(
        found.lower, found.upper
    )


@pytest.mark.parametrize("relaxation", BUILTINS, ids=[r.name for r in BUILTINS])
def test_every_builtin_is_proved(relaxation: ReluRelaxation) -> None:
    verdict = prove_soundness(relaxation)
    assert verdict.outcome == PROVED, str(verdict)
    assert {p.outcome for p in verdict.parts} == {PROVED}
    assert len(verdict.parts) == 6 + (relaxation.transform is not None)
    assert check_soundness(relaxation) is None


@pytest.mark.parametrize("name", ["DeepZ", "CROWN", "DeepZ-Soft", "CROWN-Soft", "hBox-Switch"])
def test_scale_invariant_lines_are_proved_at_every_scale(name: str) -> None:
    verdict = prove_soundness(relaxlab.get_relaxation(name))
    assert all(p.domain is not None and p.domain.scale_invariant for p in verdict.parts)
    assert "all l <= u (scale invariant)" in str(verdict)


@pytest.mark.parametrize("name", ["LooseIBP-C", "LooseIBP-DC"])
def test_looseibp_families_are_proved_over_their_parameter_ranges(name: str) -> None:
    relaxation = relaxlab.get_relaxation(name)
    verdict = prove_soundness(relaxation)
    assert verdict.outcome == PROVED, str(verdict)
    transform = verdict.part("all", "transform")
    assert transform.domain is not None and not transform.domain.scale_invariant
    ranges = {r.name: r for r in transform.domain.params}
    assert (ranges["omega"].lo, ranges["omega"].hi) == (0.0, 1e3)
    if name == "LooseIBP-DC":
        assert ranges["F"].open_lo and ranges["F"].hi == 1e3
    # a current value beyond the clip is included in the range proved
    wide = prove_soundness(relaxation.with_params(omega=5e3))
    assert (
        wide.outcome == PROVED
        and {r.name: r for r in wide.part("all", "transform").domain.params}["omega"].hi == 5e3
    )


def test_a_window_of_width_0_1_in_u_is_found_where_sampling_misses_it() -> None:
    relaxation = _relaxation("window", CaseBounds(ZERO, WINDOW_UPPER))
    assert sampled_check(relaxation) is None  # the probe grid and parameter probes pass it
    assert (
        find_counterexample(relaxation, *case_pairs(Stability.UNSTABLE)) is None
    )  # so does discovery's grid
    found = check_soundness(relaxation)
    _confirm(relaxation, found)
    assert found.case == "unstable" and found.side == "upper" and 4.0 <= found.upper <= 4.1
    verdict = prove_soundness(relaxation)
    assert verdict.part("unstable", "upper").outcome == COUNTEREXAMPLE
    assert verdict.part("unstable", "lower").outcome == PROVED


def test_a_parameter_subrange_violation_is_found_where_sampling_misses_it() -> None:
    relaxation = _relaxation("param-window", CaseBounds(ZERO, PARAM_WINDOW_UPPER), params=(P_SPEC,))
    assert sampled_check(relaxation) is None  # no parameter probe lands in [3, 3.2]
    found = check_soundness(relaxation)
    _confirm(relaxation, found)
    assert 3.0 <= dict(found.params)["p"] <= 3.2
    # with the parameter out of the window at its current value, the family is still refused
    assert check_soundness(relaxation.with_params(p=5.0)) is not None


def test_counterexamples_of_ordinary_mistakes_are_confirmed() -> None:
    crown = relaxlab.get_relaxation("CROWN")
    for unstable in (
        CaseBounds(ZERO, line(LAMBDA * 0.999999, -LAMBDA * L)),  # slightly flat chord
        CaseBounds(line(1.0, 1e-6), CHORD),  # lower line 1e-6 too high
        CaseBounds(ZERO, line(0.0, U - 1e-6)),
    ):
        relaxation = evolve(crown, name="mistake", unstable=unstable)
        _confirm(relaxation, check_soundness(relaxation))


def test_a_narrowing_transform_is_refused_with_the_transform_part() -> None:
    relaxation = evolve(relaxlab.get_relaxation("IBP"), name="narrow", transform=BoundsTransform(L + 1e-3, U))
    verdict = prove_soundness(relaxation)
    assert verdict.part("all", "transform").outcome == COUNTEREXAMPLE
    assert verdict.counterexample is not None and verdict.counterexample.side == "transform"


def test_a_transform_that_narrows_only_for_some_omega_is_refused() -> None:
    omega = Param("omega")
    spec = ParamSpec("omega", 1.0, minimum=0.0, maximum=10.0)
    narrowing = switch(ge(omega, 6.0), switch(ge(6.1, omega), -2.0 * omega, omega), omega)
    relaxation = evolve(
        relaxlab.get_relaxation("IBP"),
        name="omega-window",
        transform=BoundsTransform(L - narrowing, U + omega),
        params=(spec,),
    )
    assert sampled_check(relaxation) is None
    found = check_soundness(relaxation)
    assert found is not None and found.side == "transform" and 6.0 <= dict(found.params)["omega"] <= 6.1


def test_lines_sound_at_every_scale_are_proved_on_any_widening() -> None:
    """CROWN's lines on [l - ω, u + ω]: the chord composed with the widening leaves the branch and
    bound undecided, but a line sound for every (l', u') of its case is sound on the widened bounds."""
    loose = relaxlab.get_relaxation("LooseIBP-C")
    crown = evolve(
        relaxlab.get_relaxation("CROWN"), name="CROWN widened", transform=loose.transform, params=loose.params
    )
    chord = prove_part(
        Stability.UNSTABLE,
        "upper",
        CHORD,
        loose.transform,
        (prover.ParamRange("omega", 0.0, 1e3),),
        budget=300,
    )
    assert chord.outcome == UNDECIDED  # through the transform: not decided
    verdict = prove_soundness(crown)
    assert verdict.outcome == PROVED, str(verdict)
    assert verdict.part("all", "transform").outcome == PROVED
    upper = verdict.part("unstable", "upper")
    assert upper.domain.scale_invariant and "widened bounds" in str(upper)
    assert check_soundness(crown) is None


def test_a_line_sound_only_on_the_widened_bounds_is_proved_through_the_transform() -> None:
    omega = Param("omega")
    loose = relaxlab.get_relaxation("LooseIBP-C")
    # y >= l' + ω/2 is y >= l - ω/2 on [l - ω, u + ω]: sound there, and unsound for ω > 0 without the
    # widening (y >= l' + ω itself, y >= l in the reals, is not sound as computed: in float32 l - ω + ω
    # can exceed l, by 1.9e-8 at l = 1e-7, ω = 1)
    relaxation = _relaxation(
        "lower l plus omega",
        CaseBounds(line(0.0, L + omega / 2), UPPER),
        transform=loose.transform,
        params=loose.params,
    )
    verdict = prove_soundness(relaxation)
    assert verdict.outcome == PROVED, str(verdict)
    assert not verdict.part("unstable", "lower").domain.scale_invariant  # proved through the transform
    assert "widened bounds" in str(verdict.part("unstable", "upper"))  # proved on its own
    _confirm(evolve(relaxation, transform=None), check_soundness(evolve(relaxation, transform=None)))


def test_opaque_lines_are_sampled_not_proved() -> None:
    chord = Opaque("u/(u-l)", lambda env: env["u"] / (env["u"] - env["l"]))
    relaxation = _relaxation("opaque-DeepZ", CaseBounds(Line(chord, 0.0), Line(chord, -chord * L)))
    verdict = prove_soundness(relaxation)
    assert verdict.outcome == SAMPLED
    assert verdict.part("unstable", "upper").outcome == SAMPLED
    assert verdict.part("negative", "upper").outcome == PROVED
    assert "sampled, not proved" in str(verdict)
    assert check_soundness(relaxation) is None
    low = _relaxation("opaque-low", CaseBounds(ZERO, Line(chord, 0.0)))  # λx is no upper line
    assert prove_soundness(low).outcome == COUNTEREXAMPLE
    _confirm(low, check_soundness(low))


def test_undecided_is_refused_not_sound() -> None:
    # sound (u plus non-negative steps) but with more switch conditions than the prover enumerates
    upper = U
    for k in range(1, 8):
        upper = upper + switch(ge(U, float(k)), 1e-3, 0.0)
    relaxation = _relaxation("many-switches", CaseBounds(ZERO, line(0.0, upper)))
    verdict = prove_soundness(relaxation)
    assert verdict.outcome == UNDECIDED and verdict.part("unstable", "upper").outcome == UNDECIDED
    refusal = check_soundness(relaxation)
    assert isinstance(refusal, Undecided) and refusal.side == "undecided" and refusal.line == "upper"
    assert "not proved" in str(refusal)
    # and a budget too small to finish is undecided too, never proved
    tight = prove_soundness(relaxlab.get_relaxation("DeepZ"), budget=1)
    assert tight.outcome == UNDECIDED and "budget" in str(tight)


def test_degree_of_homogeneity() -> None:
    assert homogeneity(LAMBDA) == 0 and homogeneity(KAPPA) == 0
    assert homogeneity(-LAMBDA * L) == 1 and homogeneity(U - KAPPA * U) == 1
    assert homogeneity(Const(0.0)) == "any" and homogeneity(switch(ge(-L, U), U, -L)) == 1
    assert homogeneity(L - Param("omega")) is None
    assert homogeneity(switch(ge(U, 4.0), U, L)) is None  # the condition moves with scale
    assert homogeneity(U * U / L) == 1


def test_part_verdicts_are_cached_values_with_readable_text() -> None:
    first = prove_part(Stability.UNSTABLE, "upper", CHORD)
    assert prove_part(Stability.UNSTABLE, "upper", CHORD) is first
    assert str(first).startswith("unstable upper: proved on all l <= u (scale invariant)")
    verdict = prove_soundness(relaxlab.get_relaxation("DeepZ-Soft"))
    text = str(verdict)
    assert text.splitlines()[0] == "DeepZ-Soft: proved" and "gamma ∈ (0, 1000]" in text
    renamed = prove_soundness(evolve(relaxlab.get_relaxation("DeepZ-Soft"), name="Soft-alias"))
    assert renamed.relaxation == "Soft-alias" and renamed.parts == verdict.parts


def test_discovery_rejects_a_candidate_line_unsound_only_in_a_window() -> None:
    assert check_line(WINDOW_UPPER, Stability.UNSTABLE, "upper")[0] == "unsound"
    assert check_line(UPPER, Stability.UNSTABLE, "upper") is None


def test_outside_l_le_u_nothing_needs_proof_and_violations_inside_are_found() -> None:
    # not scale invariant (the constant): searched on |l|, |u| <= 1e4, where half the boxes have l > u
    verdict = prove_part(Stability.NEGATIVE, "upper", line(1.001, 1e-6))
    assert verdict.outcome == COUNTEREXAMPLE and verdict.counterexample.lower <= verdict.counterexample.upper
    assert prove_part(Stability.NEGATIVE, "upper", line(1.0, 1e-6 - L)).outcome == PROVED


def test_a_gap_that_vanishes_on_a_case_boundary_is_proved_quickly() -> None:
    # x + l·λ above the ReLU for l >= 0, below it just left of l = 0 (outside the case)
    verdict = prove_part(Stability.POSITIVE, "upper", Line(1.0, L * LAMBDA))
    assert verdict.outcome == PROVED and verdict.boxes <= 10
