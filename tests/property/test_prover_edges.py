"""Random lines near the prover's edges: whatever it proves holds as computed, in float32 and float64.

Each example is a relaxation that is exact (or IBP-like) in two cases and carries, in the third, a
line built near an edge of what the prover decides: offsets within a few units of roundoff of the
ReLU or of the old relative tolerance, amplified by weights up to 1e9; sums that cancel in the
reals but not as computed (``w·((u + C) - C - u)`` with ``C`` up to 1e16); switches on constants
such as 4.1 whose float32 roundings straddle the switch; slopes off the chord by a few units of
roundoff; and parameters whose admissible range is unbounded, used at values far beyond the
prover's clip. The property: if the relaxation is accepted (by the facade's check, and at the
drawn parameter values by the registry's look-up), then at drawn pairs ``(l, u)`` inside the
domain it was proved on, near the case boundaries and the switch constants, and at every scale
where it claims scale invariance, the lines as evaluated in float32 and in float64 are on the right
side of the ReLU up to the line tolerance (:mod:`relaxlab.core.rounding`), the gap computed exactly.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxlab.core.expr import L, Param, U, ge, switch
from relaxlab.core.lines import EXACT_NEGATIVE, EXACT_POSITIVE, LAMBDA, UPPER, ZERO
from relaxlab.core.relaxation import CaseBounds, Line, ParamSpec, ReluRelaxation, line
from relaxlab.core.scaling import BOUNDED_DOMAIN
from relaxlab.properties.soundness import find_counterexample, prove_soundness
from relaxlab.registry import RelaxationRegistry, UnsoundRelaxationError

#: Fewer boxes than the default: an undecided part is a refusal, and only accepted relaxations matter here.
BUDGET = 400
THETA = Param("theta")

tiny = st.sampled_from([0.0, 2.0**-1074, 1e-300, 2.0**-60, 1e-18, 1e-15, 1e-13, 5e-10, 1e-9, 1e-6])
weights = st.sampled_from([1.0, 3.0, 100.0, 1e9])
constants = st.sampled_from([1.0, 4.1, 1e4, 1e8, 1e16])
signs = st.sampled_from([1.0, -1.0])


@st.composite
def edge_lines(draw: st.DrawFn) -> tuple[str, CaseBounds, tuple[ParamSpec, ...], float]:
    """``(case, lines, params, a switch constant or 0)``: a case's lines, one of them near an edge."""
    kind = draw(st.sampled_from(["offset", "cancel", "switch", "slope", "parameter"]))
    w, eps, c, sign = draw(weights), draw(tiny), draw(constants), draw(signs)
    if kind == "offset":  # a lower line a hair above the ReLU where it is 0 (or an upper one below)
        case = draw(st.sampled_from(["negative", "unstable"]))
        if case == "negative":
            return case, CaseBounds(line(0.0, sign * w * eps), ZERO), (), 0.0
        return case, CaseBounds(ZERO, line(0.0, U + sign * w * eps)), (), 0.0
    if kind == "cancel":  # 0 in the reals, rounding error as computed
        cancel = w * ((U + c) - c - U)
        return "negative", CaseBounds(line(0.0, sign * cancel), ZERO), (), 0.0
    if kind == "switch":  # steep where u >= c, wrong just below c
        steep = c + w * 1e6 * (U - c)
        if draw(st.booleans()):
            return "unstable", CaseBounds(ZERO, line(0.0, switch(ge(U, c), steep, U))), (), c
        return "unstable", CaseBounds(ZERO, line(0.0, switch(ge(c, U), U, steep))), (), c
    if kind == "slope":  # the chord's slope off by a few units of roundoff
        k = draw(st.sampled_from([1.0, 4.0, 64.0, 1024.0, 2.0**20]))
        slope = LAMBDA * (1.0 + sign * k * 2.0**-53)
        return "unstable", CaseBounds(ZERO, Line(slope, -slope * L)), (), 0.0
    # a parameter with an unbounded range: sound only for theta <= M
    limit = draw(st.sampled_from([10.0, 1e3, 1e5]))
    spec = ParamSpec("theta", 1.0, minimum=0.0)
    return "unstable", CaseBounds(ZERO, line(0.0, U * (1.5 - THETA / (2 * limit)))), (spec,), 0.0


def _relaxation(case: str, lines: CaseBounds, params: tuple[ParamSpec, ...]) -> ReluRelaxation:
    cases = {"negative": EXACT_NEGATIVE, "unstable": CaseBounds(ZERO, UPPER), "positive": EXACT_POSITIVE}
    cases[case] = lines
    return ReluRelaxation(name="edge", params=params, **cases)  # type: ignore[arg-type]


def _check(relaxation: ReluRelaxation) -> object | None:
    verdict = prove_soundness(relaxation, budget=BUDGET)
    return None if verdict.proved else verdict


def _pairs(draw: st.DrawFn, bounded: bool, constant: float) -> tuple[list[float], list[float]]:
    """Pairs ``(l, u)`` of every case, near 0, near ``constant`` (a few float32 and float64 ulps
    around it), at every magnitude the relaxation is proved for."""
    top = math.log10(BOUNDED_DOMAIN) if bounded else 30.0
    magnitude = st.floats(-30.0, top).map(lambda e: 10.0**e)
    points = [draw(magnitude) * draw(signs) for _ in range(12)] + [0.0, 1e-7, -1e-7]
    if constant:
        below32 = float(torch.tensor(constant, dtype=torch.float32))
        for value in (
            constant,
            below32,
            math.nextafter(constant, 0.0),
            math.nextafter(constant, math.inf),
            math.nextafter(below32, 0.0),
        ):
            points += [value, -value]
    points = [p for p in points if abs(p) <= (BOUNDED_DOMAIN if bounded else 1e30)]
    pairs = [(min(a, b), max(a, b)) for a in points for b in points]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@given(data=st.data(), edge=edge_lines())
def test_what_the_prover_accepts_holds_as_computed(data: st.DataObject, edge: tuple) -> None:
    case, lines, params, constant = edge
    relaxation = _relaxation(case, lines, params)
    registry = RelaxationRegistry(check=_check)
    try:
        registry.register(relaxation, "hypothesis", check=_check)
    except UnsoundRelaxationError:
        return  # refused: nothing to hold
    settings = [relaxation]
    if params:  # far beyond the clip of the proof, and at the ends: only what get() returns counts
        for value in data.draw(
            st.lists(st.sampled_from([0.0, 1e-3, 1.0, 999.0, 1e3, 1e4, 1e5, 1e12]), min_size=1, max_size=3)
        ):
            try:
                settings.append(registry.get(f"edge(theta={value!r})"))
            except UnsoundRelaxationError:
                pass
    bounded = any(
        not verdict_part.domain.scale_invariant
        for verdict_part in prove_soundness(relaxation, budget=BUDGET).parts
        if verdict_part.domain
    )
    lower, upper = _pairs(data.draw, bounded, constant)
    for setting in settings:
        for dtype in ("float32", "float64"):
            found = find_counterexample(setting, lower, upper, dtype)
            assert found is None, f"{setting.label} accepted but {found}"
