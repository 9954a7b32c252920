"""Scale invariance: where a relaxation's soundness is proved, and so where it may be evaluated.

A line whose slope is positively homogeneous of degree 0 in ``(l, u)`` and whose offset is of
degree 1 satisfies ``g(s·l, s·u) = s·g(l, u)`` for its gap ``g`` to the ReLU: proving it on
``max(|l|, |u|) = 1`` proves it at every scale (:mod:`relaxlab.properties.prover`). Any other
line is proved on ``|l|, |u| <= BOUNDED_DOMAIN`` only, and :mod:`relaxlab.core.evaluate` refuses
to evaluate a relaxation with such a line (or such a transform) at bounds beyond it.
"""

from __future__ import annotations

from relaxlab.core.expr import Add, Const, Div, Expr, Ge, Mul, Named, Param, Sigmoid, Step, Switch, Var

#: ``|l|, |u| <= BOUNDED_DOMAIN``: where relaxations that are not scale invariant are proved and evaluated.
BOUNDED_DOMAIN = 1e8
#: The homogeneity of 0: every degree.
ANY = "any"

Degree = int | str | None


def homogeneity(expr: Expr) -> Degree:
    """The degree ``k`` with ``e(s·l, s·u) = s**k·e(l, u)`` for all ``s > 0``; ``"any"`` for 0; ``None``.

    Parameters do not scale. Conditions only need a sign that scaling keeps (a margin of any degree).
    """
    if isinstance(expr, Const):
        return ANY if expr.value == 0.0 else 0
    if isinstance(expr, Param):
        return 0
    if isinstance(expr, Var):
        return 1
    if isinstance(expr, Named):
        return homogeneity(expr.body)
    if isinstance(expr, Add):
        return same_degree(homogeneity(expr.left), homogeneity(expr.right))
    if isinstance(expr, Mul):
        a, b = homogeneity(expr.left), homogeneity(expr.right)
        if a == ANY or b == ANY:
            return ANY
        return None if a is None or b is None else int(a) + int(b)
    if isinstance(expr, Div):
        a, b = homogeneity(expr.numerator), homogeneity(expr.denominator)
        if a is None or b is None or b == ANY:
            return None
        return ANY if a == ANY else int(a) - int(b)
    if isinstance(expr, (Sigmoid, Step)):
        return 0 if homogeneity(expr.arg) in (0, ANY) else None
    if isinstance(expr, Ge):
        return 0 if same_degree(homogeneity(expr.left), homogeneity(expr.right)) is not None else None
    if isinstance(expr, Switch):
        if homogeneity(expr.condition) is None:
            return None
        return same_degree(homogeneity(expr.then), homogeneity(expr.otherwise))
    return None  # opaque


def same_degree(a: Degree, b: Degree) -> Degree:
    """The degree of a sum of terms of degrees ``a`` and ``b`` (``None`` if they differ)."""
    if a is None or b is None:
        return None
    if a == ANY:
        return b
    if b == ANY or a == b:
        return a
    return None


def line_is_scale_invariant(slope: Expr, offset: Expr) -> bool:
    """A slope of degree 0 and an offset of degree 1 (either may be 0)."""
    return homogeneity(slope) in (0, ANY) and homogeneity(offset) in (1, ANY)


def transform_is_scale_invariant(lower: Expr, upper: Expr) -> bool:
    """Both ends of degree 1 (or 0)."""
    return all(homogeneity(e) in (1, ANY) for e in (lower, upper))
