"""Exact rational normal forms of expressions, and their enclosures over boxes.

Interval arithmetic on an expression tree loses every dependency between equal
sub-terms: ``λu - λl - u`` with ``λ = u/(u-l)`` is identically 0 but encloses to an
interval as wide as the box. The soundness prover therefore first brings an expression
into a normal form where such cancellations happen exactly:

- a :class:`Rational` is ``num/den`` with ``num`` and ``den`` polynomials (exact
  :class:`fractions.Fraction` coefficients) in *variables*: ``l``, ``u``, the parameters,
  and *atoms* for the non-rational nodes: ``σ(a)`` for a sigmoid, and for
  ``floor(a)`` / ``ceil(a)`` the fractional parts ``a - floor(a)`` / ``ceil(a) - a`` (so
  ``⌈Fl⌉ - Fl`` becomes one atom with values in ``[0, 1]``);
- switches are resolved by an *assignment* (which side of every condition holds), chosen
  by the caller;
- a denominator that divides its numerator exactly is cancelled (polynomial division).

:meth:`Symbolic.enclose` gives a sound enclosure of a normal form over a box (intervals
per variable; atoms are enclosed from their arguments), evaluating each polynomial in
several forms (monomial sum, and Horner in each variable) and intersecting them, all
with the outward rounding of :mod:`relaxlab.core.interval`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

from relaxlab.core import interval as iv
from relaxlab.core.expr import (
    Add,
    Const,
    Div,
    Expr,
    Ge,
    Mul,
    Named,
    Opaque,
    Param,
    Sigmoid,
    Step,
    Switch,
    Var,
)
from relaxlab.core.interval import Bounds

#: A monomial: ``((variable, exponent), ...)`` sorted by variable, exponents >= 1.
Monomial = tuple[tuple[int, int], ...]
#: A polynomial: monomial -> non-zero exact coefficient.
Poly = dict[Monomial, Fraction]

ONE_MONOMIAL: Monomial = ()
#: Variable indices of the bounds; parameters follow, then atoms.
L_INDEX, U_INDEX = 0, 1
_DIVISION_STEPS = 400
ATOM_KINDS = ("sigmoid", "frac_floor", "frac_ceil")


class NotRational(ValueError):
    """The expression has no normal form here (an opaque callable, a division by exactly 0)."""


# -- polynomials ---------------------------------------------------------------------------------


def constant(value: Fraction | float | int) -> Poly:
    value = Fraction(value)
    return {ONE_MONOMIAL: value} if value else {}


def variable(index: int) -> Poly:
    return {((index, 1),): Fraction(1)}


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    if not a:
        return b
    if not b:
        return a
    exps = dict(a)
    for var, exp in b:
        exps[var] = exps.get(var, 0) + exp
    return tuple(sorted(exps.items()))


def _mono_div(a: Monomial, b: Monomial) -> Monomial | None:
    """``a/b`` when ``b`` divides ``a``, else ``None``."""
    exps = dict(a)
    for var, exp in b:
        have = exps.get(var, 0)
        if have < exp:
            return None
        if have == exp:
            del exps[var]
        else:
            exps[var] = have - exp
    return tuple(sorted(exps.items()))


def _lex(m: Monomial) -> tuple[tuple[int, int], ...]:
    """Lexicographic order key, variable 0 most significant."""
    return tuple((-var, exp) for var, exp in m)


def _accumulate(out: Poly, mono: Monomial, value: Fraction) -> None:
    """``out[mono] += value``, dropping the monomial when its coefficient becomes 0."""
    total = out.get(mono, 0) + value
    if total:
        out[mono] = total
    else:
        out.pop(mono, None)


def poly_add(a: Poly, b: Poly, factor: Fraction = Fraction(1)) -> Poly:
    """``a + factor·b``."""
    out = dict(a)
    for mono, coef in b.items():
        _accumulate(out, mono, factor * coef)
    return out


def poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            _accumulate(out, _mono_mul(ma, mb), ca * cb)
    return out


def poly_scale(a: Poly, factor: Fraction) -> Poly:
    return {m: c * factor for m, c in a.items()} if factor else {}


def constant_value(a: Poly) -> Fraction | None:
    """The value of a constant polynomial, else ``None``."""
    if not a:
        return Fraction(0)
    if len(a) == 1 and ONE_MONOMIAL in a:
        return a[ONE_MONOMIAL]
    return None


def divide_exact(a: Poly, b: Poly) -> Poly | None:
    """``a/b`` when ``b`` divides ``a`` exactly (multivariate division, lex order), else ``None``."""
    if not b:
        return None
    lead = max(b, key=_lex)
    lead_coef = b[lead]
    rest = dict(a)
    quotient: Poly = {}
    for _ in range(_DIVISION_STEPS):
        if not rest:
            return quotient
        top = max(rest, key=_lex)
        mono = _mono_div(top, lead)
        if mono is None:
            return None
        coef = rest[top] / lead_coef
        quotient[mono] = quotient.get(mono, 0) + coef
        rest = poly_add(rest, poly_mul({mono: coef}, b), Fraction(-1))
    return None


def variables_of(a: Poly) -> frozenset[int]:
    return frozenset(var for mono in a for var, _ in mono)


def split_affine(a: Poly, var: int) -> tuple[Poly, Poly] | None:
    """``(a1, a0)`` with ``a = a1·var + a0`` and neither mentioning ``var``; ``None`` if not affine in it."""
    a1: Poly = {}
    a0: Poly = {}
    for mono, coef in a.items():
        exps = dict(mono)
        exp = exps.pop(var, 0)
        if exp > 1:
            return None
        (a1 if exp == 1 else a0)[tuple(sorted(exps.items()))] = coef
    return a1, a0


def freeze(a: Poly) -> frozenset[tuple[Monomial, Fraction]]:
    return frozenset(a.items())


# -- rational functions -----------------------------------------------------------------------------


class Rational:
    """``num/den``, polynomials with a monic (leading coefficient 1) denominator."""

    __slots__ = ("num", "den", "_key")

    def __init__(self, num: Poly, den: Poly | None = None) -> None:
        self.num = num
        self.den = den if den is not None else {ONE_MONOMIAL: Fraction(1)}
        self._key: tuple[frozenset[tuple[Monomial, Fraction]], frozenset[tuple[Monomial, Fraction]]] | None = None

    @classmethod
    def make(cls, num: Poly, den: Poly) -> Rational:
        """The normal form of ``num/den``: cancelled where ``den`` divides ``num``, monic denominator."""
        if not den:
            raise NotRational("division by a denominator that is identically 0")
        if not num:
            return cls({})
        value = constant_value(den)
        if value is not None:
            return cls(poly_scale(num, 1 / value))
        quotient = divide_exact(num, den)
        if quotient is not None:
            return cls(quotient)
        lead = den[max(den, key=_lex)]
        if lead != 1:
            num, den = poly_scale(num, 1 / lead), poly_scale(den, 1 / lead)
        return cls(num, den)

    @property
    def key(self) -> tuple[frozenset[tuple[Monomial, Fraction]], frozenset[tuple[Monomial, Fraction]]]:
        """A hashable identity of the normal form."""
        if self._key is None:
            self._key = (freeze(self.num), freeze(self.den))
        return self._key

    def is_polynomial(self) -> bool:
        return constant_value(self.den) == 1

    def is_zero(self) -> bool:
        return not self.num

    def variables(self) -> frozenset[int]:
        return variables_of(self.num) | variables_of(self.den)

    def __add__(self, other: Rational) -> Rational:
        if self.den == other.den:
            return Rational.make(poly_add(self.num, other.num), self.den)
        return Rational.make(poly_add(poly_mul(self.num, other.den), poly_mul(other.num, self.den)),
                             poly_mul(self.den, other.den))

    def __neg__(self) -> Rational:
        return Rational(poly_scale(self.num, Fraction(-1)), self.den)

    def __sub__(self, other: Rational) -> Rational:
        return self + (-other)

    def __mul__(self, other: Rational) -> Rational:
        if not self.num or not other.num:
            return Rational({})
        # cross-cancel first: λ·(u - l) with λ = u/(u - l) is u, not u(u - l)/(u - l)
        left_num, right_den = _cancel(self.num, other.den)
        right_num, left_den = _cancel(other.num, self.den)
        return Rational.make(poly_mul(left_num, right_num), poly_mul(left_den, right_den))

    def reciprocal(self) -> Rational:
        if not self.num:
            raise NotRational("division by an expression that is identically 0")
        return Rational.make(self.den, self.num)

    def __truediv__(self, other: Rational) -> Rational:
        return self * other.reciprocal()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rational) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Rational({self.num!r}, {self.den!r})"


def _cancel(num: Poly, den: Poly) -> tuple[Poly, Poly]:
    if constant_value(den) is not None:
        return num, den
    quotient = divide_exact(num, den)
    if quotient is not None:
        return quotient, {ONE_MONOMIAL: Fraction(1)}
    return num, den


def rational_constant(value: float | Fraction) -> Rational:
    return Rational(constant(value))


def rational_variable(index: int) -> Rational:
    return Rational(variable(index))


# -- enclosures of polynomials ---------------------------------------------------------------------


def _coefficient_bounds(coef: Fraction) -> Bounds:
    value = float(coef)
    if Fraction(value) == coef:
        return (value, value)
    return (iv.down(value), iv.up(value))


class _CompiledPoly:
    """A polynomial prepared for repeated enclosure: its terms, and its Horner groupings."""

    __slots__ = ("terms", "groups", "constant", "sign")

    def __init__(self, poly: Poly) -> None:
        self.sign: int | None = None  # known sign on the whole domain, if any
        self.terms = [(_coefficient_bounds(c), m) for m, c in poly.items()]
        value = constant_value(poly)
        self.constant = None if value is None else _coefficient_bounds(value)
        self.groups: list[tuple[int, list[tuple[int, list[tuple[Bounds, Monomial]]]]]] = []
        if len(self.terms) > 1:
            for var in sorted(variables_of(poly)):
                by_power: dict[int, list[tuple[Bounds, Monomial]]] = {}
                for coef, mono in self.terms:
                    exps = dict(mono)
                    power = exps.pop(var, 0)
                    by_power.setdefault(power, []).append((coef, tuple(sorted(exps.items()))))
                if len(by_power) > 1 or 0 not in by_power:
                    self.groups.append((var, sorted(by_power.items())))

    def enclose(self, box: Sequence[Bounds]) -> Bounds:
        """Monomial sum ∩ Horner in each variable ∩ (degree >= 2) Taylor shift to the box's lower corner."""
        if self.constant is not None:
            return self.constant
        best = _sum_terms(self.terms, box)
        for var, by_power in self.groups:
            total: Bounds = (0.0, 0.0)
            inner_bounds = []
            for power, terms in by_power:
                inner = _sum_terms(terms, box)
                inner_bounds.append((power, inner))
                total = iv.add(total, inner if power == 0 else iv.mul(iv.power(box[var], power), inner))
            best = iv.intersect(best, total)
            if by_power[-1][0] >= 2:
                best = iv.intersect(best, _shifted(inner_bounds, box[var]))
        return best


def _shifted(coefficients: Sequence[tuple[int, Bounds]], var: Bounds) -> Bounds:
    """``Σ c_k·v**k`` over ``v ∈ var``, as a polynomial in ``t = v - lo ∈ [0, hi - lo]``.

    Near a double root (``(1 - l)**2`` close to ``l = 1``) the expanded form cancels badly;
    shifted to the lower corner the coefficients say what the polynomial does on the box.
    """
    lo, hi = var
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return iv.WHOLE
    degree = coefficients[-1][0]
    c: list[Bounds] = [(0.0, 0.0)] * (degree + 1)
    for power, bounds in coefficients:
        c[power] = bounds
    for i in range(degree):  # Ruffini-Horner: coefficients of p(t + lo)
        for j in range(degree - 1, i - 1, -1):
            c[j] = iv.add(c[j], iv.scale(lo, c[j + 1]))
    t = (0.0, iv.sum_up(hi, -lo))
    total: Bounds = c[0]
    for power in range(1, degree + 1):
        total = iv.add(total, iv.mul(c[power], iv.power(t, power)))
    return total


def _sum_terms(terms: Iterable[tuple[Bounds, Monomial]], box: Sequence[Bounds]) -> Bounds:
    total: Bounds = (0.0, 0.0)
    for coef, mono in terms:
        value = coef
        for var, exp in mono:
            factor = box[var] if exp == 1 else iv.power(box[var], exp)
            value = iv.mul(value, factor)
        total = iv.add(total, value)
    return total


# -- expressions to normal forms ----------------------------------------------------------------------


class Symbolic:
    """Normal forms of expressions over a fixed set of variables, with a shared table of atoms.

    :param params: parameter names; they get the variable indices ``2, 3, ...`` in this order.
    """

    def __init__(self, params: Sequence[str], nonnegative: Iterable[Poly] = ()) -> None:
        self.params = tuple(params)
        #: Polynomials known to be >= 0 on the whole domain (``u - l``), by their monic form: the sign
        #: of the monic form. Enclosures of any multiple of one are clipped at 0.
        self._signs: dict[object, int] = {}
        for poly in nonnegative:
            monic, lead = _monic(poly)
            self._signs[monic] = 1 if lead > 0 else -1
        self.param_index = {name: 2 + i for i, name in enumerate(self.params)}
        #: ``(kind, argument)`` of every atom, in creation order (arguments only use earlier atoms).
        self.atoms: list[tuple[str, Rational]] = []
        self._atom_index: dict[tuple[str, object], int] = {}
        self._compiled: dict[object, _CompiledPoly] = {}

    @property
    def base_size(self) -> int:
        """Number of non-atom variables (``l``, ``u``, parameters)."""
        return 2 + len(self.params)

    def atom(self, kind: str, argument: Rational) -> int:
        key = (kind, argument.key)
        if key not in self._atom_index:
            self._atom_index[key] = self.base_size + len(self.atoms)
            self.atoms.append((kind, argument))
        return self._atom_index[key]

    def base_variables(self, variables: Iterable[int]) -> frozenset[int]:
        """The non-atom variables behind ``variables`` (an atom stands for those of its argument)."""
        out: set[int] = set()
        todo = list(variables)
        while todo:
            var = todo.pop()
            if var < self.base_size:
                out.add(var)
            else:
                todo.extend(self.atoms[var - self.base_size][1].variables())
        return frozenset(out)

    def convert(self, expr: Expr, bounds: Mapping[str, Rational],
                assignment: Mapping[Ge, bool] | None = None) -> Rational:
        """The normal form of ``expr`` with ``l``/``u`` replaced by ``bounds`` and switches resolved.

        :param bounds: normal forms for ``"l"`` and ``"u"``.
        :param assignment: the truth of every condition of a switch in ``expr``.
        :raises NotRational: for opaque callables and divisions by exactly 0.
        :raises KeyError: for a condition missing from ``assignment``.
        """
        return self._convert(expr, bounds, assignment or {}, {})

    def _convert(self, expr: Expr, bounds: Mapping[str, Rational], assignment: Mapping[Ge, bool],
                 memo: dict[int, Rational]) -> Rational:
        if isinstance(expr, Const):
            return rational_constant(expr.value)
        if isinstance(expr, Var):
            return bounds[expr.name]
        if isinstance(expr, Param):
            return rational_variable(self.param_index[expr.name])
        if isinstance(expr, Add):
            return self._convert(expr.left, bounds, assignment, memo) + self._convert(expr.right, bounds, assignment, memo)
        if isinstance(expr, Mul):
            return self._convert(expr.left, bounds, assignment, memo) * self._convert(expr.right, bounds, assignment, memo)
        if isinstance(expr, Div):
            num = self._convert(expr.numerator, bounds, assignment, memo)
            return num / self._convert(expr.denominator, bounds, assignment, memo)
        if isinstance(expr, Named):
            key = id(expr)
            if key not in memo:
                memo[key] = self._convert(expr.body, bounds, assignment, memo)
            return memo[key]
        if isinstance(expr, Sigmoid):
            argument = self._convert(expr.arg, bounds, assignment, memo)
            if argument.is_zero():
                return rational_constant(Fraction(1, 2))  # σ(0) = 1/2 exactly
            return rational_variable(self.atom("sigmoid", argument))
        if isinstance(expr, Step):
            argument = self._convert(expr.arg, bounds, assignment, memo)
            if expr.kind == "floor":
                return argument - rational_variable(self.atom("frac_floor", argument))
            return argument + rational_variable(self.atom("frac_ceil", argument))
        if isinstance(expr, Switch):
            branch = expr.then if assignment[expr.condition] else expr.otherwise
            return self._convert(branch, bounds, assignment, memo)
        if isinstance(expr, Ge):
            return rational_constant(1.0 if assignment[expr] else 0.0)
        if isinstance(expr, Opaque):
            raise NotRational(f"opaque callable {expr.name}")
        raise NotRational(f"no normal form for {type(expr).__name__} nodes")

    # -- enclosures --------------------------------------------------------------------------------
    def complete(self, box: Sequence[Bounds]) -> list[Bounds]:
        """``box`` (intervals of ``l``, ``u``, parameters) extended by the enclosures of all atoms."""
        full = list(box[: self.base_size])
        for kind, argument in self.atoms:
            full.append(_atom_bounds(kind, self.enclose(argument, full)))
        return full

    def enclose(self, value: Rational, box: Sequence[Bounds], *, facts: bool = True) -> Bounds:
        """A sound enclosure of ``value`` over a completed box (see :meth:`complete`).

        :param facts: clip multiples of the ``nonnegative`` polynomials at 0: sound for the points
            of the box inside the domain, which are the only ones that matter (``False`` to tell
            whether a box meets the domain at all).
        """
        num = self._enclose_poly(value.num, box, facts)
        if value.is_polynomial():
            return num
        return iv.div(num, self._enclose_poly(value.den, box, facts))

    def _enclose_poly(self, poly: Poly, box: Sequence[Bounds], facts: bool = True) -> Bounds:
        key = freeze(poly)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _CompiledPoly(poly)
            if self._signs and compiled.constant is None:
                monic, lead = _monic(poly)
                sign = self._signs.get(monic)
                compiled.sign = None if sign is None else (sign if lead > 0 else -sign)
        bounds = compiled.enclose(box)
        if not facts:
            return bounds
        if compiled.sign == 1:
            return (max(bounds[0], 0.0), max(bounds[1], 0.0))
        if compiled.sign == -1:
            return (min(bounds[0], 0.0), min(bounds[1], 0.0))
        return bounds


def _monic(poly: Poly) -> tuple[frozenset[tuple[Monomial, Fraction]], Fraction]:
    """``(monic form, leading coefficient)``: ``poly = lead · monic``."""
    lead = poly[max(poly, key=_lex)]
    return freeze(poly_scale(poly, 1 / lead)), lead


def _atom_bounds(kind: str, argument: Bounds) -> Bounds:
    if kind == "sigmoid":
        return iv.sigmoid(argument)
    lo, hi = argument
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (0.0, 1.0)
    if kind == "frac_floor":  # a - floor(a)
        k = math.floor(lo)
        if math.floor(hi) != k:
            return (0.0, 1.0)
        return (max(0.0, iv.sum_down(lo, -k)), min(1.0, iv.sum_up(hi, -k)))
    k = math.ceil(lo)  # ceil(a) - a
    if math.ceil(hi) != k:
        return (0.0, 1.0)
    return (max(0.0, iv.sum_down(k, -hi)), min(1.0, iv.sum_up(k, -lo)))
