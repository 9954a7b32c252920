"""Named lines and coefficients shared by many relaxations (the paper's vocabulary).

``λ = u/(u-l)`` is DeepZ's/CROWN's chord slope; ``κ = σ(γ(l/u - u/l))`` the soft
slope of DeepZ-Soft and CROWN-Soft. Lines are written as in App. H of the paper,
with ``x`` the ReLU input.
"""

from __future__ import annotations

from relaxlab.core.expr import Expr, Ge, L, Named, Param, U, ge, sigmoid, switch
from relaxlab.core.relaxation import CaseBounds, Line, ParamSpec, line

#: The chord slope ``λ = u/(u-l)``.
LAMBDA: Expr = Named("λ", U / (U - L))
#: The soft slope ``κ = σ(γ(l/u - u/l))``.
KAPPA: Expr = Named("κ", sigmoid(Param("gamma") * (L / U - U / L)))
GAMMA = ParamSpec("gamma", 1.0, minimum=0.0, strict=True, description="sharpness γ of the soft switch κ")

#: CROWN's heuristic: the box-like choice where ``-l >= u``.
CROWN_HEURISTIC = ge(-L, U)

ZERO = line(0.0, 0.0)  # 0
IDENTITY = line(1.0, 0.0)  # x
LOWER = line(0.0, L)  # l
UPPER = line(0.0, U)  # u
SHIFTED = line(1.0, -L)  # x - l
CHORD_LOW = line(LAMBDA, 0.0)  # λx
CHORD = line(LAMBDA, -LAMBDA * L)  # λx - λl   (through (l, 0) and (u, u))
CHORD_TOP = line(LAMBDA, U - LAMBDA * U)  # λx + u - λu (the same line, written through (u, u))

EXACT_NEGATIVE = CaseBounds(ZERO, ZERO)
EXACT_POSITIVE = CaseBounds(IDENTITY, IDENTITY)


def switch_line(condition: Ge, then: Line, otherwise: Line) -> Line:
    """The line ``then`` where ``condition`` holds, else ``otherwise`` (coefficient-wise switch)."""
    return Line(
        switch(condition, then.slope, otherwise.slope), switch(condition, then.offset, otherwise.offset)
    )
