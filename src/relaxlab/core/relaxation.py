"""ReLU relaxations declared as data.

A :class:`ReluRelaxation` gives, for each stability case (see
:mod:`relaxlab.core.stability`), a lower and an upper :class:`Line`
``slope(l, u)·x + offset(l, u)`` whose coefficients are expressions of
:mod:`relaxlab.core.expr`. It also says how intermediate bounds are obtained
(``"backsub"`` or ``"interval"``) and may widen ``[l, u]`` before the ReLU
(:class:`BoundsTransform`). Parameters (``gamma``, ``omega``, ``F``) are
declared with :class:`ParamSpec` and set with :meth:`ReluRelaxation.with_params`.

Shapes: every tensor method takes ``lower``/``upper`` of any shape and returns
tensors of that shape, dtype and device.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from attrs import evolve, field, frozen, validators
from torch import Tensor

from relaxlab.core.expr import BOUND_VARIABLES, MEMO, Const, Div, Expr, ExprLike, Mul, Opaque, Var, as_expr
from relaxlab.core.stability import ALL_CASES, CaseWeights, Stability

#: Readable names: letters, digits, spaces and ``-_().,+=/`` (``CROWN-IBP (R)``, ``LooseIBP-DC``).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _\-().,+=/λκ·]*$"

INTERMEDIATE_MODES = ("backsub", "interval")

# A point inside each case where every declared expression is well defined. Elements not in
# a case are evaluated there, so that no NaN/inf from an unselected case can reach a gradient.
_REPRESENTATIVE = {
    Stability.NEGATIVE: (-2.0, -1.0),
    Stability.UNSTABLE: (-1.0, 1.0),
    Stability.POSITIVE: (1.0, 2.0),
}


def _format_coefficient(expr: Expr) -> str:
    text = str(expr)
    if text.startswith("(") and text.endswith(")"):
        return text
    return f"({text})" if any(op in text for op in (" + ", " - ", " if ")) else text


@frozen
class Line:
    """The line ``slope(l, u)·x + offset(l, u)``."""

    slope: Expr = field(converter=as_expr)
    offset: Expr = field(converter=as_expr)

    def evaluate(self, env: Mapping[str, Any]) -> tuple[Any, Any]:
        return self.slope.evaluate(env), self.offset.evaluate(env)

    def expressions(self) -> tuple[Expr, Expr]:
        return (self.slope, self.offset)

    def substitute(self, mapping: Mapping[str, Expr]) -> Line:
        return Line(self.slope.substitute(mapping), self.offset.substitute(mapping))

    def __str__(self) -> str:
        if self.slope.is_zero():
            return str(self.offset)
        slope = "" if self.slope.is_one() else ("-" if self.slope == Const(-1.0) else _format_coefficient(self.slope))
        head = f"{slope}x"
        if self.offset.is_zero():
            return head
        offset = str(self.offset)
        if offset.startswith("-") and " " not in offset:
            return f"{head} - {offset[1:]}"
        return f"{head} + {_format_coefficient(self.offset)}"


def line(slope: ExprLike, offset: ExprLike = 0.0) -> Line:
    """Shorthand for :class:`Line`."""
    return Line(as_expr(slope), as_expr(offset))


@frozen
class CaseBounds:
    """The lower and upper line used for one stability case."""

    lower: Line
    upper: Line

    def lines(self) -> tuple[Line, Line]:
        return (self.lower, self.upper)

    def __str__(self) -> str:
        if self.lower == self.upper:
            return f"y = {self.lower}"
        return f"{self.lower} <= y <= {self.upper}"


@frozen
class BoundsTransform:
    """Replace ``[l, u]`` by ``[lower(l, u), upper(l, u)]`` before the ReLU.

    It must widen: ``lower(l, u) <= l`` and ``upper(l, u) >= u`` (checked by
    :func:`relaxlab.properties.soundness.check_soundness`).
    """

    lower: Expr = field(converter=as_expr)
    upper: Expr = field(converter=as_expr)

    def __str__(self) -> str:
        return f"[{self.lower}, {self.upper}]"


@frozen
class ParamSpec:
    """A parameter of a relaxation with its default and admissible range.

    :param name: the name used by :class:`~relaxlab.core.expr.Param` nodes.
    :param default: the default value.
    :param minimum: smallest admissible value (``None``: unbounded).
    :param strict: whether ``minimum`` itself is excluded (``F > 0``).
    :param description: one line for listings.
    """

    name: str
    default: float
    minimum: float | None = None
    strict: bool = False
    maximum: float | None = None
    description: str = ""

    def validate(self, value: float, relaxation: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{relaxation}: parameter {self.name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{relaxation}: parameter {self.name} must be finite, got {value!r}")
        if self.minimum is not None:
            if (self.strict and value <= self.minimum) or value < self.minimum:
                op = ">" if self.strict else ">="
                raise ValueError(
                    f"{relaxation}: parameter {self.name} must be {op} {_fmt(self.minimum)}, got {_fmt(value)}"
                )
        if self.maximum is not None and value > self.maximum:
            raise ValueError(
                f"{relaxation}: parameter {self.name} must be <= {_fmt(self.maximum)}, got {_fmt(value)}"
            )
        return value


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


#: Names of the four coefficients, in order.
COEFFICIENT_NAMES = ("lower_slope", "lower_offset", "upper_slope", "upper_offset")


@frozen(eq=False)  # holds tensors: identity equality
class RelaxationTensors:
    """Per-neuron line coefficients, the same shape as the bounds they came from.

    ``zeros`` optionally names coefficients that are exactly 0 everywhere (an engine may skip
    work for them); two coefficients with equal values may be the same tensor object.
    """

    lower_slope: Tensor
    lower_offset: Tensor
    upper_slope: Tensor
    upper_offset: Tensor
    zeros: frozenset[str] = frozenset()

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.lower_slope, self.lower_offset, self.upper_slope, self.upper_offset))


def _check_name(instance: object, attribute: object, value: str) -> None:
    if not re.match(NAME_PATTERN, value):
        raise ValueError(
            f"relaxation name {value!r} is not allowed: use letters, digits, spaces and -_().,+=/"
        )


@frozen(kw_only=True)
class ReluRelaxation:
    """A ReLU relaxation: one :class:`CaseBounds` per stability case.

    :param name: the name the literature uses (``CROWN-0-C``); look-up ignores case, spaces and punctuation.
    :param negative: lines for ``u <= 0``.
    :param unstable: lines for ``l < 0 < u``.
    :param positive: lines for ``l >= 0`` (and ``u > 0``).
    :param intermediate: ``"backsub"`` (intermediate bounds by full backsubstitution) or
        ``"interval"`` (by interval arithmetic, the "(R)" variants).
    :param transform: optional widening of ``[l, u]`` before the ReLU; lines and the
        stability case are then evaluated on the widened bounds.
    :param params: declared parameters.
    :param values: current parameter values as ``(name, value)`` pairs (defaults fill the rest).
    :param summary: one line for listings and docs.
    :param reference: where it comes from (paper, section).
    """

    name: str = field(validator=_check_name)
    negative: CaseBounds
    unstable: CaseBounds
    positive: CaseBounds
    intermediate: str = field(default="backsub", validator=validators.in_(INTERMEDIATE_MODES))
    transform: BoundsTransform | None = None
    params: tuple[ParamSpec, ...] = field(default=(), converter=tuple)
    values: tuple[tuple[str, float], ...] = field(default=(), converter=lambda v: tuple(sorted(dict(v).items())))
    summary: str = field(default="", eq=False)
    reference: str = field(default="", eq=False)
    # Derived once in __attrs_post_init__ (evaluation runs on every bound computation).
    _plan: tuple[Groups | str, ...] = field(init=False, eq=False, repr=False)
    _parameters: dict[str, float] = field(init=False, eq=False, repr=False)
    _is_interval: bool = field(init=False, eq=False, repr=False)
    _first_equal: tuple[int, ...] = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        declared = {p.name for p in self.params}
        if len(declared) != len(self.params):
            raise ValueError(f"{self.name}: a parameter is declared twice")
        used = set().union(*(e.variables() for e in self.expressions())) - BOUND_VARIABLES
        undeclared = used - declared
        if undeclared:
            raise ValueError(
                f"{self.name}: expressions use undeclared parameter(s) {sorted(undeclared)}; "
                "declare them in params=(ParamSpec(...),)"
            )
        specs = {p.name: p for p in self.params}
        for key, value in self.values:
            if key not in specs:
                raise ValueError(f"{self.name}: unknown parameter {key!r}; it has {sorted(specs) or 'none'}")
            specs[key].validate(value, self.name)
        for spec in self.params:
            spec.validate(spec.default, self.name)
        # Fill in defaults so equal settings compare equal however they were given.
        current = dict(self.values)
        full = tuple(sorted((p.name, float(current.get(p.name, p.default))) for p in self.params))
        object.__setattr__(self, "values", full)
        plan = _evaluation_plan(self.negative, self.unstable, self.positive)
        object.__setattr__(self, "_plan", plan)
        # For each coefficient, the first coefficient with an equal plan: its tensor is shared.
        object.__setattr__(self, "_first_equal", tuple(plan.index(groups) for groups in plan))
        object.__setattr__(self, "_parameters", {p.name: dict(full)[p.name] for p in self.params})
        object.__setattr__(self, "_is_interval",
                           all(ln.slope.is_zero() for _, case in self.cases() for ln in case.lines()))

    # -- structure ----------------------------------------------------------
    def case(self, stability: Stability) -> CaseBounds:
        """The lines for one stability case."""
        return {
            Stability.NEGATIVE: self.negative,
            Stability.UNSTABLE: self.unstable,
            Stability.POSITIVE: self.positive,
        }[stability]

    def cases(self) -> tuple[tuple[Stability, CaseBounds], ...]:
        return tuple((s, self.case(s)) for s in Stability)

    def expressions(self) -> Iterator[Expr]:
        """Every coefficient expression, the transform's included."""
        for _, case in self.cases():
            for ln in case.lines():
                yield from ln.expressions()
        if self.transform is not None:
            yield self.transform.lower
            yield self.transform.upper

    def effective_case(self, stability: Stability) -> CaseBounds:
        """The lines of a case as functions of the *raw* ``(l, u)``, transform substituted."""
        case = self.case(stability)
        if self.transform is None:
            return case
        mapping = {"l": self.transform.lower, "u": self.transform.upper}
        return CaseBounds(case.lower.substitute(mapping), case.upper.substitute(mapping))

    @property
    def is_interval(self) -> bool:
        """Every line of every case has slope identically 0.

        Backsubstitution then stops at every ReLU and equals interval
        arithmetic, so the engine may take its interval fast path.
        """
        return self._is_interval

    @property
    def parameters(self) -> dict[str, float]:
        """Current parameter values, defaults filled in."""
        return dict(self._parameters)

    @property
    def label(self) -> str:
        """The name with non-default parameter values, e.g. ``LooseIBP-C(omega=0.5)``."""
        current = dict(self.values)
        changed = [f"{p.name}={_fmt(current[p.name])}" for p in self.params if current.get(p.name, p.default) != p.default]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def spec_key(self) -> tuple[Any, ...]:
        """Everything but the name and docs: two relaxations with equal keys are aliases."""
        return (self.negative, self.unstable, self.positive, self.intermediate, self.transform, self.params,
                tuple(sorted(self.parameters.items())))

    def with_params(self, **values: float) -> ReluRelaxation:
        """A copy with some parameters set (validated: a bad value raises ``ValueError``)."""
        if not self.params and values:
            raise ValueError(f"{self.name} has no parameters, got {sorted(values)}")
        return evolve(self, values={**dict(self.values), **values})

    # -- evaluation ---------------------------------------------------------
    def transform_bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """The bounds the lines are evaluated on (``[l, u]`` unless a transform widens them)."""
        if self.transform is None:
            return lower, upper
        env = {"l": lower, "u": upper, **self.parameters}
        return (_broadcast(self.transform.lower.evaluate(env), lower),
                _broadcast(self.transform.upper.evaluate(env), upper))

    def coefficients(self, lower: Tensor, upper: Tensor) -> RelaxationTensors:
        """Line coefficients for raw pre-activation bounds; the case is chosen per element.

        For every ``x`` in ``[lower, upper]``:
        ``lower_slope·x + lower_offset <= relu(x) <= upper_slope·x + upper_offset``.
        Differentiable; never NaN for finite ``lower <= upper``. A coefficient that is
        the same constant in every case comes back as an expanded (zero-copy) tensor.
        """
        values, zeros = self.coefficient_tensors(lower, upper)
        return RelaxationTensors(*values, zeros=zeros)

    def coefficient_tensors(self, lower: Tensor, upper: Tensor) -> tuple[tuple[Tensor, ...], frozenset[str]]:
        """:meth:`coefficients` as plain values: the four tensors and the names known to be zero.

        Plain values, so that ``torch.compile`` can trace it into one fused kernel.
        """
        lb, ub = self.transform_bounds(lower, upper)
        weights = CaseWeights(lb, ub)
        params = self._parameters
        envs: dict[frozenset[Stability], dict[str, Any]] = {}

        def environment(cases: frozenset[Stability], partial: bool) -> dict[str, Any]:
            # Partial expressions (divisions, opaque callables) are evaluated with the elements
            # outside their cases moved to a point inside one of them, so that no inf from a
            # division there can reach the result or a gradient (0·inf is NaN). Exact for
            # weights in {0, 1}. One environment (and one memo of named sub-expressions) per set.
            key = cases if partial else ALL_CASES
            if key not in envs:
                l_env, u_env = lb, ub
                weight = weights[key]
                if weight is not None:
                    rep_l, rep_u = _REPRESENTATIVE[min(key, key=_CASE_ORDER.index)]
                    outside = 1.0 - weight
                    l_env = (lb * weight).add_(outside, alpha=rep_l)
                    u_env = (ub * weight).add_(outside, alpha=rep_u)
                envs[key] = {"l": l_env, "u": u_env, **params, MEMO: {}}
            return envs[key]

        out: list[Tensor] = []
        zeros = set()
        for index, (name, groups) in enumerate(zip(COEFFICIENT_NAMES, self._plan, strict=True)):
            first = self._first_equal[index]
            if first < index:  # the same plan as an earlier coefficient (DeepZ's two slopes)
                out.append(out[first])
                if COEFFICIENT_NAMES[first] in zeros:
                    zeros.add(name)
                continue
            if isinstance(groups, str):  # max(l, 0) or max(u, 0), see _evaluation_plan
                out.append(torch.relu(lb if groups == "l" else ub))
                continue
            # Cases are combined arithmetically, sum of weight·value with exactly one weight equal
            # to 1, which is exact (1·v + 0·w = v) and on CPU much faster than torch.where. After
            # the first term the sum is accumulated in place (addcmul_: one pass per case), and a
            # constant factor c of c·E rides along as addcmul's scalar (c·1·E rounds as c·E does).
            total: Tensor | float = 0.0
            owned = False  # whether total is a tensor of our own, safe to update in place
            for cases, scale, factor, partial in groups:
                weight = weights[cases]
                value = factor.evaluate(environment(cases, partial))
                if weight is None:
                    total = value if scale == 1.0 else value * scale
                    break
                if not isinstance(value, Tensor):
                    constant = scale * value
                    if constant == 0.0:
                        continue
                    if isinstance(total, float):
                        total = weight if constant == 1.0 else weight * constant
                        owned = constant != 1.0
                    elif owned:
                        total.add_(weight, alpha=constant)
                    else:
                        total, owned = torch.add(total, weight, alpha=constant), True
                elif isinstance(total, float):
                    total, owned = weight * value, True
                    if scale != 1.0:
                        total.mul_(scale)
                elif owned:
                    total.addcmul_(weight, value, value=scale)
                else:
                    total, owned = torch.addcmul(total, weight, value, value=scale), True
            if isinstance(total, Tensor):
                out.append(_broadcast(total, lb))
            else:
                if total == 0.0:
                    zeros.add(name)
                out.append(lb.new_tensor(float(total)).expand_as(lb))
        return tuple(out), frozenset(zeros)

    def __str__(self) -> str:
        return self.label


_CASE_ORDER = list(Stability)


def _constant_factor(expr: Expr) -> tuple[float, Expr]:
    """``(c, E)`` with ``expr = c·E`` evaluating to the same floats as ``c * E.evaluate()``.

    Factors ±1 anywhere in a product are pulled out (IEEE products are sign-symmetric, so
    ``(-a)·b`` is exactly ``-(a·b)``); any other constant only at the top.
    """
    sign, inner = _split_sign(expr)
    if isinstance(inner, Mul):
        if isinstance(inner.left, Const):
            return sign * inner.left.value, inner.right
        if isinstance(inner.right, Const):
            return sign * inner.right.value, inner.left
    return sign, inner


def _split_sign(expr: Expr) -> tuple[float, Expr]:
    if not isinstance(expr, Mul):
        return 1.0, expr
    for const, other in ((expr.left, expr.right), (expr.right, expr.left)):
        if isinstance(const, Const) and const.value in (1.0, -1.0):
            sign, inner = _split_sign(other)
            return const.value * sign, inner
    left_sign, left = _split_sign(expr.left)
    right_sign, right = _split_sign(expr.right)
    if left is expr.left and right is expr.right:
        return 1.0, expr
    return left_sign * right_sign, Mul(left, right)

#: ``(cases, c, E, partial)`` groups of one coefficient: the cases sharing an expression ``c·E``.
Groups = tuple[tuple[frozenset[Stability], float, Expr, bool], ...]


#: Coefficients that are ``max(v, 0)`` of a bound ``v`` by the case convention (for ``l <= u``):
#: ``u`` where ``u > 0`` (UNSTABLE and POSITIVE), else 0; ``l`` on POSITIVE, else 0 (``l > 0``
#: implies POSITIVE, and ``l = 0`` gives 0 either way). IBP's offsets, computed as one relu.
_RELU_PATTERNS = {
    frozenset({(frozenset({Stability.NEGATIVE}), Const(0.0)),
               (frozenset({Stability.UNSTABLE, Stability.POSITIVE}), Var("u"))}): "u",
    frozenset({(frozenset({Stability.NEGATIVE, Stability.UNSTABLE}), Const(0.0)),
               (frozenset({Stability.POSITIVE}), Var("l"))}): "l",
}


@functools.lru_cache(maxsize=4096)
def _evaluation_plan(negative: CaseBounds, unstable: CaseBounds, positive: CaseBounds) -> tuple[Groups | str, ...]:
    """For each of the four coefficients, the stability cases grouped by equal expressions.

    A group that covers every case needs no weight; ``partial`` marks expressions that may be
    undefined outside their cases (a division, an opaque callable) and so need a representative
    point there. A coefficient that is ``max(l, 0)`` or ``max(u, 0)`` is given as ``"l"``/``"u"``.
    """
    plans = []
    cases = dict(zip(Stability, (negative, unstable, positive), strict=True))
    for index in range(4):
        grouped: dict[Expr, set[Stability]] = {}
        for stability, case in cases.items():
            expr = case.lines()[index // 2].expressions()[index % 2]
            grouped.setdefault(expr, set()).add(stability)
        relu_of = _RELU_PATTERNS.get(frozenset((frozenset(m), e) for e, m in grouped.items()))
        if relu_of is not None:
            plans.append(relu_of)
            continue
        groups = []
        for expr, members in grouped.items():
            frozen_members = frozenset(members)
            partial = frozen_members != ALL_CASES and any(isinstance(node, (Div, Opaque)) for node in expr.walk())
            scale, factor = _constant_factor(expr)
            groups.append((frozen_members, scale, factor, partial))
        # The group covering all cases (if any) is the whole answer; evaluate it first.
        groups.sort(key=lambda group: group[0] != ALL_CASES)
        plans.append(tuple(groups))
    return tuple(plans)


def _broadcast(value: Any, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        if value.dtype != like.dtype:
            value = value.to(like.dtype)
        return value if value.shape == like.shape else value.expand_as(like)
    return torch.full_like(like, float(value))

