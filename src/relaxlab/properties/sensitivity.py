"""Sensitivity of a relaxation: do its bounds stay polynomial of degree 1 in ``(l, u)``?

Judged piece by piece (DESIGN.md §1): where switches or floor/ceil split the
``(l, u)`` domain, a slope constant on each piece and an offset affine on each
piece keep the bounds of degree 1; a slope that varies with ``l, u`` inside a
piece (``λ``, ``κ``), or an offset that is not affine there, makes the
relaxation *sensitive* (Sec. 4.3 of the paper).

- :func:`derive_sensitivity` reads the declared expressions (transform
  substituted) with :meth:`~relaxlab.core.expr.Expr.degree`;
- :func:`probe_sensitivity` measures: first differences of slopes and second
  differences of offsets at interior points of each piece, black-box.
"""

from __future__ import annotations

import torch
from attrs import frozen

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.stability import Stability

#: Differences larger than this (relative) mean "varies"; float64 rounding is ~1e-16.
VARIATION_TOLERANCE = 1e-8


@frozen
class SensitivityReason:
    """Why a line makes the relaxation sensitive."""

    case: str
    side: str  # "lower" or "upper"
    part: str  # "slope" or "offset"
    detail: str

    def __str__(self) -> str:
        return f"{self.case} {self.side} {self.part}: {self.detail}"


def derive_sensitivity(relaxation: ReluRelaxation) -> list[SensitivityReason] | None:
    """Reasons the declared lines are sensitive (empty: not sensitive; ``None``: opaque, unknown)."""
    reasons: list[SensitivityReason] = []
    for stability in Stability:
        case = relaxation.effective_case(stability)
        for side, line in (("lower", case.lower), ("upper", case.upper)):
            slope_degree, offset_degree = line.slope.degree(), line.offset.degree()
            if slope_degree is None or offset_degree is None:
                return None
            if slope_degree >= 1:
                kind = "a polynomial" if slope_degree != float("inf") else "a non-polynomial function"
                reasons.append(SensitivityReason(str(stability), side, "slope",
                                                 f"{line.slope} is {kind} of l, u within a piece"))
            if offset_degree >= 2:
                reasons.append(SensitivityReason(str(stability), side, "offset",
                                                 f"{line.offset} is not affine in l, u within a piece"))
    return reasons


def _interior_points(stability: Stability, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = 0.1 + 5 * torch.rand(count, generator=gen, dtype=torch.float64)
    b = 0.1 + 5 * torch.rand(count, generator=gen, dtype=torch.float64)
    if stability is Stability.NEGATIVE:
        return -(a + b), -b
    if stability is Stability.POSITIVE:
        return a, a + b
    return -a, b


def probe_sensitivity(relaxation: ReluRelaxation, count: int = 200, step: float = 1e-3) -> list[SensitivityReason]:
    """Measured reasons: a slope that changes, or an offset that bends, inside a piece.

    Uses only :meth:`coefficients`. Points are drawn inside each case (raw bounds);
    stencils that cross a piece boundary (a switch or step) are skipped, detected
    by comparing the one-sided differences of the stencil.
    """
    reasons: list[SensitivityReason] = []
    for stability in Stability:
        lb, ub = _interior_points(stability, count, seed=list(Stability).index(stability))
        found: dict[tuple[str, str], str] = {}
        for direction in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
            dl, du = step * direction[0], step * direction[1]
            triple = [list(relaxation.coefficients(lb + k * dl, ub + k * du)) for k in (-1, 0, 1)]
            # A piece boundary inside the stencil shows as one one-sided difference much bigger than
            # the other in some coefficient; such stencils say nothing about one piece: skip them.
            inside = torch.ones_like(lb, dtype=torch.bool)
            for index in range(4):
                minus, centre, plus = (t[index] for t in triple)
                scale = 1.0 + centre.abs()
                back, fwd = (centre - minus).abs(), (plus - centre).abs()
                inside &= (back <= 10 * fwd + 1e-12 * scale) & (fwd <= 10 * back + 1e-12 * scale)
            for index, (side, part) in enumerate((("lower", "slope"), ("lower", "offset"),
                                                  ("upper", "slope"), ("upper", "offset"))):
                minus, centre, plus = (t[index] for t in triple)
                scale = 1.0 + centre.abs()
                if part == "slope":
                    change = torch.maximum((centre - minus).abs(), (plus - centre).abs())
                else:
                    change = (plus + minus - 2 * centre).abs()
                varies = inside & (change > VARIATION_TOLERANCE * scale)
                if bool(varies.any()) and (side, part) not in found:
                    i = int(varies.nonzero()[0, 0])
                    what = "changes" if part == "slope" else "bends"
                    found[(side, part)] = f"{what} near l={float(lb[i]):.3g}, u={float(ub[i]):.3g}"
        reasons.extend(SensitivityReason(str(stability), side, part, detail)
                       for (side, part), detail in found.items())
    return reasons
