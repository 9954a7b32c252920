"""Soundness proved, not sampled: branch and bound over ``(l, u, parameters)`` with interval enclosures.

**What is proved.** For fixed ``(l, u)`` a line ``a·x + b`` is a sound lower bound of ``relu``
on ``[l, u]`` iff it lies below ``relu`` at ``x = l``, at ``x = 0`` (when ``l < 0 < u``) and at
``x = u``, and a sound upper bound iff it lies above at ``x = l`` and ``x = u`` (``relu`` is
convex, the line is linear). For each stability case and side (a *part*) this is a statement
about a region of ``(l, u)`` and the parameter ranges, made **as computed**: with ``a``, ``b`` the
coefficients the library's evaluator computes in float32, and again in float64, and ``g`` the
*gap* (``relu - line`` for a lower line, ``line - relu`` for an upper one) at each of those points,

    ``g(l, u, θ) >= -tol(l, u)``    for every ``(l, u)`` of the case, every ``θ``,

with ``tol`` the line tolerance of the arithmetic (:mod:`relaxlab.core.rounding`: 256 units of
roundoff relative to ``|l| + |u|``, plus a tiny absolute term). With a transform the case and the
lines are taken on the transformed bounds ``(l', u')`` as computed while ``x`` ranges over the raw
``[l, u]``, and a separate part (``side="transform"``) proves that it widens: ``l' <= l + tol`` and
``u' >= u - tol``. Once that is proved, a line proved sound for every ``(l', u')`` of its case at
every scale needs nothing more, so its part is the transform-free proof; only other lines are
proved through the transform.

**How.** Each gap is brought into an exact normal form (:mod:`relaxlab.core.rational`:
rational functions, exact cancellation, switches resolved branch by branch, sigmoid and
floor/ceil as bounded atoms; in a floating-point model every rounding is a factor ``1 + δ``,
``|δ| <= unit``), first of the real values (what is not proved there is decided there, cheaply),
then of the values as computed in each arithmetic, then enclosed over boxes
(:mod:`relaxlab.core.interval`, outward rounding). A box is *done* when, for every critical
point and every branch assignment consistent with it, the enclosure of the gap is ``>= -tol`` on
it (where ``l`` and ``u`` keep their signs on the box, ``tol`` is written into the normal form, so
that an error proportional to ``|l|`` is covered up to ``l = 0``); or when a condition that holds
on the part of the box that matters (the case, ``l <= u``, the branch taken) proves it:
``g - c·m >= -tol`` with ``m >= 0`` the condition's margin and a multiplier ``c >= 0`` that
eliminates a variable both are affine in (so the soft switch ``κ >= λ`` proves that its pivoting
upper lines stay above the ReLU). ``l <= u`` is a domain fact: enclosures of multiples of
``u - l`` (a computed ``u - l`` included) are clipped at 0, and boxes that meet the domain at most
on the diagonal are skipped. Other boxes are split at the midpoint of the widest relevant side
(relative to its range); boxes are taken alternately worst enclosure first and widest first. At
every box left open, the centre is evaluated (and, where only the rounding can tell, a point off
the binary grid, in the arithmetic): a violation is **re-verified** by evaluating the
relaxation's own lines in that arithmetic, the gap computed exactly, before it is reported.

**Domain.** Where every gap is positively homogeneous of degree 1 in ``(l, u)`` (slopes of
degree 0, offsets of degree 1, conditions whose sign does not change with scale: all built-ins
but the LooseIBP ones), the gap scales with ``(l, u)``, in the reals and, outside underflow and
overflow, in the rounding model (each relative error scales with its value); proving
``g >= -relative·(|l| + |u|)`` on ``max(|l|, |u|) = 1`` (two segments: ``u = 1`` and ``l = -1``)
therefore proves every ``(l, u) != (0, 0)`` at every scale; the one point ``l = u = 0`` is
evaluated by the callers (the probe grid, in both arithmetics). Otherwise the domain is
``|l|, |u| <= bound`` (default :data:`~relaxlab.core.scaling.BOUNDED_DOMAIN`, 1e8, beyond which
the evaluator refuses to evaluate such lines). Parameters range over their declared interval with
unbounded ends clipped to ``±PARAM_CLIP`` (default ``1e3``), widened to contain the default and the
current value (the registry proves a setting beyond the clip when it is asked for).

**Outcomes** per part: ``proved``; ``counterexample`` (re-verified, concrete point);
``undecided`` (box budget spent, or an expression without a normal form: never counted as
sound); ``sampled`` for lines with opaque callables (nothing to prove with: the caller falls
back to the sampled check).
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction

from attrs import evolve, frozen

from relaxlab.core import interval as iv
from relaxlab.core.expr import BOUND_VARIABLES, Expr, Ge, Switch, Value
from relaxlab.core.interval import Bounds
from relaxlab.core.rational import (
    L_INDEX,
    U_INDEX,
    FrozenPoly,
    NotRational,
    Rational,
    Symbolic,
    divide_exact,
    poly_add,
    poly_mul,
    poly_scale,
    rational_constant,
    rational_variable,
    split_affine,
    variable,
)
from relaxlab.core.relaxation import PARAM_CLIP, BoundsTransform, Line, ParamSpec, ReluRelaxation
from relaxlab.core.rounding import ARITHMETICS, FLOAT64, Arithmetic
from relaxlab.core.scaling import (
    BOUNDED_DOMAIN,
    homogeneity,
    line_is_scale_invariant,
    transform_is_scale_invariant,
)
from relaxlab.core.stability import Stability, classify
from relaxlab.properties.pointwise import Counterexample, find_counterexample, probe_pairs, sampled_check

PROVED, COUNTEREXAMPLE, UNDECIDED, SAMPLED = "proved", "counterexample", "undecided", "sampled"
OUTCOMES = (PROVED, COUNTEREXAMPLE, UNDECIDED, SAMPLED)
#: ``|l|, |u| <= DEFAULT_BOUND`` where the lines are not scale invariant (the evaluator refuses bounds beyond it).
DEFAULT_BOUND = BOUNDED_DOMAIN
#: Boxes per part before giving up (``undecided``).
DEFAULT_BUDGET = 3000
#: More switch conditions than this in one part: ``undecided`` (2**n branch assignments).
MAX_CONDITIONS = 6
#: A box whose widest relevant side is below this fraction of its range is not split further.
_MIN_RELATIVE_WIDTH = 1e-12
_ELIMINATIONS = 24
TRANSFORM_CASE = "all"


# -- what is proved where --------------------------------------------------------------------------


@frozen
class ParamRange:
    """The range a parameter is proved over: ``[lo, hi]``, or ``(lo, hi]`` for a strict minimum."""

    name: str
    lo: float
    hi: float
    open_lo: bool = False

    @classmethod
    def of(cls, spec: ParamSpec, current: float, clip: float = PARAM_CLIP) -> ParamRange:
        lo, hi = spec.proved_range(current, clip)
        return cls(spec.name, lo, hi, spec.strict and spec.minimum is not None)

    def __str__(self) -> str:
        return f"{self.name} ∈ {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}]"


@frozen
class Domain:
    """Where a part is proved: all ``(l, u)`` (scale invariant) or ``|l|, |u| <= bound``; parameter ranges."""

    scale_invariant: bool
    bound: float
    params: tuple[ParamRange, ...] = ()

    def __str__(self) -> str:
        where = (
            "all l <= u (scale invariant)" if self.scale_invariant else f"l <= u, |l|, |u| <= {self.bound:g}"
        )
        return ", ".join([where, *(str(p) for p in self.params)])


@frozen
class PartVerdict:
    """The outcome for one stability case and side (``side="transform"``: the widening, case ``"all"``).

    :param outcome: one of :data:`OUTCOMES`.
    :param domain: where it is proved (or was searched).
    :param boxes: boxes examined.
    :param counterexample: the re-verified violation, for ``counterexample``.
    :param note: for ``undecided`` and ``sampled``: why; for ``proved``: how, where it is not the plain proof.
    """

    case: str
    side: str
    outcome: str
    domain: Domain | None = None
    boxes: int = 0
    counterexample: Counterexample | None = None
    note: str = ""

    def __str__(self) -> str:
        head = f"{self.case} {self.side}: {self.outcome}"
        if self.outcome == PROVED:
            return f"{head} on {self.domain} ({self.boxes} boxes)" + (f", {self.note}" if self.note else "")
        if self.outcome == COUNTEREXAMPLE:
            return f"{head}: {self.counterexample}"
        if self.outcome == SAMPLED:
            return f"{head}, not proved ({self.note})"
        return f"{head} after {self.boxes} boxes on {self.domain}: {self.note}"


# -- homogeneity --------------------------------------------------------------------------------------


def _scale_invariant(line: Line | None, transform: BoundsTransform | None) -> bool:
    if transform is not None and not transform_is_scale_invariant(transform.lower, transform.upper):
        return False
    return line is None or line_is_scale_invariant(line.slope, line.offset)


# -- obligations --------------------------------------------------------------------------------------

#: ``(margin, truth, strict)``: the condition ``margin >= 0`` (``> 0`` if strict) holds (truth) or not.
Constraint = tuple[Rational, bool, bool]


Elimination = tuple[tuple[tuple[Rational, int], ...], Rational, int]


class _Obligation:
    """``gap >= -tol`` wherever all ``constraints`` hold; with the variable eliminations that may prove it."""

    __slots__ = ("gap", "constraints", "deps", "x", "_found", "_source", "_tolerated")

    def __init__(
        self, gap: Rational, constraints: tuple[Constraint, ...], deps: frozenset[int], x: str
    ) -> None:
        self.gap = gap
        self.constraints = constraints
        self.deps = deps
        self.x = x
        self._found: list[Elimination] = []
        self._source: Iterator[Elimination] | None = None
        self._tolerated: dict[tuple[int, int, float], Rational] = {}

    def tolerated(self, sign_l: int, sign_u: int, relative: float) -> Rational:
        """``gap + relative·(|l| + |u|)`` where ``l`` and ``u`` have the given signs: the relative part
        of the tolerance pointwise, so that an error of ``unit·|l|`` near ``l = 0`` is covered there
        (the box-wise tolerance, taken at the box's smallest magnitudes, is 0 at a box touching 0)."""
        key = (sign_l, sign_u, relative)
        if key not in self._tolerated:
            weight = Fraction(relative)
            tol = poly_add(
                poly_scale(variable(L_INDEX), weight * sign_l), poly_scale(variable(U_INDEX), weight * sign_u)
            )
            self._tolerated[key] = self.gap + Rational(tol)
        return self._tolerated[key]

    def eliminations(self) -> Iterator[Elimination]:
        """``(factors of c, g - c·m, constraint index)``, ``c = Π factor**power``, two levels deep.

        Computed lazily (normal-form arithmetic is the expensive part) and remembered.
        """
        yield from self._found
        if self._source is None:
            self._source = itertools.islice(self._generate(), _ELIMINATIONS)
        for item in self._source:
            self._found.append(item)
            yield item

    def _generate(self) -> Iterator[Elimination]:
        first = []
        for item in _eliminate(self.gap, self.constraints, skip=None):
            first.append(item)
            yield item
        for factors, residual, j in first:
            if not residual.is_zero():
                for more, residual2, _ in _eliminate(residual, self.constraints, skip=j):
                    yield factors + more, residual2, j


def _eliminate(gap: Rational, constraints: Sequence[Constraint], skip: int | None) -> Iterator[Elimination]:
    seen = set()
    gap_vars = gap.variables()
    den_vars = frozenset(v for mono in gap.den for v, _ in mono)
    for j, (margin, truth, _) in enumerate(constraints):
        if j == skip:
            continue
        m = margin if truth else -margin
        m_den_vars = frozenset(v for mono in m.den for v, _ in mono)
        for var in sorted(gap_vars & m.variables() - den_vars - m_den_vars):
            g_split, m_split = split_affine(gap.num, var), split_affine(m.num, var)
            if g_split is None or m_split is None or not m_split[0]:
                continue
            (g1, g0), (m1, m0) = g_split, m_split
            residual = Rational.make(
                poly_add(poly_mul(g0, m1), poly_mul(g1, m0), Fraction(-1)), poly_mul(gap.den, m1)
            )
            quotient = divide_exact(g1, m1)
            factors: list[tuple[Rational, int]] = (
                [(Rational(quotient), 1)] if quotient is not None else [(Rational(g1), 1), (Rational(m1), -1)]
            )
            factors += [(Rational(m.den), 1), (Rational(gap.den), -1)]
            factors = [(f, p) for f, p in factors if f.num != {(): 1} or not f.is_polynomial()]
            key = (residual.key, tuple((f.key, p) for f, p in factors))
            if key not in seen:
                seen.add(key)
                yield tuple(factors), residual, j


def _case_constraints(stability: Stability, tl: Rational, tu: Rational) -> list[Constraint]:
    if stability is Stability.NEGATIVE:
        return [(-tu, True, False)]  # u' <= 0
    if stability is Stability.UNSTABLE:
        return [(-tl, True, True), (tu, True, True)]  # l' < 0 < u'
    return [(tl, True, False), (tu, True, True)]  # l' >= 0, u' > 0


def _critical_points(
    stability: Stability, raw: dict[str, Rational], transformed: bool
) -> list[tuple[str, Rational, Rational, list[Constraint]]]:
    """``(label, x, relu(x), constraints)`` at the points of ``[l, u]`` where a line can cross the ReLU.

    ``x`` ranges over the raw ``[l, u]`` (the lines, over the transformed bounds, must hold
    there, as in :func:`~relaxlab.properties.soundness.find_counterexample`). Without a
    transform the case fixes the signs of ``l`` and ``u``; with one, each sign is a branch.
    """
    zero = rational_constant(0.0)
    lo, hi = raw["l"], raw["u"]
    if transformed:
        return [
            ("l", lo, zero, [(-lo, True, False)]),
            ("l", lo, lo, [(lo, True, False)]),
            ("u", hi, zero, [(-hi, True, False)]),
            ("u", hi, hi, [(hi, True, False)]),
            ("0", zero, zero, [(-lo, True, True), (hi, True, True)]),
        ]
    if stability is Stability.NEGATIVE:
        return [("l", lo, zero, []), ("u", hi, zero, [])]
    if stability is Stability.UNSTABLE:
        return [("l", lo, zero, []), ("0", zero, zero, []), ("u", hi, hi, [])]
    return [("l", lo, lo, []), ("u", hi, hi, [])]


def _conditions(exprs: Sequence[Expr]) -> list[Ge]:
    found: dict[Ge, None] = {}
    for expr in exprs:
        for node in expr.walk():
            if isinstance(node, Switch):
                found.setdefault(node.condition, None)
            elif isinstance(node, Ge):
                found.setdefault(node, None)
    return list(found)


def _assignments(conditions: Sequence[Ge]) -> Iterator[dict[Ge, bool]]:
    for values in itertools.product((True, False), repeat=len(conditions)):
        yield dict(zip(conditions, values, strict=True))


# -- faces: where the boxes live ------------------------------------------------------------------------


class _Face:
    """Boxes over the free variables of one chart of the domain, with the obligations there in one arithmetic."""

    def __init__(
        self,
        name: str,
        symbolic: Symbolic,
        root: list[Bounds],
        free: list[int],
        obligations: list[_Obligation],
        width: Rational | None = None,
    ) -> None:
        self.name = name
        #: The arithmetic whose values the obligations are about; their tolerance (float64's for the reals).
        self.model: Arithmetic | None = symbolic.arithmetic
        self.arithmetic: Arithmetic = symbolic.arithmetic or FLOAT64
        self.width = width  # u - l where it is not constant: boxes where it is < 0 are outside the domain
        self.symbolic = symbolic
        self.root = root
        self.free = free
        self.obligations = obligations


def _faces(
    stability: Stability | None,
    side: str,
    line: Line | None,
    transform: BoundsTransform | None,
    ranges: tuple[ParamRange, ...],
    scale_invariant: bool,
    bound: float,
    models: Sequence[Arithmetic | None] = ARITHMETICS,
) -> list[_Face]:
    """The charts of the domain, each with the obligations of the part for the values of each model
    (an arithmetic: the values as computed in it; ``None``: the real values)."""
    params = [r.name for r in ranges]
    param_box = [(r.lo, r.hi) for r in ranges]
    if scale_invariant:  # max(|l|, |u|) = 1 with l <= u: the segments u = 1 and l = -1
        charts = [
            (
                "u=1",
                {"l": rational_variable(L_INDEX), "u": rational_constant(1.0)},
                [(-1.0, 1.0), (1.0, 1.0)],
                [L_INDEX],
            ),
            (
                "l=-1",
                {"l": rational_constant(-1.0), "u": rational_variable(U_INDEX)},
                [(-1.0, -1.0), (-1.0, 1.0)],
                [U_INDEX],
            ),
        ]
    else:
        charts = [
            (
                "box",
                {"l": rational_variable(L_INDEX), "u": rational_variable(U_INDEX)},
                [(-bound, bound), (-bound, bound)],
                [L_INDEX, U_INDEX],
            )
        ]
    t_exprs = [transform.lower, transform.upper] if transform is not None else []
    line_exprs = list(line.expressions()) if line is not None else []
    t_conditions, line_conditions = _conditions(t_exprs), _conditions(line_exprs)
    if len(t_conditions) + len(line_conditions) > MAX_CONDITIONS:
        raise NotRational(
            f"{len(t_conditions) + len(line_conditions)} switch conditions (at most {MAX_CONDITIONS})"
        )
    faces = []
    for (name, raw, root, free), arithmetic in itertools.product(charts, models):
        width = raw["u"] - raw["l"]
        varying = width.is_polynomial() and bool(width.variables())
        symbolic = Symbolic(params, nonnegative=[width.num] if varying else [], arithmetic=arithmetic)
        domain_constraint: Constraint = (raw["u"] - raw["l"], True, False)  # l <= u
        obligations: dict[object, _Obligation] = {}
        for t_assignment in _assignments(t_conditions):
            constraints_t = [domain_constraint] + [
                (symbolic.convert_margin(c, raw, t_assignment), value, False)
                for c, value in t_assignment.items()
            ]
            if transform is not None:
                tl = symbolic.convert(transform.lower, raw, t_assignment)
                tu = symbolic.convert(transform.upper, raw, t_assignment)
            else:
                tl, tu = raw["l"], raw["u"]
            if stability is None:  # the transform widens: l' <= l, u' >= u
                gaps = [("l", raw["l"] - tl, constraints_t), ("u", tu - raw["u"], constraints_t)]
                _add_obligations(obligations, symbolic, gaps)
                continue
            assert line is not None
            bounds = {"l": tl, "u": tu}
            case_constraints = _case_constraints(stability, tl, tu)
            for assignment in _assignments(line_conditions):
                constraints = (
                    constraints_t
                    + case_constraints
                    + [
                        (symbolic.convert_margin(c, bounds, assignment), value, False)
                        for c, value in assignment.items()
                    ]
                )
                slope = symbolic.convert(line.slope, bounds, assignment)
                offset = symbolic.convert(line.offset, bounds, assignment)
                gaps = []
                for label, x, relu, extra in _critical_points(stability, raw, transform is not None):
                    value = slope * x + offset
                    gaps.append(
                        (label, relu - value if side == "lower" else value - relu, constraints + extra)
                    )
                _add_obligations(obligations, symbolic, gaps)
        root_box = root + param_box
        faces.append(
            _Face(
                f"{name} in {arithmetic or 'the reals'}",
                symbolic,
                root_box,
                free + list(range(2, 2 + len(ranges))),
                list(obligations.values()),
                width if varying else None,
            )
        )
    return faces


def _add_obligations(
    obligations: dict[object, _Obligation],
    symbolic: Symbolic,
    gaps: Sequence[tuple[str, Rational, Sequence[Constraint]]],
) -> None:
    for label, gap, constraints in gaps:
        # constraints that are constant truths add nothing
        kept = tuple(c for c in constraints if not _constant_truth(c))
        if any(_constant_falsity(c) for c in constraints):
            continue
        key = (gap.key, tuple(sorted((m.key, t, s) for m, t, s in kept)))
        if key in obligations:
            continue
        deps = gap.variables().union(*(m.variables() for m, _, _ in kept))
        obligations[key] = _Obligation(gap, kept, symbolic.base_variables(deps), label)


def _constant_value(margin: Rational) -> float | None:
    if margin.is_zero():
        return 0.0
    if margin.is_polynomial() and len(margin.num) == 1 and () in margin.num:
        return float(margin.num[()])
    return None


def _constant_truth(constraint: Constraint) -> bool:
    margin, truth, strict = constraint
    value = _constant_value(margin)
    if value is None:
        return False
    return (value > 0 or (value == 0 and not strict)) if truth else value < 0


def _constant_falsity(constraint: Constraint) -> bool:
    return _constant_value(constraint[0]) is not None and not _constant_truth(constraint)


# -- branch and bound -----------------------------------------------------------------------------------


def _magnitude_lo(bounds: Bounds) -> float:
    lo, hi = bounds
    if lo <= 0.0 <= hi:
        return 0.0
    return min(abs(lo), abs(hi))


def _tolerance(box: Sequence[Bounds], scale_invariant: bool, arithmetic: Arithmetic) -> float:
    """The line tolerance at the box's point nearest ``(0, 0)``; on a chart (scale invariant)
    without its absolute term, which does not scale (it only helps at scales above 1)."""
    magnitude = _magnitude_lo(box[L_INDEX]) + _magnitude_lo(box[U_INDEX])
    tol = arithmetic.relative * magnitude + (0.0 if scale_invariant else arithmetic.absolute)
    return tol * (1.0 - 1e-9)  # the float product above may round up


class _BoxState:
    """One completed box and the enclosures computed on it (shared by its obligations)."""

    __slots__ = ("face", "box", "full", "cache")

    def __init__(self, face: _Face, box: list[Bounds]) -> None:
        self.face = face
        self.box = box
        self.full = face.symbolic.complete(box)
        self.cache: dict[object, Bounds] = {}

    def enclose(self, value: Rational, facts: bool = True) -> Bounds:
        """The enclosure over the box's points in the domain (``facts=False``: over all its points)."""
        key = (value.key, facts)
        found = self.cache.get(key)
        if found is None:
            found = self.cache[key] = self.face.symbolic.enclose(value, self.full, facts=facts)
        return found


def _infeasible(state: _BoxState, constraint: Constraint) -> bool:
    """Whether no point of the box that matters satisfies the constraint.

    A half-space ``a·v + b >= 0`` (affine in ``l``, ``u``, parameters) that the box meets only on
    its boundary plane counts as not met: every point of that plane lies in a neighbouring box
    that reaches into the open half-space (the boxes tile the chart), where it is proved.
    """
    margin, truth, strict = constraint
    lo, hi = state.enclose(margin)
    if truth:
        return hi <= 0.0 if (strict or _half_space(margin, state.face.symbolic.base_size)) else hi < 0.0
    return lo >= 0.0


@functools.lru_cache(maxsize=65536)
def _half_space_key(key: tuple[FrozenPoly, FrozenPoly], base_size: int) -> bool:
    num, den = key
    if den != frozenset({((), Fraction(1))}):
        return False
    linear = [m for m, _ in num if m]
    return bool(linear) and all(len(m) == 1 and m[0][1] == 1 and m[0][0] < base_size for m in linear)


def _half_space(margin: Rational, base_size: int) -> bool:
    """``margin`` is affine and not constant in the non-atom variables (its zero set is a hyperplane)."""
    return _half_space_key(margin.key, base_size)


def _holds_strictly(state: _BoxState, constraint: Constraint) -> bool:
    margin, truth, strict = constraint
    lo, hi = state.enclose(margin, facts=False)
    if truth:
        return lo > 0.0 if strict else lo >= 0.0
    return hi < 0.0


def _attempt(obligation: _Obligation, state: _BoxState, tol: float, scale_invariant: bool) -> float | None:
    """``None`` when the obligation is proved on the box, else ``lower end of the gap + tol``."""
    if any(_infeasible(state, c) for c in obligation.constraints):
        return None
    lo = state.enclose(obligation.gap)[0]
    if lo >= -tol:
        return None
    signs = _signs(state.box)
    if not scale_invariant and signs is not None:
        arithmetic = state.face.arithmetic
        tolerated = obligation.tolerated(*signs, arithmetic.relative)
        if state.enclose(tolerated)[0] >= -arithmetic.absolute * (1.0 - 1e-9):
            return None
    if obligation.constraints:
        for factors, residual, _ in obligation.eliminations():
            c: Bounds = (1.0, 1.0)
            for factor, power in factors:
                bounds = state.enclose(factor)
                c = iv.mul(c, bounds if power == 1 else iv.reciprocal(bounds))
            if c[0] >= 0.0 and state.enclose(residual)[0] >= -tol:
                return None
    return lo + tol


def _signs(box: Sequence[Bounds]) -> tuple[int, int] | None:
    """The signs of ``l`` and ``u`` on the box, where each is the same everywhere (0 counts as either)."""
    signs = []
    for lo, hi in box[:2]:
        if lo >= 0.0:
            signs.append(1)
        elif hi <= 0.0:
            signs.append(-1)
        else:
            return None
    return signs[0], signs[1]


@frozen
class _Task:
    stability: Stability | None
    side: str
    line: Line | None
    transform: BoundsTransform | None
    ranges: tuple[ParamRange, ...]


def _verify(
    task: _Task, lower: float, upper: float, params: dict[str, float], arithmetic: Arithmetic
) -> Counterexample | None:
    """The violation at the concrete point ``(lower, upper, params)`` as evaluated in ``arithmetic``, or ``None``.

    The bounds are rounded to the arithmetic, the lines evaluated there as the library does,
    and the gap between the line (its computed coefficients, as exact numbers) and the ReLU
    compared exactly with the line tolerance.
    """
    import torch  # only to confirm a suspected violation: a proof makes no tensor

    dtype = getattr(torch, arithmetic.name)
    lb = torch.tensor([lower], dtype=torch.float64).to(dtype)
    ub = torch.tensor([upper], dtype=torch.float64).to(dtype)
    lower, upper = float(lb), float(ub)
    if not lower <= upper:
        return None
    tol = arithmetic.exact_tolerance(Fraction(lower), Fraction(upper))
    env: dict[str, Value] = {"l": lb, "u": ub, **params}
    if task.transform is not None:
        memo: dict[int, Value] = {}
        tl = _as_float(task.transform.lower.evaluate(env, memo), arithmetic)
        tu = _as_float(task.transform.upper.evaluate(env, memo), arithmetic)
    else:
        tl, tu = lower, upper
    pairs = tuple(sorted(params.items()))
    if not (math.isfinite(tl) and math.isfinite(tu)):
        return None
    if task.stability is None:
        if Fraction(tl) - Fraction(lower) > tol or Fraction(upper) - Fraction(tu) > tol:
            return Counterexample(
                "",
                TRANSFORM_CASE,
                "transform",
                lower,
                upper,
                math.nan,
                tl,
                tu,
                pairs,
                arithmetic=arithmetic.name,
            )
        return None
    assert task.line is not None
    if classify(tl, tu) is not task.stability:
        return None
    line_env = {"l": torch.tensor([tl], dtype=dtype), "u": torch.tensor([tu], dtype=dtype), **params}
    slope, offset = (_as_float(v, arithmetic) for v in task.line.evaluate(line_env))
    if not (math.isfinite(slope) and math.isfinite(offset)):
        return Counterexample(
            "",
            str(task.stability),
            task.side,
            lower,
            upper,
            lower,
            math.nan,
            max(lower, 0.0),
            pairs,
            arithmetic=arithmetic.name,
        )
    for x in [lower, upper] + ([0.0] if lower < 0.0 < upper else []):
        relu = max(Fraction(x), Fraction(0))
        value = Fraction(slope) * Fraction(x) + Fraction(offset)
        gap = value - relu if task.side == "lower" else relu - value
        if gap > tol:
            return Counterexample(
                "",
                str(task.stability),
                task.side,
                lower,
                upper,
                x,
                float(value),
                float(relu),
                pairs,
                arithmetic=arithmetic.name,
            )
    return None


def _as_float(value: Value, arithmetic: Arithmetic) -> float:
    """A computed coefficient as the tensor the evaluator returns holds it (numbers rounded to the arithmetic)."""
    if hasattr(value, "reshape"):  # a tensor
        return float(value.reshape(-1)[0])
    return arithmetic.round(float(value))


#: Box centres where only the rounding can tell (the enclosure there straddles the tolerance) that are
#: evaluated in floating point, per part and face: a line that is wrong only as computed is found this way.
_ROUNDING_TRIES = 64


def _candidate(
    task: _Task,
    face: _Face,
    box: list[Bounds],
    obligations: Sequence[_Obligation],
    scale_invariant: bool,
    tries: list[int],
) -> Counterexample | None:
    """Evaluate the box's centre; a violation there is re-verified in floating point before it is returned."""
    centre = list(box)
    for dim in face.free:
        lo, hi = box[dim]
        mid = lo + (hi - lo) / 2.0
        if task.ranges and dim >= 2 and task.ranges[dim - 2].open_lo and mid <= task.ranges[dim - 2].lo:
            return None
        centre[dim] = (mid, mid)
    state = _BoxState(face, centre)
    lower, upper = centre[L_INDEX][0], centre[U_INDEX][0]
    tol = _tolerance(centre, scale_invariant, face.arithmetic)
    params = {r.name: centre[2 + i][0] for i, r in enumerate(task.ranges)}
    for obligation in obligations:
        if not all(_holds_strictly(state, c) for c in obligation.constraints):
            continue
        lo, hi = state.enclose(obligation.gap)
        if lo >= -tol:
            continue
        points = [(lower, upper, params)]
        if hi >= -tol:  # whether it is violated depends on how the values round: only evaluating tells
            if tries[0] <= 0:
                continue
            tries[0] -= 1
            points.append(
                _off_centre(task, face, box)
            )  # a centre is a short binary number: it may round exactly
        # on a chart also at a larger power-of-two scale (exact), where the absolute tolerance is negligible
        for (low, high, values), s, kind in itertools.product(
            points,
            [1.0, 2.0**40] if scale_invariant else [1.0],
            [face.model] if face.model is not None else ARITHMETICS[::-1],
        ):
            found = _verify(task, low * s, high * s, values, kind)
            if found is not None:
                return found
    return None


#: Where in a box :func:`_off_centre` looks: the golden section, far from every short binary fraction.
_GOLDEN = 0.6180339887498949


def _off_centre(task: _Task, face: _Face, box: list[Bounds]) -> tuple[float, float, dict[str, float]]:
    point = [lo if dim not in face.free else lo + (hi - lo) * _GOLDEN for dim, (lo, hi) in enumerate(box)]
    return point[L_INDEX], point[U_INDEX], {r.name: point[2 + i] for i, r in enumerate(task.ranges)}


def _relevant(obligations: Sequence[_Obligation], state: _BoxState, scale_invariant: bool) -> set[int]:
    """Variables worth splitting: those of the gaps and of the constraints still open on the box.

    A constraint that holds on the closure of the box (or nowhere) cannot become decided by
    splitting, so its variables are left alone: splitting them only multiplies boxes. ``l``
    and ``u`` count for a gap that the tolerance somewhere in the box would cover.
    """
    symbolic = state.face.symbolic
    box = state.box
    largest = [(max(abs(b[0]), abs(b[1])), max(abs(b[0]), abs(b[1]))) for b in box[:2]]
    tol_hi = _tolerance(largest, scale_invariant, state.face.arithmetic)
    out: set[int] = set()
    for obligation in obligations:
        out |= symbolic.base_variables(obligation.gap.variables())
        if state.enclose(obligation.gap)[0] >= -tol_hi:
            out |= {L_INDEX, U_INDEX}
        for constraint in obligation.constraints:
            lo, hi = state.enclose(constraint[0], facts=False)
            settled = lo >= 0.0 if constraint[1] else hi <= 0.0
            if not settled:
                out |= symbolic.base_variables(constraint[0].variables())
    return out


def _split(box: list[Bounds], dim: int) -> tuple[list[Bounds], list[Bounds]]:
    lo, hi = box[dim]
    mid = lo + (hi - lo) / 2.0
    left, right = list(box), list(box)
    left[dim] = (lo, mid)
    right[dim] = (mid, hi)
    return left, right


def _describe(box: Sequence[Bounds], ranges: Sequence[ParamRange]) -> str:
    names = ["l", "u", *(r.name for r in ranges)]
    return ", ".join(f"{n} ∈ [{lo:.6g}, {hi:.6g}]" for n, (lo, hi) in zip(names, box, strict=False))


def _branch_and_bound(
    task: _Task, faces: list[_Face], scale_invariant: bool, budget: int, domain: Domain
) -> PartVerdict:
    case = str(task.stability) if task.stability is not None else TRANSFORM_CASE
    counter = itertools.count()
    worst: list[tuple[float, int]] = []
    widest: collections.deque[int] = collections.deque()
    items: dict[int, tuple[_Face, list[Bounds], list[_Obligation]]] = {}
    for face in faces:
        if face.obligations:
            key = next(counter)
            items[key] = (face, face.root, face.obligations)
            heapq.heappush(worst, (-math.inf, key))
            widest.append(key)
    boxes = 0
    tries = {id(face): [_ROUNDING_TRIES] for face in faces}
    stuck: str | None = None
    while items:
        if boxes >= budget:
            face, box, _ = next(iter(items.values()))
            note = f"box budget ({budget}) spent; open: {_describe(box, task.ranges)} on {face.name}"
            return PartVerdict(case, task.side, UNDECIDED, domain, boxes, note=note)
        key = _pop(worst, widest, items, boxes % 2 == 0)
        face, box, pending = items.pop(key)
        boxes += 1
        state = _BoxState(face, box)
        if face.width is not None and face.symbolic.enclose(face.width, state.full, facts=False)[1] <= 0.0:
            # at most the diagonal l = u meets the box, and every point of it is also in a
            # neighbouring box that reaches into l < u (the boxes tile the plane)
            continue
        tol = _tolerance(box, scale_invariant, face.arithmetic)
        still = []
        priority = math.inf
        for obligation in pending:
            margin = _attempt(obligation, state, tol, scale_invariant)
            if margin is not None:
                still.append(obligation)
                priority = min(priority, margin)
        if not still:
            continue
        found = _candidate(task, face, box, still, scale_invariant, tries[id(face)])
        if found is not None:
            return PartVerdict(case, task.side, COUNTEREXAMPLE, domain, boxes, counterexample=found)
        relevant = _relevant(still, state, scale_invariant) & set(face.free)
        dim = max(relevant, key=lambda d: _relative_width(box, face.root, d), default=None)
        if dim is None or _relative_width(box, face.root, dim) < _MIN_RELATIVE_WIDTH:
            stuck = (
                stuck or f"no proof at {_describe(box, task.ranges)} on {face.name} (box too small to split)"
            )
            continue
        for child in _split(box, dim):
            child_key = next(counter)
            items[child_key] = (face, child, still)
            heapq.heappush(worst, (priority, child_key))
            widest.append(child_key)
    if stuck is not None:
        return PartVerdict(case, task.side, UNDECIDED, domain, boxes, note=stuck)
    return PartVerdict(case, task.side, PROVED, domain, boxes)


def _pop(
    worst: list[tuple[float, int]],
    widest: collections.deque[int],
    items: Mapping[int, object],
    by_priority: bool,
) -> int:
    while True:
        if by_priority and worst:
            key = heapq.heappop(worst)[1]
        elif widest:
            key = widest.popleft()
        else:
            key = heapq.heappop(worst)[1]
        if key in items:
            return key


def _relative_width(box: Sequence[Bounds], root: Sequence[Bounds], dim: int) -> float:
    span = root[dim][1] - root[dim][0]
    return (box[dim][1] - box[dim][0]) / span if span > 0 else 0.0


# -- entry points -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def prove_part(
    stability: Stability | None,
    side: str,
    line: Line | None,
    transform: BoundsTransform | None = None,
    ranges: tuple[ParamRange, ...] = (),
    *,
    budget: int = DEFAULT_BUDGET,
    bound: float = DEFAULT_BOUND,
) -> PartVerdict:
    """Prove one part: a ``side`` line for one stability case, or (``stability=None``,
    ``side="transform"``) that ``transform`` widens. Cached by its arguments (all values).

    :param stability: the case, or ``None`` for the transform's widening.
    :param side: ``"lower"``, ``"upper"`` or ``"transform"``.
    :param line: the line (``None`` for the transform part).
    :param transform: the widening applied to ``[l, u]`` before the case is decided.
    :param ranges: the parameters the expressions use, with the ranges to prove over.
    :param budget: boxes before the outcome is ``undecided``.
    :param bound: ``|l|, |u| <= bound`` where the lines are not scale invariant.
    :returns: the verdict; a counterexample's ``relaxation`` name is empty (the caller's to fill).
    """
    case = str(stability) if stability is not None else TRANSFORM_CASE
    exprs = (list(line.expressions()) if line is not None else []) + (
        [transform.lower, transform.upper] if transform is not None else []
    )
    if any(e.is_opaque() for e in exprs):
        return PartVerdict(case, side, SAMPLED, note="opaque callables: sampled, not proved")
    scale_invariant = _scale_invariant(line, transform)
    domain = Domain(scale_invariant, bound, ranges)
    task = _Task(stability, side, line, transform, ranges)
    # first the real values (smaller normal forms: what is not proved there is decided cheaply), then
    # the values as computed in each arithmetic, which is what the verdict is about
    boxes = 0
    for models in ([None], ARITHMETICS):
        try:
            faces = _faces(stability, side, line, transform, ranges, scale_invariant, bound, models)
        except NotRational as error:
            return PartVerdict(case, side, UNDECIDED, domain, note=f"no normal form: {error}")
        verdict = _branch_and_bound(task, faces, scale_invariant, budget, domain)
        boxes += verdict.boxes
        if verdict.outcome != PROVED:
            break
    return evolve(verdict, boxes=boxes)


def parameter_ranges(
    params: Sequence[ParamSpec], values: dict[str, float], used: frozenset[str], clip: float = PARAM_CLIP
) -> tuple[ParamRange, ...]:
    """The ranges of the parameters in ``used``, in declaration order."""
    return tuple(ParamRange.of(p, values.get(p.name, p.default), clip) for p in params if p.name in used)


@frozen
class SoundnessVerdict:
    """What the prover established about one relaxation (its whole parameter family).

    :param relaxation: the relaxation's name.
    :param parts: one verdict per stability case and side, and one for the transform if any.
    :param counterexample: the first confirmed violation: from a part, from the float64 check
        of the probe grid at the current parameter values, or from the sampled check of
        opaque lines.
    """

    relaxation: str
    parts: tuple[PartVerdict, ...]
    counterexample: Counterexample | None = None

    @property
    def outcome(self) -> str:
        """``counterexample`` if any, else ``undecided`` if any part is, else ``sampled`` if any, else ``proved``."""
        if self.counterexample is not None:
            return COUNTEREXAMPLE
        outcomes = {p.outcome for p in self.parts}
        for outcome in (UNDECIDED, SAMPLED):
            if outcome in outcomes:
                return outcome
        return PROVED

    @property
    def proved(self) -> bool:
        return self.outcome == PROVED

    def part(self, case: str, side: str) -> PartVerdict:
        for part in self.parts:
            if part.case == case and part.side == side:
                return part
        raise KeyError(f"no part for case {case!r}, side {side!r}")

    def __str__(self) -> str:
        lines = [f"{self.relaxation}: {self.outcome}"]
        lines += [f"  {p}" for p in self.parts]
        if self.counterexample is not None:
            lines.append(f"  counterexample: {self.counterexample}")
        return "\n".join(lines)


#: Verdicts by (spec key, budget, bound); relaxations with opaque callables are not cached.
_VERDICTS: dict[tuple[object, ...], SoundnessVerdict] = {}
_VERDICTS_MAX = 4096


def prove_soundness(
    relaxation: ReluRelaxation, *, budget: int = DEFAULT_BUDGET, bound: float = DEFAULT_BOUND
) -> SoundnessVerdict:
    """Prove every part of ``relaxation`` over its parameter ranges; see the module docstring.

    Then, at the current parameter values, the float64 check of the probe grid
    (:func:`~relaxlab.properties.soundness.probe_pairs`, which includes ``l = u = 0`` and
    zero-width pairs, where a real-valued proof says nothing about NaN or overflow); and for
    opaque lines the sampled check. Cached by :meth:`~relaxlab.core.relaxation.ReluRelaxation.spec_key`.

    :param budget: boxes per part before it is ``undecided``.
    :param bound: the ``|l|, |u|`` domain where lines are not scale invariant (and of the probe grid).
    """
    opaque = any(e.is_opaque() for e in relaxation.expressions())
    key = (relaxation.spec_key(), budget, bound)
    cached = None if opaque else _VERDICTS.get(key)
    if cached is None:
        cached = _prove(relaxation, budget, bound)
        if not opaque:
            if len(_VERDICTS) >= _VERDICTS_MAX:
                _VERDICTS.clear()
            _VERDICTS[key] = cached
    return _renamed(cached, relaxation.name)


def parts_proved(relaxation: ReluRelaxation) -> bool:
    """Whether every part of ``relaxation`` is proved (the branch and bound of :func:`prove_soundness` with
    its defaults, without the probe grid: no tensor is made unless a violation needs confirming).

    What the verdict cache asks before it believes a cached "sound" (:mod:`relaxlab.properties.cache`).
    """
    if any(e.is_opaque() for e in relaxation.expressions()):
        return False
    return all(part.outcome == PROVED for part in _parts(relaxation, DEFAULT_BUDGET, DEFAULT_BOUND))


def _parts(relaxation: ReluRelaxation, budget: int, bound: float) -> list[PartVerdict]:
    """The verdict of every part: the transform's widening (if any), then each case and side."""
    values = relaxation.parameters
    transform = relaxation.transform
    t_exprs = [transform.lower, transform.upper] if transform is not None else []

    def ranges(exprs: Sequence[Expr]) -> tuple[ParamRange, ...]:
        used = frozenset().union(*(e.variables() for e in exprs)) - BOUND_VARIABLES
        return parameter_ranges(relaxation.params, values, used)

    parts = []
    widens = False
    if transform is not None:
        widening = prove_part(None, "transform", None, transform, ranges(t_exprs), budget=budget, bound=bound)
        parts.append(widening)
        widens = widening.outcome == PROVED
    for stability, case in relaxation.cases():
        for side, ln in (("lower", case.lower), ("upper", case.upper)):
            part = (
                _proved_on_every_pair(stability, side, ln, ranges(list(ln.expressions())), budget, bound)
                if widens
                else None
            )
            if part is None:
                exprs = [*ln.expressions(), *t_exprs]
                part = prove_part(stability, side, ln, transform, ranges(exprs), budget=budget, bound=bound)
            parts.append(part)
    return parts


def _prove(relaxation: ReluRelaxation, budget: int, bound: float) -> SoundnessVerdict:
    values = relaxation.parameters
    parts = _parts(relaxation, budget, bound)
    counterexample = None
    confirmed_parts = []
    for part in parts:
        if part.counterexample is not None:
            found = evolve(
                part.counterexample,
                relaxation=relaxation.name,
                params=tuple(sorted({**values, **dict(part.counterexample.params)}.items())),
            )
            setting = relaxation.with_params(**dict(found.params)) if relaxation.params else relaxation
            if (
                find_counterexample(setting, [found.lower], [found.upper], found.arithmetic) is None
            ):  # pragma: no cover
                part = evolve(
                    part,
                    outcome=UNDECIDED,
                    counterexample=None,
                    note=f"a violation at {found} was not confirmed by find_counterexample",
                )
            else:
                part = evolve(part, counterexample=found)
                counterexample = counterexample or found
        confirmed_parts.append(part)
    for kind in ARITHMETICS:  # the probe grid (l = u = 0, zero widths, where NaN would show) as computed
        counterexample = counterexample or find_counterexample(relaxation, *probe_pairs(bound), kind.name)
    if counterexample is None and any(p.outcome == SAMPLED for p in confirmed_parts):
        counterexample = sampled_check(relaxation, max_magnitude=bound)
    return SoundnessVerdict(relaxation.name, tuple(confirmed_parts), counterexample)


def _proved_on_every_pair(
    stability: Stability, side: str, line: Line, ranges: tuple[ParamRange, ...], budget: int, bound: float
) -> PartVerdict | None:
    """The part of a line under a proved widening, from the line alone, or ``None``.

    A line sound for *every* ``(l', u')`` of its case (at every scale) is sound on the widened
    bounds whatever the transform: the case is decided on ``(l', u')`` and ``x`` ranges over
    ``[l, u]``, inside ``[l', u']``. That proof does not depend on the transform (it is shared by
    every relaxation with these lines, and cached), and it is what decides lines like ``λx - λl``,
    whose composition with a parametrized transform leaves the branch and bound undecided. A line
    proved only on ``|l'|, |u'| <= bound`` does not cover widened bounds beyond it: ``None``.
    """
    alone = prove_part(stability, side, line, None, ranges, budget=budget, bound=bound)
    if alone.outcome != PROVED or alone.domain is None or not alone.domain.scale_invariant:
        return None
    return evolve(alone, note="on every (l', u') of the case, so on the widened bounds")


def _renamed(verdict: SoundnessVerdict, name: str) -> SoundnessVerdict:
    if verdict.relaxation == name:
        return verdict

    def rename(found: Counterexample | None) -> Counterexample | None:
        return None if found is None else evolve(found, relaxation=name)

    parts = tuple(
        evolve(p, counterexample=rename(p.counterexample)) if p.counterexample else p for p in verdict.parts
    )
    return SoundnessVerdict(name, parts, rename(verdict.counterexample))


__all__ = [
    "PROVED",
    "COUNTEREXAMPLE",
    "UNDECIDED",
    "SAMPLED",
    "OUTCOMES",
    "DEFAULT_BOUND",
    "DEFAULT_BUDGET",
    "PARAM_CLIP",
    "Domain",
    "ParamRange",
    "PartVerdict",
    "SoundnessVerdict",
    "homogeneity",
    "parameter_ranges",
    "parts_proved",
    "prove_part",
    "prove_soundness",
]
