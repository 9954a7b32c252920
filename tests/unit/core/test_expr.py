"""The expression algebra: evaluation, structure, degrees and printing."""

from __future__ import annotations

import math

import pytest
import torch

from relaxlab.core.expr import Const, L, Opaque, Param, U, ceil, floor, ge, sigmoid, switch
from relaxlab.core.lines import KAPPA, LAMBDA


def test_arithmetic_evaluates_batched_on_tensors() -> None:
    lb = torch.tensor([-1.0, -3.0], dtype=torch.float64)
    ub = torch.tensor([1.0, 1.0], dtype=torch.float64)
    value = LAMBDA.evaluate({"l": lb, "u": ub})
    assert torch.equal(value, torch.tensor([0.5, 0.25], dtype=torch.float64))
    offset = (-LAMBDA * L).evaluate({"l": lb, "u": ub})
    assert torch.equal(offset, torch.tensor([0.5, 0.75], dtype=torch.float64))


def test_constant_folding_and_identities() -> None:
    assert L + 0 == L
    assert 1 * U == U
    assert 0 * U == Const(0.0)
    assert Const(2.0) * Const(3.0) == Const(6.0)
    negated = -L
    assert -negated == L


def test_structural_equality_and_hash() -> None:
    assert U / (U - L) == U / (U - L)
    assert hash(U / (U - L)) == hash(U / (U - L))
    assert U / (U - L) != U / (U + L)


@pytest.mark.parametrize(
    ("expr", "degree"),
    [
        (Const(3.0), 0),
        (Param("omega"), 0),
        (L, 1),
        (L * U, 2),
        (L - Param("omega"), 1),
        (LAMBDA, math.inf),
        (KAPPA, math.inf),
        (sigmoid(Param("gamma")), 0),
        (switch(ge(-L, U), 0.0, 1.0), 0),
        (switch(ge(-L, U), U, -L), 1),
        (L - Param("omega") * (ceil(Param("F") * L) - Param("F") * L), 1),
        (floor(U), 0),
    ],
)
def test_piecewise_degree(expr, degree) -> None:  # noqa: ANN001
    assert expr.degree() == degree


def test_opaque_degree_is_unknown_and_switches_and_steps_are_found() -> None:
    opaque = Opaque("g", lambda env: env["u"] * 2)
    assert opaque.degree() is None
    assert opaque.is_opaque()
    expr = switch(ge(-L, U), floor(U), L)
    assert len(expr.switches()) == 1
    assert len(expr.steps()) == 1


def test_division_by_zero_stays_finite_with_finite_gradient() -> None:
    lb = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    ub = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    value = LAMBDA.evaluate({"l": lb, "u": ub})
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(lb.grad).all() and torch.isfinite(ub.grad).all()


def test_sigmoid_saturates_without_nan_for_huge_ratios() -> None:
    lb = torch.tensor([-1e4], dtype=torch.float32, requires_grad=True)
    ub = torch.tensor([1e-30], dtype=torch.float32, requires_grad=True)
    kappa = KAPPA.evaluate({"l": lb, "u": ub, "gamma": 1.0})
    kappa.sum().backward()
    assert float(kappa.detach()) == pytest.approx(0.0, abs=1e-30)
    assert torch.isfinite(lb.grad).all() and torch.isfinite(ub.grad).all()


def test_printing_is_readable() -> None:
    assert str(LAMBDA) == "λ"
    assert str(-LAMBDA * L) == "-λl"
    assert str(switch(ge(-L, U), 0.0, 1.0)) == "(0 if -l >= u else 1)"


def test_bad_constants_and_variables_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        L + float("nan")
    with pytest.raises(ValueError, match="'l' or 'u'"):
        from relaxlab.core.expr import Var

        Var("x")
    with pytest.raises(TypeError, match="number or an Expr"):
        L + "u"  # type: ignore[operator]
