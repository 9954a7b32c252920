"""The three families added to the non-dominated combinations (Sec. 6 of the paper).

- **switch**: for two results that agree in the stable cases and differ in the
  unstable one, use the first's unstable lines where ``-l >= u`` and the
  second's elsewhere (CROWN's heuristic). The pair is ordered, and only kept,
  when the heuristic is the area-optimal choice between them: the first encloses
  no more area than the second wherever ``-l >= u`` and the second no more
  wherever ``-l <= u``, each strictly somewhere. CROWN (lower 0 / x under the
  chord) and hBox-Switch (hBox's box / hBox-Diag's band) are such pairs: both
  areas cross exactly at ``-l = u``.
- **soft**: each switch made continuous with ``κ = σ(γ(l/u - u/l))``, which
  tends to 0 where ``-l >> u`` and to 1 where ``u >> -l``: the slope of each
  unstable line becomes ``(1-κ)·a + κ·b`` (``a``, ``b`` the two choices' slopes),
  with the tightest sound offset for that slope: 0 for a lower line, and
  ``-s·l`` if ``s >= λ`` else ``u - s·u`` for an upper line (the line pivots at
  ``(l, 0)`` or ``(u, u)`` to stay sound, as DeepZ-Soft does). A side whose two
  lines are the same keeps its line. Requires both slopes in ``[0, 1]``.
- **interval** (R): the same lines with intermediate bounds by interval
  arithmetic, for every result whose slopes are not all zero (for those,
  backsubstitution already is interval arithmetic).
"""

from __future__ import annotations

from typing import Any

import torch
from attrs import evolve

from relaxlab.core.expr import Expr, L, U, ge, switch
from relaxlab.core.lines import CROWN_HEURISTIC, GAMMA, KAPPA, LAMBDA, switch_line
from relaxlab.core.relaxation import CaseBounds, Line, ReluRelaxation
from relaxlab.core.stability import Stability
from relaxlab.properties.tightness import TOLERANCE, case_pairs, line_values, values_equal


def _area_terms(case: CaseBounds, params: dict[str, float]) -> torch.Tensor:
    """Twice the mean gap between upper and lower line over ``[l, u]``, per unstable pair."""
    lower_values = line_values(case.lower, Stability.UNSTABLE, params)
    upper_values = line_values(case.upper, Stability.UNSTABLE, params)
    return (upper_values[:, 0] + upper_values[:, 2]) - (lower_values[:, 0] + lower_values[:, 2])


def switch_order(first: CaseBounds, second: CaseBounds) -> tuple[CaseBounds, CaseBounds] | None:
    """``(then, otherwise)`` when ``-l >= u`` picks the smaller-area choice on each side, else ``None``."""
    lower, upper = case_pairs(Stability.UNSTABLE)
    area_a = (upper - lower) * _area_terms(first, {})
    area_b = (upper - lower) * _area_terms(second, {})
    if not (bool(torch.isfinite(area_a).all()) and bool(torch.isfinite(area_b).all())):
        return None
    tol = TOLERANCE * (1.0 + area_a.abs() + area_b.abs()) * (1.0 + upper - lower)
    left, right = -lower > upper, -lower < upper  # where the heuristic picks "then" / "otherwise"
    for then, other in ((first, second), (second, first)):
        a = area_a if then is first else area_b
        b = area_b if then is first else area_a
        then_ok = bool((a[left] <= b[left] + tol[left]).all()) and bool((a[left] < b[left] - tol[left]).any())
        other_ok = bool((b[right] <= a[right] + tol[right]).all()) and bool(
            (b[right] < a[right] - tol[right]).any()
        )
        if then_ok and other_ok:
            return then, other
    return None


def switch_case(then: CaseBounds, otherwise: CaseBounds) -> CaseBounds:
    """Unstable lines: ``then``'s where ``-l >= u``, else ``otherwise``'s (lines equal numerically are kept)."""
    lines = []
    for a, b in zip(then.lines(), otherwise.lines(), strict=True):
        same = values_equal(
            line_values(a, Stability.UNSTABLE), line_values(b, Stability.UNSTABLE), Stability.UNSTABLE
        )
        lines.append(a if same else switch_line(CROWN_HEURISTIC, a, b))
    return CaseBounds(*lines)


def _slope_in_unit_interval(line: Line) -> bool:
    lower, upper = case_pairs(Stability.UNSTABLE)
    slope = line.slope.evaluate({"l": lower, "u": upper})
    slope = torch.as_tensor(slope, dtype=torch.float64)
    return bool(((slope >= 0) & (slope <= 1)).all())


def soft_slope(a: Expr, b: Expr) -> Expr:
    """``(1-κ)·a + κ·b``."""
    return (1.0 - KAPPA) * a + KAPPA * b


def soft_case(then: CaseBounds, otherwise: CaseBounds) -> CaseBounds | None:
    """The soft switch of two unstable choices, or ``None`` when a slope leaves ``[0, 1]``."""
    params: dict[str, Any] = {"gamma": GAMMA.default}
    lines = []
    for side, a, b in (("lower", then.lower, otherwise.lower), ("upper", then.upper, otherwise.upper)):
        if values_equal(
            line_values(a, Stability.UNSTABLE, params),
            line_values(b, Stability.UNSTABLE, params),
            Stability.UNSTABLE,
        ):
            lines.append(a)
            continue
        if not (_slope_in_unit_interval(a) and _slope_in_unit_interval(b)):
            return None
        slope = soft_slope(a.slope, b.slope)
        if side == "lower":
            lines.append(Line(slope, 0.0))
        else:
            offset = switch(ge(slope, LAMBDA), -slope * L, U - slope * U)
            lines.append(Line(slope, offset))
    return CaseBounds(*lines)


def soft_relaxation(base: ReluRelaxation, unstable: CaseBounds, name: str) -> ReluRelaxation:
    """``base`` with soft unstable lines (declares the sharpness ``gamma``)."""
    return evolve(base, name=name, unstable=unstable, params=(GAMMA,), values=(), summary="", reference="")


def interval_variant(base: ReluRelaxation, name: str) -> ReluRelaxation:
    """``base`` with intermediate bounds by interval arithmetic."""
    return evolve(base, name=name, intermediate="interval")
