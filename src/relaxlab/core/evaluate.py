"""Evaluating a relaxation's lines on tensors: the coefficient evaluator.

A :class:`~relaxlab.core.relaxation.ReluRelaxation` is plain data; this module turns it into
numbers. For each relaxation an *evaluation plan* is derived once (cases with equal
expressions merged, constant factors folded, ``max(l, 0)``/``max(u, 0)`` offsets recognised)
and kept outside the spec, keyed by the spec object's identity (a dictionary look-up that
``torch.compile`` traces; hashing a tree of expressions on every call would not be free).

Shapes: every function takes ``lower``/``upper`` of any shape and returns tensors of that
shape, dtype and device.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from attrs import frozen
from torch import Tensor

from relaxlab.core.expr import MEMO, Const, Div, Expr, Mul, Opaque, Var
from relaxlab.core.relaxer import COEFFICIENT_NAMES, RelaxationTensors
from relaxlab.core.stability import ALL_CASES, CaseWeights, Stability

if TYPE_CHECKING:
    from relaxlab.core.relaxation import CaseBounds, ParamSpec, ReluRelaxation

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
    """

    groups: tuple[Groups | str, ...]
    first_equal: tuple[int, ...]
    parameters: dict[str, float]
    is_interval: bool


_PLANS: dict[int, tuple[weakref.ReferenceType[Any], Plan]] = {}


def plan_of(relaxation: ReluRelaxation) -> Plan:
    """The evaluation plan of ``relaxation`` (derived on first use, then looked up by identity)."""
    key = id(relaxation)
    entry = _PLANS.get(key)
    if entry is not None and entry[0]() is relaxation:
        return entry[1]
    groups = _evaluation_plan(relaxation.negative, relaxation.unstable, relaxation.positive)
    plan = Plan(
        groups=groups,
        first_equal=tuple(groups.index(g) for g in groups),
        parameters=dict(relaxation.values),
        is_interval=all(ln.slope.is_zero() for _, case in relaxation.cases() for ln in case.lines()),
    )
    _PLANS[key] = (weakref.ref(relaxation, lambda _ref, key=key: _PLANS.pop(key, None)), plan)
    return plan


def transform_bounds(relaxation: ReluRelaxation, lower: Tensor, upper: Tensor,
                     values: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The bounds the lines are evaluated on (``[l, u]`` unless a transform widens them).

    :param values: per-neuron parameter values, as in :func:`coefficients`.
    """
    transform = relaxation.transform
    if transform is None:
        return lower, upper
    env = {"l": lower, "u": upper, **_parameters(relaxation, values)}
    return _broadcast(transform.lower.evaluate(env), lower), _broadcast(transform.upper.evaluate(env), upper)


def coefficients(relaxation: ReluRelaxation, lower: Tensor, upper: Tensor,
                 values: Mapping[str, Tensor] | None = None) -> RelaxationTensors:
    """The lines of ``relaxation`` at raw pre-activation bounds; the case is chosen per element.

    ``values`` maps parameter names to tensors broadcastable to ``lower`` (one value per neuron,
    e.g. optimised ones, :mod:`relaxlab.engine.optimise`) that replace the relaxation's values
    for this evaluation; gradients flow to them. The caller keeps them in the declared range.

    For every ``x`` in ``[lower, upper]``:
    ``lower_slope·x + lower_offset <= relu(x) <= upper_slope·x + upper_offset``.
    Differentiable; never NaN for finite ``lower <= upper``. A coefficient that is the same
    constant in every case comes back as an expanded (zero-copy) tensor. Traceable by
    ``torch.compile`` (plain values only).
    """
    plan = plan_of(relaxation)
    lb, ub = transform_bounds(relaxation, lower, upper, values)
    weights = CaseWeights(lb, ub)
    params = _parameters(relaxation, values)
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
    return RelaxationTensors(*out, zeros=frozenset(zeros))




def _parameters(relaxation: ReluRelaxation, values: Mapping[str, Tensor] | None) -> dict[str, Any]:
    """The parameter environment: the relaxation's values, ``values`` replacing them where given."""
    parameters = plan_of(relaxation).parameters
    if not values:
        return parameters
    unknown = set(values) - set(parameters)
    if unknown:
        raise ValueError(f"{relaxation.name}: no parameter(s) {sorted(unknown)}; it has {sorted(parameters) or 'none'}")
    return {**parameters, **values}


def parameter_start(spec: ParamSpec, value: float, lower: Tensor, upper: Tensor) -> Tensor:
    """Per-neuron starting values of a parameter at bounds ``[lower, upper]``: its ``start``
    expression where declared, else ``value``; the caller clips them into the range."""
    if spec.start is None:
        return torch.full_like(lower, value)
    return _broadcast(spec.start.evaluate({"l": lower, "u": upper, MEMO: {}}), lower)


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

