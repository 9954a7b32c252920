"""Exact normal forms: the cancellations the prover relies on, and sound enclosures of them."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaxlab.core.expr import Const, Expr, L, Param, U, ceil, floor, ge, switch
from relaxlab.core.lines import KAPPA, LAMBDA
from relaxlab.core.rational import L_INDEX, U_INDEX, NotRational, Symbolic, rational_variable

BOUNDS = {"l": rational_variable(L_INDEX), "u": rational_variable(U_INDEX)}


def _form(expr: Expr, symbolic: Symbolic | None = None, assignment: dict | None = None):  # noqa: ANN202
    return (symbolic or Symbolic(["gamma", "F", "omega"])).convert(expr, BOUNDS, assignment)


def test_the_chord_identities_cancel_exactly() -> None:
    assert _form(LAMBDA * U - LAMBDA * L - U).is_zero()  # the chord passes through (u, u)
    assert _form(LAMBDA * L - LAMBDA * L).is_zero()
    assert _form(LAMBDA * (U - L)) == _form(U)  # cross-cancelled, not u(u-l)/(u-l)
    assert not _form(LAMBDA * 0.999999 * U - LAMBDA * L - U).is_zero()


def test_sigmoids_are_shared_atoms_and_steps_are_fractional_parts() -> None:
    symbolic = Symbolic(["gamma", "F", "omega"])
    assert _form(KAPPA * U - KAPPA * L, symbolic) == _form(KAPPA * (U - L), symbolic)
    assert len(symbolic.atoms) == 1 and symbolic.atoms[0][0] == "sigmoid"
    F, omega = Param("F"), Param("omega")
    widening = _form(L - (L - omega * (ceil(F * L) - F * L)), symbolic)  # LooseIBP-DC: l - l' = ω·ψ
    assert [kind for kind, _ in symbolic.atoms[1:]] == ["frac_ceil"]
    step = _form(floor(F * U), symbolic) - _form(F * U, symbolic)  # -(Fu - ⌊Fu⌋)
    box = symbolic.complete([(-1e4, 1e4), (-1e4, 1e4), (1.0, 1.0), (1e-3, 1e3), (0.0, 1e3)])
    assert symbolic.enclose(widening, box)[0] >= 0.0
    assert symbolic.enclose(step, box) == (-1.0, 0.0)


def test_switches_follow_the_assignment_and_opaque_has_no_form() -> None:
    condition = ge(-L, U)
    expr = switch(condition, U, L)
    assert _form(expr, assignment={condition: True}) == _form(U)
    assert _form(expr, assignment={condition: False}) == _form(L)
    with pytest.raises(KeyError):
        _form(expr)
    from relaxlab.core.expr import Opaque

    with pytest.raises(NotRational):
        _form(Opaque("f", lambda env: env["u"]))
    with pytest.raises(NotRational):
        _form(L / (U - U))


def test_a_double_root_is_enclosed_without_cancellation() -> None:
    symbolic = Symbolic([])
    square = _form((L - 1.0) * (L - 1.0), symbolic)  # expanded to l² - 2l + 1
    lo, hi = symbolic.enclose(square, symbolic.complete([(0.949, 0.951), (1.0, 1.0)]))
    assert 0.0 < lo <= (1 - 0.951) ** 2 and hi >= (1 - 0.949) ** 2


def test_a_known_nonnegative_width_clips_enclosures() -> None:
    symbolic = Symbolic([], nonnegative=[_form(U - L).num])
    box = symbolic.complete([(-1.0, 1.0), (-1.0, 1.0)])
    assert symbolic.enclose(_form(L - U, symbolic), box) == (-2.0, 0.0)
    assert symbolic.enclose(_form(L - U, symbolic), box, facts=False) == (-2.0, 2.0)


coefficients = st.integers(min_value=-5, max_value=5)


@given(
    a=coefficients,
    b=coefficients,
    c=coefficients,
    d=coefficients,
    lo=st.fractions(min_value=-3, max_value=3, max_denominator=64),
    width=st.fractions(min_value=0, max_value=2, max_denominator=64),
    t=st.fractions(min_value=0, max_value=1, max_denominator=64),
)
def test_polynomial_enclosures_contain_exact_values(
    a: int, b: int, c: int, d: int, lo: Fraction, width: Fraction, t: Fraction
) -> None:
    expr = Const(float(a)) * L * L * L + Const(float(b)) * L * U + Const(float(c)) * U * U + float(d)
    symbolic = Symbolic([])
    form = _form(expr, symbolic)
    hi = lo + width
    box = symbolic.complete([(float(lo), float(hi)), (float(lo), float(hi))])
    bounds = symbolic.enclose(form, box)
    x = lo + t * width
    value = a * x**3 + b * x * x + c * x * x + d
    assert Fraction(bounds[0]) <= value <= Fraction(bounds[1])
