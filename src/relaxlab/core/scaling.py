"""Scale invariance: where a relaxation's soundness is proved, and so where it may be evaluated.

A line whose slope is positively homogeneous of degree 0 in ``(l, u)`` and whose offset is of
degree 1 satisfies ``g(s·l, s·u) = s·g(l, u)`` for its gap ``g`` to the ReLU: proving it on
``max(|l|, |u|) = 1`` proves it at every scale (:mod:`relaxlab.properties.prover`). Any other
line is proved on ``|l|, |u| <= BOUNDED_DOMAIN`` only, and :mod:`relaxlab.core.evaluate` refuses
to evaluate a relaxation with such a line (or such a transform) at bounds beyond it.
"""

from __future__ import annotations

from relaxlab.core import expr as ex

#: ``|l|, |u| <= BOUNDED_DOMAIN``: where relaxations that are not scale invariant are proved and evaluated.
BOUNDED_DOMAIN = 1e8
#: The homogeneity of 0: every degree.
ANY = "any"

Degree = int | str | None


class Homogeneity(ex.Interpretation[Degree]):
    """The degree ``k`` with ``e(s·l, s·u) = s**k·e(l, u)`` for all ``s > 0``; ``"any"`` for 0; ``None``.

    Parameters do not scale. Conditions only need a sign that scaling keeps (a margin of any degree).
    """

    def const(self, node: ex.Const) -> Degree:
        return ANY if node.value == 0.0 else 0

    def var(self, node: ex.Var) -> Degree:
        return 1

    def param(self, node: ex.Param) -> Degree:
        return 0

    def add(self, node: ex.Add) -> Degree:
        return same_degree(self(node.left), self(node.right))

    def mul(self, node: ex.Mul) -> Degree:
        a, b = self(node.left), self(node.right)
        if a == ANY or b == ANY:
            return ANY
        return None if a is None or b is None else int(a) + int(b)

    def div(self, node: ex.Div) -> Degree:
        a, b = self(node.numerator), self(node.denominator)
        if a is None or b is None or b == ANY:
            return None
        return ANY if a == ANY else int(a) - int(b)

    def _of_argument(self, node: ex.Sigmoid | ex.Step) -> Degree:
        return 0 if self(node.arg) in (0, ANY) else None

    sigmoid = step = _of_argument

    def ge(self, node: ex.Ge) -> Degree:
        return 0 if same_degree(self(node.left), self(node.right)) is not None else None

    def switch(self, node: ex.Switch) -> Degree:
        if self(node.condition) is None:
            return None
        return same_degree(self(node.then), self(node.otherwise))

    def named(self, node: ex.Named) -> Degree:
        return self(node.body)

    def opaque(self, node: ex.Opaque) -> Degree:
        return None


homogeneity = Homogeneity()


def same_degree(a: Degree, b: Degree) -> Degree:
    """The degree of a sum of terms of degrees ``a`` and ``b`` (``None`` if they differ)."""
    if a is None or b is None:
        return None
    if a == ANY:
        return b
    if b == ANY or a == b:
        return a
    return None


def line_is_scale_invariant(slope: ex.Expr, offset: ex.Expr) -> bool:
    """A slope of degree 0 and an offset of degree 1 (either may be 0)."""
    return homogeneity(slope) in (0, ANY) and homogeneity(offset) in (1, ANY)


def transform_is_scale_invariant(lower: ex.Expr, upper: ex.Expr) -> bool:
    """Both ends of degree 1 (or 0)."""
    return all(homogeneity(e) in (1, ANY) for e in (lower, upper))
