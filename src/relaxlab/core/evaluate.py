"""Evaluating a relaxation's lines on tensors: the coefficient evaluator.

A :class:`~relaxlab.core.relaxation.ReluRelaxation` is plain data; this module turns it into
numbers (the spec's own ``coefficients`` and ``transform_bounds`` call it; it knows the spec only
as :class:`Spec`, what it reads of one). For each relaxation an *evaluation plan* is derived once
(cases with equal expressions merged, constant factors folded, ``max(l, 0)``/``max(u, 0)``
offsets recognised) and kept outside the spec, in a bounded cache keyed by the spec's value (its
hash is computed once per spec: ``ReluRelaxation`` caches it); ``torch.compile`` traces through it.

Shapes: every function takes ``lower``/``upper`` of any shape and returns tensors of that
shape, dtype and device. torch is imported when the first tensor is evaluated, not with the spec.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import frozen

from relaxlab.core import expr as ex
from relaxlab.core.relaxer import COEFFICIENT_NAMES, RelaxationTensors
from relaxlab.core.scaling import BOUNDED_DOMAIN, line_is_scale_invariant, transform_is_scale_invariant
from relaxlab.core.stability import ALL_CASES, CaseWeights, Stability

if TYPE_CHECKING:
    from torch import Tensor


# The members of these protocols are read-only properties: the specs that satisfy them are
# frozen attrs values, whose fields cannot be assigned.
class SpecLine(Protocol):
    """A line: ``slope·x + offset``."""

    @property
    def slope(self) -> ex.Expr: ...
    @property
    def offset(self) -> ex.Expr: ...

    def expressions(self) -> tuple[ex.Expr, ex.Expr]: ...


class SpecCase(Hashable, Protocol):
    """The lower and upper line of one stability case."""

    def lines(self) -> tuple[SpecLine, SpecLine]: ...


class SpecTransform(Protocol):
    @property
    def lower(self) -> ex.Expr: ...
    @property
    def upper(self) -> ex.Expr: ...


class SpecParam(Protocol):
    """A declared parameter (a :class:`~relaxlab.core.relaxation.ParamSpec`)."""

    @property
    def name(self) -> str: ...
    @property
    def default(self) -> float: ...
    @property
    def minimum(self) -> float | None: ...
    @property
    def strict(self) -> bool: ...
    @property
    def start(self) -> ex.Expr | None: ...

    def proved_range(self, current: float) -> tuple[float, float]: ...


class Spec(Hashable, Protocol):
    """What the evaluator reads of a relaxation (a :class:`~relaxlab.core.relaxation.ReluRelaxation`)."""

    @property
    def name(self) -> str: ...
    @property
    def negative(self) -> SpecCase: ...
    @property
    def unstable(self) -> SpecCase: ...
    @property
    def positive(self) -> SpecCase: ...
    @property
    def transform(self) -> SpecTransform | None: ...
    @property
    def values(self) -> tuple[tuple[str, float], ...]: ...
    @property
    def params(self) -> tuple[SpecParam, ...]: ...

    def cases(self) -> Sequence[tuple[Stability, SpecCase]]: ...

    def expressions(self) -> Iterator[ex.Expr]: ...


# A point inside each case where every declared expression is well defined. Elements not in
# a case are evaluated there, so that no NaN/inf from an unselected case can reach a gradient.
_REPRESENTATIVE = {
    Stability.NEGATIVE: (-2.0, -1.0),
    Stability.UNSTABLE: (-1.0, 1.0),
    Stability.POSITIVE: (1.0, 2.0),
}


_CASE_ORDER = list(Stability)


@frozen(eq=False)
class Plan:
    """What evaluating one relaxation needs, derived once from its spec.

    :param groups: per coefficient, the stability cases grouped by equal expressions (or
        ``"l"``/``"u"`` for ``max(l, 0)``/``max(u, 0)``).
    :param first_equal: per coefficient, the first coefficient with an equal plan (its tensor
        is shared).
    :param parameters: current parameter values, defaults filled in.
    :param is_interval: every line of every case has slope identically 0.
    :param bound: ``|l|, |u| <= bound`` is where the relaxation's soundness is proved when some line
        or its transform is not scale invariant (:mod:`relaxlab.core.scaling`); ``None``: everywhere.
    :param computed_apart: parameters in a sub-expression of parameters only (``θ/2000``, other than a
        sign change): as numbers it is computed in float64, as per-element tensors in the bounds' dtype.
    """

    groups: tuple[Groups | str, ...]
    first_equal: tuple[int, ...]
    parameters: dict[str, float]
    is_interval: bool
    bound: float | None = None
    computed_apart: frozenset[str] = frozenset()


#: Plans of the specs seen, by identity: the look-up ``torch.compile`` traces (it does not trace into
#: ``lru_cache``); each entry holds its spec, so an id is never another spec's. Bounded, a cache only.
_BY_IDENTITY: dict[int, tuple[Spec, Plan]] = {}


def plan_of(relaxation: Spec) -> Plan:
    """The evaluation plan of ``relaxation`` (derived on first use, then looked up by identity, or by
    the spec's value for an equal spec)."""
    entry = _BY_IDENTITY.get(id(relaxation))
    if entry is not None and entry[0] is relaxation:
        return entry[1]
    plan = _plan_by_value(relaxation)
    if len(_BY_IDENTITY) >= 4096:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(relaxation)] = (relaxation, plan)
    return plan


@functools.lru_cache(maxsize=4096)
def _plan_by_value(relaxation: Spec) -> Plan:
    groups = _evaluation_plan(relaxation.negative, relaxation.unstable, relaxation.positive)
    return Plan(
        groups=groups,
        first_equal=tuple(groups.index(g) for g in groups),
        parameters=dict(relaxation.values),
        is_interval=all(ln.slope.is_zero() for _, case in relaxation.cases() for ln in case.lines()),
        bound=None if _scale_invariant(relaxation) else BOUNDED_DOMAIN,
        computed_apart=_computed_apart(relaxation),
    )


def _computed_apart(relaxation: Spec) -> frozenset[str]:
    """Parameters in a sub-expression of parameters only, other than a bare parameter or its negation."""
    params = {p.name for p in relaxation.params}
    names: set[str] = set()
    for expr in relaxation.expressions():
        for node in expr.walk():
            used = node.variables()
            if not used or not used <= params or isinstance(node, (ex.Param, ex.Named)):
                continue
            sign, inner = SIGN_SPLIT(node)
            if not isinstance(inner, (ex.Param, ex.Named)):
                names |= used
    return frozenset(names)


class OutsideProvedDomainError(ValueError):
    """Bounds beyond the domain a relaxation's soundness is proved on (its lines are not scale invariant)."""


def _check_domain(relaxation: Spec, plan: Plan, lower: Tensor, upper: Tensor) -> None:
    """Refuse bounds beyond ``plan.bound`` (before any line is evaluated on them)."""
    import torch

    if plan.bound is None or lower.numel() == 0:
        return
    magnitude = torch.maximum(-lower.amin(), upper.amax())
    if torch.compiler.is_compiling():
        torch._assert_async(
            magnitude <= plan.bound, f"{relaxation.name}: bounds beyond |l|, |u| <= {plan.bound:g}"
        )
        return
    if bool(magnitude > plan.bound):
        raise OutsideProvedDomainError(
            f"relaxation {relaxation.name!r} is proved sound only for pre-activation bounds with |l|, |u| <= "
            f"{plan.bound:g} (its lines or transform are not scale invariant), and bounds of magnitude "
            f"{float(magnitude):.4g} reached one of its ReLUs; use a scale-invariant relaxation or a smaller eps"
        )


def transform_bounds(
    relaxation: Spec, lower: Tensor, upper: Tensor, values: Mapping[str, Tensor | float] | None = None
) -> tuple[Tensor, Tensor]:
    """The bounds the lines are evaluated on (``[l, u]`` unless a transform widens them).

    :param values: per-element parameter values overriding the spec's (see :func:`coefficients`).
    :raises OutsideProvedDomainError: bounds beyond the domain the relaxation is proved on.
    """
    plan = plan_of(relaxation)
    return _transform(relaxation, plan, lower, upper, _parameters(relaxation, plan, values, lower))


def _transform(
    relaxation: Spec, plan: Plan, lower: Tensor, upper: Tensor, params: Mapping[str, Any]
) -> tuple[Tensor, Tensor]:
    _check_domain(relaxation, plan, lower, upper)
    transform = relaxation.transform
    if transform is None:
        return lower, upper
    env = {"l": lower, "u": upper, **params}
    memo: dict[int, Any] = {}
    return (
        _broadcast(transform.lower.evaluate(env, memo), lower),
        _broadcast(transform.upper.evaluate(env, memo), upper),
    )


def _parameters(
    relaxation: Spec, plan: Plan, values: Mapping[str, Tensor | float] | None, like: Tensor
) -> Mapping[str, Any]:
    """The parameter environment: the spec's values, overridden by ``values`` (checked, in ``like``'s dtype).

    A value outside the range the prover covers (:meth:`~relaxlab.core.relaxation.ParamSpec.proved_range`
    of the spec's own setting), not finite, or not broadcastable to ``like`` is refused by name.
    """
    if not values:
        return plan.parameters
    import torch

    specs = {p.name: p for p in relaxation.params}
    params: dict[str, Any] = dict(plan.parameters)
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise ValueError(f"{relaxation.name} has no parameter {name!r} (its parameters: {known})")
        if isinstance(value, torch.Tensor):
            if name in plan.computed_apart and like.dtype != torch.float64:
                # the prover models a sub-expression of numbers in float64; per element it would be in like's dtype
                raise ValueError(
                    f"{relaxation.name}: per-element values of {name!r} need float64 bounds (it is "
                    f"combined with other parameters or constants before it meets the bounds)"
                )
            value = value.to(
                dtype=like.dtype, device=like.device
            )  # differentiable; evaluated as the bounds are
            try:
                fits = torch.broadcast_shapes(value.shape, like.shape) == like.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"{relaxation.name}: values of {name!r} have shape {tuple(value.shape)}, "
                    f"which does not broadcast to the bounds' shape {tuple(like.shape)}"
                )
            lo_value, hi_value = (
                (float(v) for v in torch.aminmax(value.detach()))
                if value.numel()
                else (spec.default, spec.default)
            )
        else:
            lo_value = hi_value = value = float(value)
        lo, hi = spec.proved_range(plan.parameters[name])
        if (
            not (math.isfinite(lo_value) and math.isfinite(hi_value))
            or lo_value < lo
            or hi_value > hi
            or (spec.strict and spec.minimum is not None and lo_value <= lo)
        ):
            bracket = "(" if spec.strict and spec.minimum is not None else "["
            raise ValueError(
                f"{relaxation.name}: values of {name!r} span [{lo_value:g}, {hi_value:g}], outside "
                f"{bracket}{lo:g}, {hi:g}], where its soundness is proved; clamp them into it"
            )
        params[name] = value
    return params


def coefficients(
    relaxation: Spec, lower: Tensor, upper: Tensor, values: Mapping[str, Tensor | float] | None = None
) -> RelaxationTensors:
    """The lines of ``relaxation`` at raw pre-activation bounds; the case is chosen per element.

    For every ``x`` in ``[lower, upper]``:
    ``lower_slope·x + lower_offset <= relu(x) <= upper_slope·x + upper_offset``.
    Differentiable; never NaN for finite ``lower <= upper``. Refuses bounds beyond the domain the
    relaxation is proved on (:class:`OutsideProvedDomainError`). A coefficient that is the same
    constant in every case comes back as an expanded (zero-copy) tensor. Traceable by
    ``torch.compile`` (plain values only).

    :param values: per-element parameter values: parameter names to tensors broadcastable to
        ``lower`` (or numbers), overriding the spec's values; gradients flow to them (optimised
        per-neuron parameters). They are evaluated in ``lower``'s dtype and must lie in the range
        the prover covers (:meth:`~relaxlab.core.relaxation.ParamSpec.proved_range`), else
        ``ValueError``; checking costs one reduction and one synchronisation per parameter. A
        parameter combined with others or with constants before it meets the bounds (``θ/2000``)
        takes per-element values in float64 only: the prover computes that part as numbers do.
    """
    import torch

    plan = plan_of(relaxation)
    params = _parameters(relaxation, plan, values, lower)
    lb, ub = _transform(relaxation, plan, lower, upper, params)  # (checks the domain)
    weights = CaseWeights(lb, ub)
    envs: dict[frozenset[Stability], tuple[dict[str, Any], dict[int, Any]]] = {}

    def environment(cases: frozenset[Stability], partial: bool) -> tuple[dict[str, Any], dict[int, Any]]:
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
            envs[key] = ({"l": l_env, "u": u_env, **params}, {})
        return envs[key]

    out: list[Tensor] = []
    zeros = set()
    for index, (name, groups) in enumerate(zip(COEFFICIENT_NAMES, plan.groups, strict=True)):
        first = plan.first_equal[index]
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
        total: Any = 0.0
        owned = False  # whether total is a tensor of our own, safe to update in place
        for cases, scale, factor, partial in groups:
            weight = weights[cases]
            value = factor.evaluate(*environment(cases, partial))
            if weight is None:
                total = value if scale == 1.0 else value * scale
                break
            if not isinstance(value, torch.Tensor):
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
        if isinstance(total, torch.Tensor):
            out.append(_broadcast(total, lb))
        else:
            if total == 0.0:
                zeros.add(name)
            out.append(lb.new_tensor(float(total)).expand_as(lb))
    lower_slope, lower_offset, upper_slope, upper_offset = out
    return RelaxationTensors(lower_slope, lower_offset, upper_slope, upper_offset, zeros=frozenset(zeros))


def _scale_invariant(relaxation: Spec) -> bool:
    transform = relaxation.transform
    return all(
        line_is_scale_invariant(ln.slope, ln.offset) for _, case in relaxation.cases() for ln in case.lines()
    ) and (transform is None or transform_is_scale_invariant(transform.lower, transform.upper))


def _constant_factor(expr: ex.Expr) -> tuple[float, ex.Expr]:
    """``(c, E)`` with ``expr = c·E`` evaluating to the same floats as ``c * E.evaluate()``.

    Factors ±1 anywhere in a product are pulled out (IEEE products are sign-symmetric, so
    ``(-a)·b`` is exactly ``-(a·b)``); any other constant only at the top.
    """
    sign, inner = SIGN_SPLIT(expr)
    if isinstance(inner, ex.Mul):
        if isinstance(inner.left, ex.Const):
            return sign * inner.left.value, inner.right
        if isinstance(inner.right, ex.Const):
            return sign * inner.right.value, inner.left
    return sign, inner


class SignSplit(ex.Interpretation[tuple[float, ex.Expr]]):
    """``(s, E)`` with ``expr = s·E``, ``s = ±1`` collected from the factors ±1 of products (exact)."""

    def _whole(self, node: ex.Expr) -> tuple[float, ex.Expr]:
        return 1.0, node

    const = var = param = add = div = sigmoid = step = ge = switch = named = opaque = _whole

    def mul(self, node: ex.Mul) -> tuple[float, ex.Expr]:
        for const, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(const, ex.Const) and const.value in (1.0, -1.0):
                sign, inner = self(other)
                return const.value * sign, inner
        left_sign, left = self(node.left)
        right_sign, right = self(node.right)
        if left is node.left and right is node.right:
            return 1.0, node
        return left_sign * right_sign, ex.Mul(left, right)


SIGN_SPLIT = SignSplit()

#: ``(cases, c, E, partial)`` groups of one coefficient: the cases sharing an expression ``c·E``.
Groups = tuple[tuple[frozenset[Stability], float, ex.Expr, bool], ...]


#: Coefficients that are ``max(v, 0)`` of a bound ``v`` by the case convention (for ``l <= u``):
#: ``u`` where ``u > 0`` (UNSTABLE and POSITIVE), else 0; ``l`` on POSITIVE, else 0 (``l > 0``
#: implies POSITIVE, and ``l = 0`` gives 0 either way). IBP's offsets, computed as one relu.
_RELU_PATTERNS = {
    frozenset(
        {
            (frozenset({Stability.NEGATIVE}), ex.Const(0.0)),
            (frozenset({Stability.UNSTABLE, Stability.POSITIVE}), ex.U),
        }
    ): "u",
    frozenset(
        {
            (frozenset({Stability.NEGATIVE, Stability.UNSTABLE}), ex.Const(0.0)),
            (frozenset({Stability.POSITIVE}), ex.L),
        }
    ): "l",
}


@functools.lru_cache(maxsize=4096)
def _evaluation_plan(negative: SpecCase, unstable: SpecCase, positive: SpecCase) -> tuple[Groups | str, ...]:
    """For each of the four coefficients, the stability cases grouped by equal expressions.

    A group that covers every case needs no weight; ``partial`` marks expressions that may be
    undefined outside their cases (a division, an opaque callable) and so need a representative
    point there. A coefficient that is ``max(l, 0)`` or ``max(u, 0)`` is given as ``"l"``/``"u"``.
    """
    plans: list[Groups | str] = []
    cases = dict(zip(Stability, (negative, unstable, positive), strict=True))
    for index in range(4):
        grouped: dict[ex.Expr, set[Stability]] = {}
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
            partial = frozen_members != ALL_CASES and any(
                isinstance(node, (ex.Div, ex.Opaque)) for node in expr.walk()
            )
            scale, factor = _constant_factor(expr)
            groups.append((frozen_members, scale, factor, partial))
        # The group covering all cases (if any) is the whole answer; evaluate it first.
        groups.sort(key=lambda group: group[0] != ALL_CASES)
        plans.append(tuple(groups))
    return tuple(plans)


def parameter_start(spec: SpecParam, value: float, lower: Tensor, upper: Tensor) -> Tensor:
    """Per-neuron starting values of a parameter at bounds ``[lower, upper]`` for optimisation
    (:mod:`relaxlab.engine.optimise`): its ``start`` expression where declared, else ``value``;
    the caller clips them into the range."""
    import torch

    if spec.start is None:
        return torch.full_like(lower, value)
    return _broadcast(spec.start.evaluate({"l": lower, "u": upper}, {}), lower)


def _broadcast(value: Any, like: Tensor) -> Tensor:
    import torch

    if isinstance(value, torch.Tensor):
        if value.dtype != like.dtype:
            value = value.to(like.dtype)
        return value if value.shape == like.shape else value.expand_as(like)
    return torch.full_like(like, float(value))
