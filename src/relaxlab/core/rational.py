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

**Floating-point models.** With an :class:`~relaxlab.core.rounding.Arithmetic`, a
:class:`Symbolic` gives the normal form of an expression *as the evaluator computes it* in that
arithmetic rather than of its real value: every rounded operation multiplies its exact result by
``1 + δ`` with an atom ``δ ∈ [-unit, unit]`` (one per distinct exact result: the same value always rounds
the same way), constants are their float values, a division by a tensor is multiplied by ``1 + γ``, an atom
``γ = |d|/max(|d|, guard) - 1`` (0 wherever the denominator ``d`` is clear of the guard of
:class:`~relaxlab.core.expr.Div`), and the arguments of sigmoids and floors also get a second
form that divides by the guarded denominator ``copysign(max(|d|, guard), d)`` as an atom (bounded
where the first form is not; an atom is enclosed by both); sigmoids are atoms of the computed argument
widened by the library's error, floor and ceil are exact. Which operations round where follows
:meth:`~relaxlab.core.expr.Expr.evaluate`: an operation on ``l`` or ``u`` (a tensor) rounds in
the arithmetic, one on numbers only (parameters, constants) in float64, and a number meeting a
tensor is first rounded to the arithmetic; conditions compare exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

from relaxlab.core import expr as ex
from relaxlab.core import interval as iv
from relaxlab.core.interval import Bounds
from relaxlab.core.rounding import FLOAT64, Arithmetic

#: A monomial: ``((variable, exponent), ...)`` sorted by variable, exponents >= 1.
Monomial = tuple[tuple[int, int], ...]
#: A polynomial: monomial -> non-zero exact coefficient.
Poly = dict[Monomial, Fraction]
#: A polynomial as a hashable value (:func:`freeze`).
FrozenPoly = frozenset[tuple[Monomial, Fraction]]

ONE_MONOMIAL: Monomial = ()
#: Variable indices of the bounds; parameters follow, then atoms.
L_INDEX, U_INDEX = 0, 1
_DIVISION_STEPS = 400
ATOM_KINDS = ("sigmoid", "sigmoid64", "frac_floor", "frac_ceil", "round", "round64", "guard", "guarded")
#: Relative error allowed for the library's sigmoid (torch's, or ``math.exp``) in a floating-point model.
SIGMOID_UNITS = 8.0


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


def freeze(a: Poly) -> FrozenPoly:
    return frozenset(a.items())


# -- rational functions -----------------------------------------------------------------------------


class Rational:
    """``num/den``, polynomials with a monic (leading coefficient 1) denominator."""

    __slots__ = ("num", "den", "_key")

    def __init__(self, num: Poly, den: Poly | None = None) -> None:
        self.num = num
        self.den = den if den is not None else {ONE_MONOMIAL: Fraction(1)}
        self._key: tuple[FrozenPoly, FrozenPoly] | None = None

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
    def key(self) -> tuple[FrozenPoly, FrozenPoly]:
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
        return Rational.make(
            poly_add(poly_mul(self.num, other.den), poly_mul(other.num, self.den)),
            poly_mul(self.den, other.den),
        )

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


Terms = list[tuple[Bounds, Monomial]]
#: ``(variable, [(power, terms, groupings of those terms)])``: the terms grouped by powers of a variable.
Grouping = tuple[int, list[tuple[int, Terms, list["Grouping"]]]]


def _groupings(terms: Terms, variables: Iterable[int], nested: Iterable[int] = ()) -> list[Grouping]:
    """Horner groupings of ``terms`` in each of ``variables``; each group's terms grouped again in ``nested``."""
    out: list[Grouping] = []
    if len(terms) <= 1:
        return out
    present = {var for _, mono in terms for var, _ in mono}
    nested = tuple(nested)
    for var in sorted(present.intersection(variables)):
        by_power: dict[int, Terms] = {}
        for coef, mono in terms:
            exps = dict(mono)
            power = exps.pop(var, 0)
            by_power.setdefault(power, []).append((coef, tuple(sorted(exps.items()))))
        if len(by_power) > 1 or 0 not in by_power:
            inner_vars = [v for v in nested if v != var]
            out.append(
                (
                    var,
                    [
                        (power, group, _groupings(group, inner_vars))
                        for power, group in sorted(by_power.items())
                    ],
                )
            )
    return out


class _CompiledPoly:
    """A polynomial prepared for repeated enclosure: its terms, and its Horner groupings.

    Grouped in each variable but those in ``skip`` (rounding errors: small, centred, not worth it),
    and each group again in each other variable among ``nested`` (two levels: ``ω + ω·δ - l·δ'``
    needs ``l`` then ``ω`` to show it is at least ``-|l|·|δ'|``).
    """

    __slots__ = ("terms", "groups", "constant", "sign", "factor", "shifted")

    def __init__(
        self, poly: Poly, nested: Iterable[int] = (), skip: Iterable[int] = (), shift: Iterable[int] = ()
    ) -> None:
        self.sign: int | None = None  # known sign on the whole domain, if any
        #: ``(fact, cofactor)`` with ``poly = fact·cofactor`` and ``fact`` known to be >= 0 on the domain
        self.factor: tuple[Poly, Poly] | None = None
        self.terms = [(_coefficient_bounds(c), m) for m, c in poly.items()]
        value = constant_value(poly)
        self.constant = None if value is None else _coefficient_bounds(value)
        nested, skip = tuple(nested), frozenset(skip)
        self.groups = _groupings(self.terms, variables_of(poly) - skip, nested)
        #: The same polynomial in ``v + 1`` for the variables ``v`` of ``shift`` (guard atoms, in [-1, 0]):
        #: ``a + a·γ`` is ``a·ρ`` there, which a product of signs encloses where the sum cannot.
        shifted = [var for var in shift if var in variables_of(poly)]
        self.shifted: tuple[tuple[int, ...], _CompiledPoly] | None = None
        if shifted:
            moved = poly
            for var in shifted:
                moved = _shift(moved, var, Fraction(-1))
            self.shifted = (tuple(shifted), _CompiledPoly(moved, nested, skip))

    def enclose(self, box: Sequence[Bounds]) -> Bounds:
        """Monomial sum ∩ Horner in each variable ∩ (degree >= 2) Taylor shift to the box's lower corner."""
        if self.constant is not None:
            return self.constant
        bounds = _enclose_terms(self.terms, self.groups, box)
        if self.shifted is not None:
            variables, compiled = self.shifted
            moved = list(box)
            for var in variables:
                moved[var] = (box[var][0] + 1.0, box[var][1] + 1.0)  # exact: the ends are 0 and -1
            bounds = iv.intersect(bounds, compiled.enclose(moved))
        return bounds


def _shift(poly: Poly, var: int, by: Fraction) -> Poly:
    """``poly`` with ``var`` replaced by ``var + by`` (exactly)."""
    out: Poly = {}
    for mono, coef in poly.items():
        exps = dict(mono)
        power = exps.pop(var, 0)
        rest = tuple(sorted(exps.items()))
        for k in range(power + 1):  # (v + by)^power = sum C(power, k) v^k by^(power - k)
            term = coef * math.comb(power, k) * by ** (power - k)
            mono_k = rest if k == 0 else _mono_mul(rest, ((var, k),))
            _accumulate(out, mono_k, term)
    return out


def _enclose_terms(terms: Terms, groups: list[Grouping], box: Sequence[Bounds]) -> Bounds:
    best = _sum_terms(terms, box)
    for var, by_power in groups:
        total: Bounds = (0.0, 0.0)
        inner_bounds = []
        for power, inner_terms, inner_groups in by_power:
            inner = (
                _enclose_terms(inner_terms, inner_groups, box)
                if inner_groups
                else _sum_terms(inner_terms, box)
            )
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


_ONE = Rational({ONE_MONOMIAL: Fraction(1)})


class Symbolic:
    """Normal forms of expressions over a fixed set of variables, with a shared table of atoms.

    :param params: parameter names; they get the variable indices ``2, 3, ...`` in this order.
    """

    def __init__(
        self, params: Sequence[str], nonnegative: Iterable[Poly] = (), arithmetic: Arithmetic | None = None
    ) -> None:
        #: ``None``: normal forms of real values; else of the values computed in this arithmetic.
        self.arithmetic = arithmetic
        #: Atom index -> a second normal form of its argument (the same value): its enclosure is
        #: intersected with the first one's (a floating-point model's divisions by guarded denominators).
        self.alternatives: dict[int, Rational] = {}
        self.params = tuple(params)
        #: Polynomials known to be >= 0 on the whole domain (``u - l``), by their monic form: the sign
        #: of the monic form. Enclosures of any multiple of one are clipped at 0.
        self._signs: dict[object, int] = {}
        self._facts = [dict(poly) for poly in nonnegative]
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

    def convert(
        self, expr: ex.Expr, bounds: Mapping[str, Rational], assignment: Mapping[ex.Ge, bool] | None = None
    ) -> Rational:
        """The normal form of ``expr`` with ``l``/``u`` replaced by ``bounds`` and switches resolved.

        In a floating-point model (``arithmetic`` given), of the value as computed (see the module docstring).

        :param bounds: normal forms for ``"l"`` and ``"u"``.
        :param assignment: the truth of every condition of a switch in ``expr``.
        :raises NotRational: for opaque callables and divisions by exactly 0.
        :raises KeyError: for a condition missing from ``assignment``.
        """
        if self.arithmetic is not None:
            value, tensor = FloatForm(self, bounds, assignment or {})(expr)
            return self.to_tensor(value, tensor)
        return RealForm(self, bounds, assignment or {})(expr)

    def convert_margin(
        self, condition: ex.Ge, bounds: Mapping[str, Rational], assignment: Mapping[ex.Ge, bool] | None = None
    ) -> Rational:
        """``left - right`` of a condition: it holds where this is ``>= 0``.

        In a floating-point model the two sides are the values computed and their difference is
        exact (:class:`~relaxlab.core.expr.Ge` compares them exactly, a number without rounding).
        """
        if self.arithmetic is None:
            return self.convert(condition.left - condition.right, bounds, assignment)
        form = FloatForm(self, bounds, assignment or {})
        return form(condition.left)[0] - form(condition.right)[0]

    # -- the floating-point model ---------------------------------------------------------------
    def rounded(self, value: Rational, tensor: bool) -> Rational:
        """``value`` rounded once: in the arithmetic (``tensor``) or in float64 (Python numbers)."""
        exact = constant_value(value.num) if value.is_polynomial() else None
        if exact is not None and _representable(exact, self.arithmetic if tensor else FLOAT64):
            return value
        # r·(1 + δ): written with δ, not θ = 1 + δ, so that the exact parts cancel exactly (r - r·θ is -r·δ)
        return value * (_ONE + rational_variable(self.atom("round" if tensor else "round64", value)))

    def to_tensor(self, value: Rational, tensor: bool) -> Rational:
        """A computed number as a tensor of the arithmetic sees it (rounded to it, unless float64)."""
        if tensor or self.arithmetic is FLOAT64:
            return value
        return self.rounded(value, True)

    # -- enclosures --------------------------------------------------------------------------------
    def _atom_bounds(self, kind: str, argument: Bounds) -> Bounds:
        return _atom_bounds(kind, argument, self.arithmetic)

    def complete(self, box: Sequence[Bounds]) -> list[Bounds]:
        """``box`` (intervals of ``l``, ``u``, parameters) extended by the enclosures of all atoms."""
        full = list(box[: self.base_size])
        for index, (kind, argument) in enumerate(self.atoms, start=self.base_size):
            bounds = self.enclose(argument, full)
            if index in self.alternatives:
                bounds = iv.intersect(bounds, self.enclose(self.alternatives[index], full))
            full.append(self._atom_bounds(kind, bounds))
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
            kinds = {i: kind for i, (kind, _) in enumerate(self.atoms, self.base_size)}
            compiled = self._compiled[key] = _CompiledPoly(
                poly,
                range(self.base_size),
                skip=(i for i, k in kinds.items() if k in ("round", "round64")),
                shift=(i for i, k in kinds.items() if k == "guard"),
            )
            if self._signs and compiled.constant is None:
                monic, lead = _monic(poly)
                sign = self._signs.get(monic)
                compiled.sign = None if sign is None else (sign if lead > 0 else -sign)
                if compiled.sign is None:
                    # a multiple of a fact (a computed u - l: (u - l)·(1 + δ)): its sign is the
                    # fact's times the cofactor's, which the enclosure of the cofactor tells
                    for fact in self._facts:
                        cofactor = divide_exact(poly, fact)
                        if cofactor is not None and constant_value(cofactor) is None:
                            compiled.factor = (fact, cofactor)
                            break
        bounds = compiled.enclose(box)
        if not facts:
            return bounds
        sign = compiled.sign
        if compiled.factor is not None:
            fact, cofactor = compiled.factor
            fact_bounds = self._enclose_poly(fact, box)
            cofactor_bounds = self._enclose_poly(cofactor, box)
            bounds = iv.intersect(bounds, iv.mul(fact_bounds, cofactor_bounds))
            if cofactor_bounds[0] >= 0.0 or cofactor_bounds[1] <= 0.0:
                sign = (1 if fact_bounds[0] >= 0.0 else -1) * (1 if cofactor_bounds[0] >= 0.0 else -1)
        if sign == 1:
            return (max(bounds[0], 0.0), max(bounds[1], 0.0))
        if sign == -1:
            return (min(bounds[0], 0.0), min(bounds[1], 0.0))
        return bounds


class RealForm(ex.Interpretation[Rational]):
    """The exact normal form of an expression's real value (see :meth:`Symbolic.convert`)."""

    def __init__(
        self, symbolic: Symbolic, bounds: Mapping[str, Rational], assignment: Mapping[ex.Ge, bool]
    ) -> None:
        self.symbolic = symbolic
        self.bounds = bounds
        self.assignment = assignment
        self.memo: dict[int, Rational] = {}

    def const(self, node: ex.Const) -> Rational:
        return rational_constant(node.value)

    def var(self, node: ex.Var) -> Rational:
        return self.bounds[node.name]

    def param(self, node: ex.Param) -> Rational:
        return rational_variable(self.symbolic.param_index[node.name])

    def add(self, node: ex.Add) -> Rational:
        return self(node.left) + self(node.right)

    def mul(self, node: ex.Mul) -> Rational:
        return self(node.left) * self(node.right)

    def div(self, node: ex.Div) -> Rational:
        return self(node.numerator) / self(node.denominator)

    def sigmoid(self, node: ex.Sigmoid) -> Rational:
        argument = self(node.arg)
        if argument.is_zero():
            return rational_constant(Fraction(1, 2))  # σ(0) = 1/2 exactly
        return rational_variable(self.symbolic.atom("sigmoid", argument))

    def step(self, node: ex.Step) -> Rational:
        argument = self(node.arg)
        if node.kind == "floor":
            return argument - rational_variable(self.symbolic.atom("frac_floor", argument))
        return argument + rational_variable(self.symbolic.atom("frac_ceil", argument))

    def ge(self, node: ex.Ge) -> Rational:
        return rational_constant(1.0 if self.assignment[node] else 0.0)

    def switch(self, node: ex.Switch) -> Rational:
        return self(node.then if self.assignment[node.condition] else node.otherwise)

    def named(self, node: ex.Named) -> Rational:
        key = id(node)  # the nodes outlive the memo: it lives for one conversion
        if key not in self.memo:
            self.memo[key] = self(node.body)
        return self.memo[key]

    def opaque(self, node: ex.Opaque) -> Rational:
        raise NotRational(f"opaque callable {node.name}")


class FloatForm(ex.Interpretation[tuple[Rational, bool]]):
    """``(value, is a tensor)``: the normal form of an expression's value as computed in the
    arithmetic of ``symbolic`` (see the module docstring).

    :param guarded: divide by guarded denominators as atoms (else by the denominator times a
        guard factor): two forms of one value, the first exact where denominators are clear of
        the guard, the second bounded where they are not (atoms get both, :attr:`Symbolic.alternatives`).
    """

    def __init__(
        self,
        symbolic: Symbolic,
        bounds: Mapping[str, Rational],
        assignment: Mapping[ex.Ge, bool],
        guarded: bool = False,
    ) -> None:
        self.symbolic = symbolic
        self.bounds = bounds
        self.assignment = assignment
        self.guarded = guarded
        self.memo: dict[int, tuple[Rational, bool]] = {}

    def const(self, node: ex.Const) -> tuple[Rational, bool]:
        return rational_constant(node.value), False

    def var(self, node: ex.Var) -> tuple[Rational, bool]:
        return self.bounds[node.name], True

    def param(self, node: ex.Param) -> tuple[Rational, bool]:
        return rational_variable(self.symbolic.param_index[node.name]), False

    def _operands(self, node: ex.Add | ex.Mul | ex.Div) -> tuple[Rational, Rational, bool, bool]:
        (a, ta), (b, tb) = (self(child) for child in node.children())
        if ta or tb:  # a number meeting a tensor is rounded to the arithmetic first
            a, b = self.symbolic.to_tensor(a, ta), self.symbolic.to_tensor(b, tb)
        return a, b, ta, tb

    def add(self, node: ex.Add) -> tuple[Rational, bool]:
        a, b, ta, tb = self._operands(node)
        tensor = ta or tb
        return (a + b if a.is_zero() or b.is_zero() else self.symbolic.rounded(a + b, tensor)), tensor

    def mul(self, node: ex.Mul) -> tuple[Rational, bool]:
        a, b, ta, tb = self._operands(node)
        tensor = ta or tb
        return (
            a * b if _exact_factor(a) or _exact_factor(b) else self.symbolic.rounded(a * b, tensor)
        ), tensor

    def div(self, node: ex.Div) -> tuple[Rational, bool]:
        a, b, ta, tb = self._operands(node)
        tensor = ta or tb
        if (
            tb and self.guarded
        ):  # Div.evaluate divides by copysign(max(|b|, guard), b): an atom, enclosed as that
            quotient = a / rational_variable(self.symbolic.atom("guarded", b))
        elif tb:  # the same value as (a/b)·(1 + γ), 1 + γ = |b|/max(|b|, guard): γ = 0 clear of the guard
            quotient = a / b * (_ONE + rational_variable(self.symbolic.atom("guard", b)))
        else:
            quotient = a / b
        return (quotient if _exact_factor(b) else self.symbolic.rounded(quotient, tensor)), tensor

    def _atom(self, node: ex.Sigmoid | ex.Step, kind: str) -> tuple[int, Rational, bool]:
        """The atom of ``kind`` of the node's computed argument (with its guarded form, made first)."""
        argument, tensor = self(node.arg)
        symbolic = self.symbolic
        alternative = None
        if not self.guarded and (kind, argument.key) not in symbolic._atom_index:  # (its atoms come first)
            alternative = FloatForm(symbolic, self.bounds, self.assignment, guarded=True)(node.arg)[0]
        index = symbolic.atom(kind, argument)
        if alternative is not None:
            symbolic.alternatives[index] = alternative
        return index, argument, tensor

    def sigmoid(self, node: ex.Sigmoid) -> tuple[Rational, bool]:
        argument, tensor = self(node.arg)
        if argument.is_zero():
            return rational_constant(Fraction(1, 2)), tensor
        index, _, tensor = self._atom(node, "sigmoid" if tensor else "sigmoid64")
        return rational_variable(index), tensor

    def step(self, node: ex.Step) -> tuple[Rational, bool]:
        # floor and ceil of a float are exact: the argument less or plus its fractional part
        index, argument, tensor = self._atom(node, f"frac_{node.kind}")
        if node.kind == "floor":
            return argument - rational_variable(index), tensor
        return argument + rational_variable(index), tensor

    def _tensor_condition(self, condition: ex.Ge) -> bool:
        return self(condition.left)[1] or self(condition.right)[1]

    def ge(self, node: ex.Ge) -> tuple[Rational, bool]:
        return rational_constant(1.0 if self.assignment[node] else 0.0), self._tensor_condition(node)

    def switch(self, node: ex.Switch) -> tuple[Rational, bool]:
        t_cond = self._tensor_condition(node.condition)
        branch, tensor = self(node.then if self.assignment[node.condition] else node.otherwise)
        if t_cond or tensor:  # a tensor switch returns the branch as a tensor of the arithmetic
            return self.symbolic.to_tensor(branch, tensor), True
        return branch, False

    def named(self, node: ex.Named) -> tuple[Rational, bool]:
        key = id(node)  # the nodes outlive the memo: it lives for one conversion
        if key not in self.memo:
            self.memo[key] = self(node.body)
        return self.memo[key]

    def opaque(self, node: ex.Opaque) -> tuple[Rational, bool]:
        raise NotRational(f"opaque callable {node.name}")


def _monic(poly: Poly) -> tuple[frozenset[tuple[Monomial, Fraction]], Fraction]:
    """``(monic form, leading coefficient)``: ``poly = lead · monic``."""
    lead = poly[max(poly, key=_lex)]
    return freeze(poly_scale(poly, 1 / lead)), lead


def _representable(value: Fraction, arithmetic: Arithmetic | None) -> bool:
    """Whether ``value`` is a float of ``arithmetic`` (then rounding it changes nothing)."""
    as_float = float(value)
    return Fraction(as_float) == value and (arithmetic is None or arithmetic.round(as_float) == as_float)


def _exact_factor(value: Rational) -> bool:
    """A constant power of two (or 0): multiplying or dividing by it is exact."""
    exact = constant_value(value.num) if value.is_polynomial() else None
    if exact is None:
        return False
    if exact == 0:
        return True
    magnitude = abs(exact)
    return (
        magnitude.numerator & (magnitude.numerator - 1) == 0
        and magnitude.denominator & (magnitude.denominator - 1) == 0
    )


def _widened(bounds: Bounds, relative: float) -> Bounds:
    lo, hi = bounds
    return (max(0.0, iv.down(lo - relative * abs(lo))), min(1.0, iv.up(hi + relative * abs(hi))))


def _atom_bounds(kind: str, argument: Bounds, arithmetic: Arithmetic | None = None) -> Bounds:
    if kind == "sigmoid":
        bounds = iv.sigmoid(argument)
        return bounds if arithmetic is None else _widened(bounds, SIGMOID_UNITS * arithmetic.unit)
    if kind == "sigmoid64":
        return _widened(iv.sigmoid(argument), SIGMOID_UNITS * FLOAT64.unit)
    if kind in ("round", "round64"):  # the relative error δ of one rounding
        unit = FLOAT64.unit if kind == "round64" or arithmetic is None else arithmetic.unit
        return (-unit, unit)
    if kind == "guard":  # |d|/max(|d|, guard) - 1
        guard = (arithmetic or FLOAT64).guard
        return (0.0, 0.0) if argument[0] > guard or argument[1] < -guard else (-1.0, 0.0)
    if kind == "guarded":  # copysign(max(|d|, guard), d): never in (-guard, guard)
        guard = (arithmetic or FLOAT64).guard
        lo, hi = argument
        if lo >= 0.0:
            return (max(lo, guard), max(hi, guard))
        if hi < 0.0:
            return (min(lo, -guard), min(hi, -guard))
        return iv.WHOLE
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
