"""Continuity and sensitivity of many relaxations at once, from per-line pieces.

:func:`relaxlab.properties.derive` takes about 0.1-0.3 s per relaxation (it
bisects along hundreds of segments), far too slow for thousands of
combinations. Both properties decompose over lines, so discovery computes them
from cached per-line pieces with the *same criteria*:

- **sensitivity** (as :func:`~relaxlab.properties.sensitivity.derive_sensitivity`):
  a line makes a relaxation sensitive when its slope has degree >= 1 or its
  offset degree >= 2 in ``(l, u)`` within a piece; lines whose degree is unknown
  (opaque callables) are measured with
  :func:`~relaxlab.properties.sensitivity.probe_sensitivity`;
- **continuity** (as :func:`~relaxlab.properties.continuity.derive_continuity`):
  the lines jump only where the piece changes. Across the case boundaries
  ``u = 0`` and ``l = 0`` a relaxation is continuous when the coefficients of the
  neighbouring cases' lines agree on both sides of the boundary (compared at
  points ``1e-12`` apart, with :data:`~relaxlab.properties.continuity.JUMP_TOLERANCE`);
  inside a case a line can only jump at its own switches and floor/ceil steps,
  which are located by bisection between sample points of the case;
- with a **bounds transform** ``[l', u'] = T(l, u)``: continuous when the lines are (as
  functions of ``(l', u')``, the criterion above) and ``T`` is (it can only jump at its own
  steps, located the same way); sensitive as
  :func:`~relaxlab.properties.sensitivity.derive_sensitivity` says of the lines with ``T``
  substituted. A jump of the lines or of ``T`` is a jump of the relaxation when the widened
  bounds reach it, as they do for the built-in transforms (``[l - ω, u + ω]`` and the
  floor/ceil widening reach every ``(l', u')`` up to scale).

``tests/unit/discovery/test_pipeline.py`` checks that these flags equal
:func:`~relaxlab.properties.derive`'s for generated and registered relaxations.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from relaxlab.core.expr import Expr
from relaxlab.core.relaxation import BoundsTransform, Line, ReluRelaxation
from relaxlab.core.stability import Stability
from relaxlab.discovery.catalog import probe_relaxation
from relaxlab.properties.continuity import JUMP_TOLERANCE
from relaxlab.properties.sensitivity import derive_sensitivity, probe_sensitivity
from relaxlab.properties.tightness import case_pairs

#: Distance from a case boundary at which the two sides are compared (relative to the point).
SIDE_STEP = 1e-12
_BOUNDARY_SAMPLES = torch.tensor([0.05, 0.3, 1.0, 3.0, 7.0, 40.0], dtype=torch.float64)
_BISECTIONS = 60

#: The two case boundaries: (name, case on the first side, case on the second side).
BOUNDARIES = (
    ("u = 0", Stability.NEGATIVE, Stability.UNSTABLE),
    ("l = 0", Stability.UNSTABLE, Stability.POSITIVE),
)


def boundary_points(boundary: str, stability: Stability) -> tuple[Tensor, Tensor]:
    """Points just inside ``stability`` next to ``boundary``."""
    step = SIDE_STEP * (1.0 + _BOUNDARY_SAMPLES)
    if boundary == "u = 0":
        lower = -_BOUNDARY_SAMPLES
        upper = torch.zeros_like(lower) if stability is Stability.NEGATIVE else step
        return lower, upper
    upper = _BOUNDARY_SAMPLES
    lower = -step if stability is Stability.UNSTABLE else torch.zeros_like(upper)
    return lower, upper


def _coefficients(line: Line, lower: Tensor, upper: Tensor, params: dict[str, float]) -> Tensor:
    env: dict[str, Any] = {"l": lower, "u": upper, **params}
    slope, offset = line.evaluate(env)
    return torch.stack(
        [torch.as_tensor(v, dtype=torch.float64).expand_as(lower) for v in (slope, offset)], dim=-1
    )


def boundary_trace(
    line: Line, stability: Stability, boundary: str, params: tuple[tuple[str, float], ...] = ()
) -> Tensor:
    """``(k, 2)`` slope and offset of ``line`` (used in ``stability``) next to ``boundary``."""
    lower, upper = boundary_points(boundary, stability)
    return _coefficients(line, lower, upper, dict(params))


def traces_match(a: Tensor, b: Tensor, boundary: str, stability: Stability) -> bool:
    """Whether two traces on the two sides of ``boundary`` agree (no jump)."""
    lower, upper = boundary_points(boundary, stability)
    scale = 1.0 + torch.maximum(a.abs(), b.abs()) + torch.maximum(lower.abs(), upper.abs())[:, None]
    return bool(((a - b).abs() <= JUMP_TOLERANCE * scale).all())


def _piece_code(line: Line, lower: Tensor, upper: Tensor, params: dict[str, float]) -> Tensor:
    env: dict[str, Any] = {"l": lower, "u": upper, **params}
    columns = []
    for expr in line.expressions():
        for node in expr.switches():
            columns.append(torch.as_tensor(node.condition.evaluate(env)).to(torch.float64).expand_as(lower))
        for step in expr.steps():
            columns.append(torch.as_tensor(step.evaluate(env)).to(torch.float64).expand_as(lower))
    return torch.stack(columns, dim=-1)


@functools.lru_cache(maxsize=4096)
def internal_jump(line: Line, stability: Stability, params: tuple[tuple[str, float], ...] = ()) -> bool:
    """Whether ``line`` jumps inside ``stability`` (at one of its switches or steps)."""
    if not any(expr.switches() or expr.steps() for expr in line.expressions()):
        return False
    env_params = dict(params)
    lower, upper = case_pairs(stability)
    points = torch.stack((lower, upper), dim=-1)
    n = points.shape[0]
    gen = torch.Generator().manual_seed(7)
    starts = torch.cat((torch.arange(n), torch.randint(0, n, (4 * n,), generator=gen)))
    ends = torch.cat((torch.roll(torch.arange(n), 1), torch.randint(0, n, (4 * n,), generator=gen)))
    start, end = points[starts], points[ends]
    code_start = _piece_code(line, start[:, 0], start[:, 1], env_params)
    code_end = _piece_code(line, end[:, 0], end[:, 1], env_params)
    crossing = ~(code_start == code_end).all(dim=-1)
    if not bool(crossing.any()):
        return False
    start, end, code_start = start[crossing], end[crossing], code_start[crossing]
    lo_t = torch.zeros(start.shape[0], dtype=torch.float64)
    hi_t = torch.ones(start.shape[0], dtype=torch.float64)
    for _ in range(_BISECTIONS):
        mid = (lo_t + hi_t) / 2
        point = start + (end - start) * mid[:, None]
        same = (_piece_code(line, point[:, 0], point[:, 1], env_params) == code_start).all(dim=-1)
        lo_t = torch.where(same, mid, lo_t)
        hi_t = torch.where(same, hi_t, mid)
    before = start + (end - start) * lo_t[:, None]
    after = start + (end - start) * hi_t[:, None]
    a = _coefficients(line, before[:, 0], before[:, 1], env_params)
    b = _coefficients(line, after[:, 0], after[:, 1], env_params)
    scale = 1.0 + torch.maximum(a.abs(), b.abs()) + before.abs().max(dim=-1, keepdim=True).values
    return bool(((a - b).abs() > JUMP_TOLERANCE * scale).any())


def _degree_sensitive(line: Line) -> bool | None:
    slope, offset = line.slope.degree(), line.offset.degree()
    if slope is None or offset is None:
        return None
    return slope >= 1 or offset >= 2


@functools.lru_cache(maxsize=4096)
def line_sensitive(line: Line, stability: Stability) -> bool:
    """Whether ``line`` used in ``stability`` makes a relaxation sensitive (degree criterion)."""
    verdict = _degree_sensitive(line)
    if verdict is not None:
        return verdict
    probe = probe_relaxation(line, stability, "lower")
    return any(r.case == str(stability) and r.side == "lower" for r in probe_sensitivity(probe))


def transform_jumps(transform: BoundsTransform, params: tuple[tuple[str, float], ...] = ()) -> bool:
    """Whether ``transform`` jumps for some ``(l, u)`` (at one of its floor/ceil steps or switches).

    Its two expressions are the same in every case, so only jumps inside a case can occur; they
    are located as a line's are (:func:`internal_jump`, with the bounds ``(l', u')`` in place of
    slope and offset).
    """
    pseudo = Line(transform.lower, transform.upper)
    return any(internal_jump(pseudo, stability, params) for stability in Stability)


def fast_flags(relaxation: ReluRelaxation, *, lines_continuous: bool | None = None) -> tuple[bool, bool]:
    """``(continuous, sensitive)`` of a relaxation, from per-line pieces (and its transform's steps).

    :param lines_continuous: the continuity of its lines when already known (from the same
        lines without the transform): only the transform's steps are then looked at.
    """
    reasons = derive_sensitivity(relaxation)
    sensitive = bool(reasons) if reasons is not None else bool(probe_sensitivity(relaxation))
    values = relaxation.parameters
    transform = relaxation.transform
    if lines_continuous is not None and transform is not None:
        jumps = transform_jumps(transform, _used((transform.lower, transform.upper), values))
        return lines_continuous and not jumps, sensitive
    continuous = True
    for stability, case in relaxation.cases():
        for ln in case.lines():
            if internal_jump(ln, stability, _used(ln.expressions(), values)):
                continuous = False
    for boundary, first, second in BOUNDARIES:
        for a, b in zip(relaxation.case(first).lines(), relaxation.case(second).lines(), strict=True):
            if not traces_match(
                boundary_trace(a, first, boundary, _used(a.expressions(), values)),
                boundary_trace(b, second, boundary, _used(b.expressions(), values)),
                boundary,
                first,
            ):
                continuous = False
    if transform is not None and transform_jumps(
        transform, _used((transform.lower, transform.upper), values)
    ):
        continuous = False
    return continuous, sensitive


def _used(exprs: Iterable[Expr], values: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The parameter values the expressions use (what the per-line caches are keyed by)."""
    names = frozenset().union(*(e.variables() for e in exprs))
    return tuple(sorted((k, v) for k, v in values.items() if k in names))
