"""Interval extension of the expression algebra: sound enclosures over boxes, in floating point.

:func:`enclose` takes an expression of :mod:`relaxlab.core.expr` and a *box* (an interval for
``l``, ``u`` and every parameter the expression uses) and returns an :class:`Interval`
``[lo, hi]`` that contains the expression's value at every point of the box. Sound in floating
point: every end point is rounded outwards (an operation whose result is exact, which
:func:`two_sum` and :func:`two_product` detect, keeps its end point; an inexact one moves it
one ulp out with :func:`math.nextafter`), so the enclosure contains both the real value and
the float64 value that :meth:`~relaxlab.core.expr.Expr.evaluate` computes (Python floats or
float64 tensors; a float32 evaluation rounds beyond any float64 enclosure).

Per node:

- constants, variables, parameters: the point / the box's interval;
- ``+``, ``×``: end-point arithmetic (``0·∞`` is 0: an infinite end point stands for
  "unbounded", never for a value);
- ``÷``: a denominator interval that meets ``[-DIVISION_GUARD, DIVISION_GUARD]`` gives the whole
  line (0 inside it: unbounded; and :class:`~relaxlab.core.expr.Div` replaces denominators
  below ``sqrt(tiny)`` of the dtype, at most ``DIVISION_GUARD``, by a guard whose sign follows
  the zero's sign bit); else end-point quotients. (:func:`div` itself is the real quotient:
  ``1/[0, b] = [1/b, ∞]`` over the box without its pole, which is what
  :mod:`relaxlab.core.rational` needs);
- sigmoid: monotone, end points widened by 1e-15 relative (``exp`` is not correctly rounded)
  and by the ±80 clamp of :class:`~relaxlab.core.expr.Sigmoid` (values below ``σ(-80)`` or
  above ``σ(80)`` widen to 0 or 1);
- floor, ceil: exact on the end points;
- conditions: ``[1, 1]`` or ``[0, 0]`` where decided on the whole box, else ``[0, 1]``
  (:class:`~relaxlab.core.expr.Ge` compares exactly);
- switches: the branch where the condition is decided, else the hull of both branches;
- named sub-expressions: their body (evaluated once per call);
- opaque callables: nothing is known about them, so ``(-∞, ∞)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from attrs import frozen

from relaxlab.core import expr as ex

INF = math.inf
#: ``(lo, hi)`` pairs: the working representation (plain tuples are fast).
Bounds = tuple[float, float]
WHOLE: Bounds = (-INF, INF)
_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitter
_SAFE = 1e145  # |a|, |b| below this: Dekker's product neither overflows nor loses its error term
_TINY = 1e-145
_SIGMOID_CLAMP = 80.0
#: ``sqrt(tiny)`` of float32 (1.08e-19), rounded up: the largest denominator guard of Div in float32/float64.
DIVISION_GUARD = 1.1e-19
_MAX = 1.7976931348623157e308
_SIGMOID_REL = 1e-15


@frozen
class Interval:
    """A closed interval ``[lo, hi]`` of the extended reals (``lo <= hi``)."""

    lo: float
    hi: float

    @classmethod
    def of(cls, value: Interval | Bounds | float) -> Interval:
        """An interval from an interval, a ``(lo, hi)`` pair or a number (a point)."""
        if isinstance(value, Interval):
            return value
        if isinstance(value, tuple):
            return cls(float(value[0]), float(value[1]))
        return cls(float(value), float(value))

    @property
    def bounds(self) -> Bounds:
        return (self.lo, self.hi)

    def contains(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def __add__(self, other: Interval) -> Interval:
        return Interval(*add(self.bounds, other.bounds))

    def __sub__(self, other: Interval) -> Interval:
        return Interval(*sub(self.bounds, other.bounds))

    def __mul__(self, other: Interval) -> Interval:
        return Interval(*mul(self.bounds, other.bounds))

    def __truediv__(self, other: Interval) -> Interval:
        return Interval(*div(self.bounds, other.bounds))

    def __neg__(self) -> Interval:
        return Interval(-self.hi, -self.lo)

    def __str__(self) -> str:
        return f"[{self.lo!r}, {self.hi!r}]"


# -- directed rounding -------------------------------------------------------------------------


def down(value: float) -> float:
    """The next float below ``value`` (infinities and NaN unchanged)."""
    return math.nextafter(value, -INF) if math.isfinite(value) else value


def up(value: float) -> float:
    """The next float above ``value`` (infinities and NaN unchanged)."""
    return math.nextafter(value, INF) if math.isfinite(value) else value


def two_sum(a: float, b: float) -> tuple[float, float]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth; finite inputs)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def two_product(a: float, b: float) -> tuple[float, float]:
    """``(p, e)`` with ``p = fl(a·b)`` and ``a·b = p + e`` exactly (Dekker; moderate magnitudes)."""
    p = a * b
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def sum_down(a: float, b: float) -> float:
    """A lower bound of the real ``a + b``."""
    s = a + b
    if math.isfinite(s):
        _, e = two_sum(a, b)
        return s if e >= 0 else down(s)
    if s != s:  # inf + -inf: the sum of two unbounded ends is unbounded
        return -INF
    return _MAX if s > 0 and math.isfinite(a) and math.isfinite(b) else s


def sum_up(a: float, b: float) -> float:
    """An upper bound of the real ``a + b``."""
    s = a + b
    if math.isfinite(s):
        _, e = two_sum(a, b)
        return s if e <= 0 else up(s)
    if s != s:
        return INF
    return -_MAX if s < 0 and math.isfinite(a) and math.isfinite(b) else s


def _product_error(a: float, b: float, p: float) -> int:
    """The sign of the real ``a·b - p`` for ``p = fl(a·b)`` finite; 2 where it cannot be told."""
    aa, ab = abs(a), abs(b)
    if _TINY < aa < _SAFE and _TINY < ab < _SAFE:
        _, e = two_product(a, b)
        return (e > 0) - (e < 0)
    return 2


def prod_down(a: float, b: float) -> float:
    """A lower bound of the real ``a·b`` (``0·∞`` is 0: an infinite end point means unbounded)."""
    if a == 0.0 or b == 0.0:
        return 0.0
    p = a * b
    if math.isfinite(p):
        return p if _product_error(a, b, p) in (0, 1) else down(p)
    if math.isinf(a) or math.isinf(b):
        return p
    return _MAX if p > 0 else p  # overflow: the real product is finite


def prod_up(a: float, b: float) -> float:
    """An upper bound of the real ``a·b``."""
    if a == 0.0 or b == 0.0:
        return 0.0
    p = a * b
    if math.isfinite(p):
        return p if _product_error(a, b, p) in (0, -1) else up(p)
    if math.isinf(a) or math.isinf(b):
        return p
    return -_MAX if p < 0 else p


# -- operations on (lo, hi) pairs ----------------------------------------------------------------


def add(a: Bounds, b: Bounds) -> Bounds:
    return (sum_down(a[0], b[0]), sum_up(a[1], b[1]))


def neg(a: Bounds) -> Bounds:
    return (-a[1], -a[0])


def sub(a: Bounds, b: Bounds) -> Bounds:
    return (sum_down(a[0], -b[1]), sum_up(a[1], -b[0]))


def mul(a: Bounds, b: Bounds) -> Bounds:
    a0, a1 = a
    b0, b1 = b
    if a0 >= 0.0 and b0 >= 0.0:  # the common case, two products instead of eight
        return (prod_down(a0, b0), prod_up(a1, b1))
    lo = min(prod_down(a0, b0), prod_down(a0, b1), prod_down(a1, b0), prod_down(a1, b1))
    hi = max(prod_up(a0, b0), prod_up(a0, b1), prod_up(a1, b0), prod_up(a1, b1))
    return (lo, hi)


def scale(c: float, a: Bounds) -> Bounds:
    """``c·a`` for a number ``c``."""
    if c >= 0.0:
        return (prod_down(c, a[0]), prod_up(c, a[1]))
    return (prod_down(c, a[1]), prod_up(c, a[0]))


def reciprocal(a: Bounds) -> Bounds:
    """``1/a``; the whole line when ``a`` has 0 inside, a half-line when 0 is an end point."""
    lo, hi = a
    if lo > 0.0 or hi < 0.0:
        return (_quotient(1.0, hi)[0], _quotient(1.0, lo)[1])
    if lo == 0.0 and hi > 0.0:
        return (_quotient(1.0, hi)[0], INF)
    if hi == 0.0 and lo < 0.0:
        return (-INF, _quotient(1.0, lo)[1])
    return WHOLE


def div(a: Bounds, b: Bounds) -> Bounds:
    """``a/b``: end-point quotients where ``b`` excludes 0, else through :func:`reciprocal`."""
    if b[0] > 0.0 or b[1] < 0.0:
        quotients = [_quotient(x, y) for x in a for y in b]
        return (min(q[0] for q in quotients), max(q[1] for q in quotients))
    return mul(a, reciprocal(b))


def guarded_div(a: Bounds, b: Bounds) -> Bounds:
    """``a/b`` as :class:`~relaxlab.core.expr.Div` evaluates it: unbounded where ``b`` meets the guard band."""
    if b[0] <= DIVISION_GUARD and b[1] >= -DIVISION_GUARD:
        return WHOLE
    return div(a, b)


def _quotient(x: float, y: float) -> Bounds:
    """Bounds of the real ``x/y`` for ``y != 0`` (end points of intervals: ``±∞`` means unbounded)."""
    if x == 0.0:
        return (0.0, 0.0)
    if math.isinf(y):
        return (0.0, 0.0) if math.isfinite(x) else WHOLE
    q = x / y
    if math.isinf(x):
        return (q, q)
    if math.isinf(q):  # overflow of a finite quotient
        return (_MAX, INF) if q > 0 else (-INF, -_MAX)
    if _TINY < abs(q) < _SAFE and _TINY < abs(y) < _SAFE and two_product(q, y) == (x, 0.0):
        return (q, q)  # q·y == x exactly: the quotient is exact
    return (down(q), up(q))


def power(a: Bounds, k: int) -> Bounds:
    """``a**k`` for an integer ``k >= 1`` (even powers are non-negative)."""
    if k == 1:
        return a
    lo, hi = a
    if k % 2 == 1 or lo >= 0.0:
        result = a
        for _ in range(k - 1):
            result = mul(result, a)
        return result
    if hi <= 0.0:
        return power((-hi, -lo), k)
    top = power((0.0, max(-lo, hi)), k)
    return (0.0, top[1])


def hull(a: Bounds, b: Bounds) -> Bounds:
    return (min(a[0], b[0]), max(a[1], b[1]))


def intersect(a: Bounds, b: Bounds) -> Bounds:
    """The intersection; callers intersect enclosures of the same value, so it is never empty."""
    return (max(a[0], b[0]), min(a[1], b[1]))


def sigmoid(a: Bounds) -> Bounds:
    """``σ(a)``, containing both the real sigmoid and the clamped one that is evaluated."""
    return (_sigmoid_end(a[0], -1), _sigmoid_end(a[1], 1))


def _sigmoid_end(x: float, direction: int) -> float:
    if x != x:
        return 0.0 if direction < 0 else 1.0
    # the real sigmoid and the clamped one (Sigmoid.evaluate) differ beyond ±80: bound both
    if direction < 0 and x < -_SIGMOID_CLAMP:
        return 0.0
    if direction > 0 and x > _SIGMOID_CLAMP:
        return 1.0
    x = max(-_SIGMOID_CLAMP, min(_SIGMOID_CLAMP, x))
    value = 1.0 / (1.0 + math.exp(-x))
    if direction < 0:
        return max(0.0, down(value * (1.0 - _SIGMOID_REL)))
    return min(1.0, up(value * (1.0 + _SIGMOID_REL)))


def floor_bounds(a: Bounds) -> Bounds:
    return (
        float(math.floor(a[0])) if math.isfinite(a[0]) else a[0],
        float(math.floor(a[1])) if math.isfinite(a[1]) else a[1],
    )


def ceil_bounds(a: Bounds) -> Bounds:
    return (
        float(math.ceil(a[0])) if math.isfinite(a[0]) else a[0],
        float(math.ceil(a[1])) if math.isfinite(a[1]) else a[1],
    )


def decide(left: Bounds, right: Bounds) -> bool | None:
    """Whether ``left >= right`` holds on the whole box (``True``), nowhere (``False``) or is open."""
    if left[0] >= right[1]:
        return True
    if left[1] < right[0]:
        return False
    return None


# -- the interval extension of expressions --------------------------------------------------------


def enclose(expr: ex.Expr, box: Mapping[str, Interval | Bounds | float]) -> Interval:
    """A sound enclosure of ``expr`` over ``box``.

    :param expr: any expression of :mod:`relaxlab.core.expr`.
    :param box: an interval (or ``(lo, hi)`` pair, or a number) for ``"l"``, ``"u"`` and
        every parameter the expression uses.
    :raises KeyError: for a variable or parameter missing from ``box``.
    """
    bounds = {name: Interval.of(value).bounds for name, value in box.items()}
    return Interval(*Enclosure(bounds)(expr))


def enclose_bounds(expr: ex.Expr, box: Mapping[str, Bounds], memo: dict[int, Bounds]) -> Bounds:
    """:func:`enclose` on ``(lo, hi)`` pairs; ``memo`` holds named sub-expressions by node."""
    return Enclosure(box, memo)(expr)


class Enclosure(ex.Interpretation[Bounds]):
    """The interval extension: a sound ``(lo, hi)`` of each node over ``box`` (see the module docstring).

    :param box: ``(lo, hi)`` of ``"l"``, ``"u"`` and the parameters.
    :param memo: enclosures of named sub-expressions, by node (for one box).
    """

    def __init__(self, box: Mapping[str, Bounds], memo: dict[int, Bounds] | None = None) -> None:
        self.box = box
        self.memo = {} if memo is None else memo

    def const(self, node: ex.Const) -> Bounds:
        return (node.value, node.value)

    def var(self, node: ex.Var) -> Bounds:
        return self._named(node.name)

    def param(self, node: ex.Param) -> Bounds:
        return self._named(node.name)

    def _named(self, name: str) -> Bounds:
        try:
            return self.box[name]
        except KeyError:
            raise KeyError(f"no interval for {name!r} in the box") from None

    def add(self, node: ex.Add) -> Bounds:
        return add(self(node.left), self(node.right))

    def mul(self, node: ex.Mul) -> Bounds:
        if isinstance(node.left, ex.Const):
            return scale(node.left.value, self(node.right))
        return mul(self(node.left), self(node.right))

    def div(self, node: ex.Div) -> Bounds:
        return guarded_div(self(node.numerator), self(node.denominator))

    def sigmoid(self, node: ex.Sigmoid) -> Bounds:
        return sigmoid(self(node.arg))

    def step(self, node: ex.Step) -> Bounds:
        inner = self(node.arg)
        return floor_bounds(inner) if node.kind == "floor" else ceil_bounds(inner)

    def _decide(self, condition: ex.Ge) -> bool | None:
        # Ge.evaluate compares exactly (a number is never rounded against a tensor)
        return decide(self(condition.left), self(condition.right))

    def ge(self, node: ex.Ge) -> Bounds:
        verdict = self._decide(node)
        return (0.0, 1.0) if verdict is None else ((1.0, 1.0) if verdict else (0.0, 0.0))

    def switch(self, node: ex.Switch) -> Bounds:
        verdict = self._decide(node.condition)
        if verdict is True:
            return self(node.then)
        if verdict is False:
            return self(node.otherwise)
        return hull(self(node.then), self(node.otherwise))

    def named(self, node: ex.Named) -> Bounds:
        key = id(node)  # the nodes outlive the memo: it lives for one box
        if key not in self.memo:
            self.memo[key] = self(node.body)
        return self.memo[key]

    def opaque(self, node: ex.Opaque) -> Bounds:
        return WHOLE


__all__ = [
    "Interval",
    "enclose",
    "enclose_bounds",
    "down",
    "up",
    "two_sum",
    "two_product",
    "add",
    "sub",
    "mul",
    "div",
    "guarded_div",
    "neg",
    "scale",
    "reciprocal",
    "power",
    "hull",
    "intersect",
    "sigmoid",
    "floor_bounds",
    "ceil_bounds",
    "decide",
    "WHOLE",
    "DIVISION_GUARD",
]
