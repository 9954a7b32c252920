"""The interval extension encloses every point evaluation, in floating point."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from relaxlab.core import interval as iv
from relaxlab.core.expr import Const, Expr, L, Named, Opaque, Param, U, ceil, floor, ge, sigmoid, switch
from relaxlab.core.interval import Interval, enclose
from relaxlab.core.lines import KAPPA, LAMBDA

NAMES = ("l", "u", "p")
_finite = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False, allow_subnormal=False)


def _leaves() -> st.SearchStrategy[Expr]:
    return st.one_of(st.sampled_from([L, U, Param("p")]), _finite.map(Const))


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    pair = st.tuples(children, children)
    return st.one_of(
        pair.map(lambda ab: ab[0] + ab[1]),
        pair.map(lambda ab: ab[0] - ab[1]),
        pair.map(lambda ab: ab[0] * ab[1]),
        pair.filter(lambda ab: ab[1] != Const(0.0)).map(lambda ab: ab[0] / ab[1]),
        children.map(sigmoid),
        children.map(floor),
        children.map(ceil),
        st.tuples(children, children, children, children).map(lambda t: switch(ge(t[0], t[1]), t[2], t[3])),
        children.map(lambda e: Named("n", e)),
    )


expressions = st.recursive(_leaves(), _extend, max_leaves=12)


@st.composite
def box_and_point(draw: st.DrawFn) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    box, point = {}, {}
    for name in NAMES:
        a, b = draw(_finite), draw(_finite)
        lo, hi = min(a, b), max(a, b)
        box[name] = (lo, hi)
        point[name] = draw(st.sampled_from([lo, hi]) | st.floats(min_value=lo, max_value=hi))
    return box, point


def _inside(value: float, enclosure: Interval) -> bool:
    return enclosure.lo <= value <= enclosure.hi


@given(expr=expressions, data=box_and_point())
def test_the_enclosure_contains_float_and_tensor_evaluations(expr: Expr, data: tuple) -> None:
    box, point = data
    enclosure = enclose(expr, box)
    assert enclosure.lo <= enclosure.hi
    try:
        value = float(expr.evaluate(point))
    except (OverflowError, ValueError):  # float evaluation of floor(±inf) raises: nothing to enclose
        assume(False)
    tensor = float(expr.evaluate({k: torch.tensor(v, dtype=torch.float64) for k, v in point.items()}))
    assume(not math.isnan(value))
    assert _inside(value, enclosure), (str(expr), box, point, value, enclosure)
    if not math.isnan(tensor):
        assert _inside(tensor, enclosure), (str(expr), box, point, tensor, enclosure)


@given(a=st.floats(allow_nan=False, allow_infinity=False), b=st.floats(allow_nan=False, allow_infinity=False))
def test_arithmetic_rounds_outwards(a: float, b: float) -> None:
    exact = {"+": Fraction(a) + Fraction(b), "*": Fraction(a) * Fraction(b)}
    for op, bounds in (("+", iv.add((a, a), (b, b))), ("*", iv.mul((a, a), (b, b)))):
        assert _encloses(bounds, exact[op])
    if b != 0.0:
        assert _encloses(iv.div((a, a), (b, b)), Fraction(a) / Fraction(b))


def _encloses(bounds: tuple[float, float], exact: Fraction) -> bool:
    lo, hi = bounds
    return (lo == -math.inf or Fraction(lo) <= exact) and (hi == math.inf or exact <= Fraction(hi))


def test_exact_operations_keep_their_end_points() -> None:
    assert enclose(L * U, {"l": 0.5, "u": 3.0}) == Interval(1.5, 1.5)
    assert enclose(L + U, {"l": 0.25, "u": 0.5}) == Interval(0.75, 0.75)
    tenth = enclose(L + U, {"l": 0.1, "u": 0.2})
    assert tenth.lo < tenth.hi and tenth.contains(0.1 + 0.2)


def test_division_near_zero_is_unbounded() -> None:
    assert enclose(L / U, {"l": 1.0, "u": (-1.0, 1.0)}) == Interval(-math.inf, math.inf)
    assert enclose(L / U, {"l": 1.0, "u": (0.0, 2.0)}) == Interval(
        -math.inf, math.inf
    )  # the guard may flip signs
    assert iv.div((1.0, 1.0), (0.0, 2.0)) == (0.5, math.inf)  # the real quotient, pole excluded
    assert enclose(L / U, {"l": 1.0, "u": (2.0, 4.0)}) == Interval(0.25, 0.5)


def test_switches_take_the_decided_branch_or_the_hull() -> None:
    expr = switch(ge(L, 0.0), U, -U)
    assert enclose(expr, {"l": (1.0, 2.0), "u": (3.0, 4.0)}) == Interval(3.0, 4.0)
    assert enclose(expr, {"l": (-2.0, -1.0), "u": (3.0, 4.0)}) == Interval(-4.0, -3.0)
    assert enclose(expr, {"l": (-1.0, 1.0), "u": (3.0, 4.0)}) == Interval(-4.0, 4.0)
    assert enclose(ge(L, 0.0), {"l": (-1.0, 1.0)}) == Interval(0.0, 1.0)


def test_steps_sigmoid_named_and_opaque() -> None:
    assert enclose(floor(L), {"l": (-0.5, 1.5)}) == Interval(-1.0, 1.0)
    assert enclose(ceil(L), {"l": (-0.5, 1.5)}) == Interval(0.0, 2.0)
    kappa = enclose(KAPPA, {"l": (-2.0, -1.0), "u": (1.0, 2.0), "gamma": 1.0})
    assert 0.0 < kappa.lo < kappa.hi < 1.0
    lam = enclose(LAMBDA, {"l": (-1.0, -1.0), "u": (1.0, 1.0)})
    assert lam.contains(0.5) and lam.hi - lam.lo < 1e-15
    assert enclose(sigmoid(L), {"l": (-1e9, 1e9)}) == Interval(0.0, 1.0)
    assert enclose(Opaque("f", lambda env: env["u"]), {"l": 0.0, "u": 1.0}) == Interval(-math.inf, math.inf)


def test_a_missing_variable_is_named() -> None:
    with pytest.raises(KeyError, match="gamma"):
        enclose(KAPPA, {"l": -1.0, "u": 1.0})
