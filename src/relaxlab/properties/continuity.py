"""Continuity of a relaxation's lines as functions of ``(l, u)``.

Two independent routes, which must agree for every built-in:

1. :func:`derive_continuity` reads the spec: the piece of the ``(l, u)`` domain
   a point lies in is determined by its stability case, the condition of every
   switch and the integer part of every floor/ceil argument (all from the
   declared expressions, transform included). The lines can only jump where
   the piece changes. For every such crossing found on a fixed family of
   segments (across ``u = 0``, ``l = 0``, the diagonal ``-l = u`` and
   deterministic random segments), the crossing is located by bisection and
   the coefficients on both sides are compared. Each jump is reported with
   its source (``case boundary u = 0``, ``switch -l >= u``, ``floor``).
2. :func:`probe_continuity` treats the relaxation as a black box (only
   :meth:`~relaxlab.core.relaxation.ReluRelaxation.coefficients`): along
   segments it looks for isolated jumps with the detector of App. E.2 of the
   paper and confirms each by bisection. It is the only route for relaxations
   built from opaque callables.

Measured on networks (the empirical test):

The empirical continuity test of App. E.2 of *On the Paradox of Certified Training*.

For one input: take the gradient ``∇θL`` of the loss the relaxation minimises, follow the
segment from ``θ - α∇θL`` to ``θ + α∇θL`` (``α = 0.03``) at ``n = 500`` equally spaced
points, compute the losses ``l_1..l_n`` and ``Δ_i = |l_{i+1} - l_i|``. There is a
discontinuity between two points when one step is much bigger than both of its neighbours:
``Δ_i > C·Δ_{i-1} + D`` and ``Δ_i > C·Δ_{i+1} + D`` with ``C = 10`` and ``D = 1e-5``.
The *discontinuity share* of a batch is the fraction of its inputs with at least one.

:func:`find_discontinuities` is the test on any sequence of values (used on the toy network
of Sec. 4.2 with ``w`` as the parameter); :func:`discontinuity_share` runs the whole
procedure on a network and a batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import attrs
import torch
from torch import Tensor, nn

from relaxlab.core.expr import Environment, Step, Switch
from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.stability import Stability, stability_masks
from relaxlab.engine.network import Network
from relaxlab.properties.directions import (
    DEFAULT_POINTS_PER_CALL,
    along_segments,
    bound_value,
    gradient_directions,
)
from relaxlab.properties.findings import Discontinuity

#: Coefficients differing by more than this (relative to 1 + their size) across a crossing are a jump.
JUMP_TOLERANCE = 1e-6
#: Half-width of the step taken on both sides of a located crossing (relative to the point's size).
_BISECTIONS = 60


def _coefficients(relaxation: ReluRelaxation, lb: Tensor, ub: Tensor) -> Tensor:
    return torch.stack(relaxation.coefficients(lb, ub).tensors, dim=-1)


def _piece_signature(relaxation: ReluRelaxation, lb: Tensor, ub: Tensor) -> tuple[Tensor, list[str]]:
    """``(n, k)`` integer codes of the piece each point is in, and a label per column."""
    tl, tu = relaxation.transform_bounds(lb, ub)
    masks = stability_masks(tl, tu)
    case = masks[Stability.UNSTABLE].long() + 2 * masks[Stability.POSITIVE].long()
    columns, labels = [case], ["case boundary"]
    env: Environment = {"l": tl, "u": tu, **relaxation.parameters}
    raw_env: Environment = {"l": lb, "u": ub, **relaxation.parameters}
    seen: set[object] = set()
    for stability, case_bounds in relaxation.cases():
        for line in case_bounds.lines():
            for expr in line.expressions():
                for node in expr.walk():
                    if node in seen or not isinstance(node, (Switch, Step)):
                        continue
                    seen.add(node)
                    columns.append(_code(node, env, lb).long() * masks[stability].long())
                    labels.append(_label(node))
    if relaxation.transform is not None:
        for expr in (relaxation.transform.lower, relaxation.transform.upper):
            for node in expr.walk():
                if isinstance(node, (Switch, Step)) and ("t", node) not in seen:
                    seen.add(("t", node))
                    columns.append(_code(node, raw_env, lb).long())
                    labels.append(f"transform {_label(node)}")
    return torch.stack(columns, dim=-1), labels


def _code(node: Switch | Step, env: Environment, like: Tensor) -> Tensor:
    if isinstance(node, Switch):
        value = node.condition.evaluate(env)
    else:
        value = node.evaluate(env)
    return torch.as_tensor(value).to(like.device).expand_as(like)


def _label(node: Switch | Step) -> str:
    if isinstance(node, Switch):
        return f"switch {node.condition}"
    return f"{node.kind} step {node}"


def _case_label(codes_a: Tensor, codes_b: Tensor, labels: list[str], lb: float, ub: float) -> str:
    changed = [labels[i] for i in range(len(labels)) if int(codes_a[i]) != int(codes_b[i])]
    names = []
    for label in changed:
        if label == "case boundary":
            names.append("case boundary u = 0" if abs(ub) <= abs(lb) else "case boundary l = 0")
        else:
            names.append(label)
    return " and ".join(names)


def probe_segments(seed: int = 0, count: int = 300) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Segments ``(l0, u0) -> (l1, u1)`` that cross every surface where built-in lines can jump.

    Fixed families cross ``u = 0``, ``l = 0`` and ``-l = u`` at several scales; the
    rest are deterministic random segments in a ball of radius 10.
    """
    rows = []
    for scale in (0.05, 1.0, 7.0):
        for other in (0.3, 1.0, 3.0):
            rows.append((-other * scale, -0.5 * scale, -other * scale, 0.5 * scale))  # across u = 0
            rows.append((-0.5 * scale, other * scale, 0.5 * scale, other * scale))  # across l = 0
            rows.append(
                (-0.5 * other * scale, other * scale, -2.0 * other * scale, other * scale)
            )  # across -l = u
            rows.append(
                (-other * scale, 0.4 * other * scale, -other * scale, 2.5 * other * scale)
            )  # across -l = u
    gen = torch.Generator().manual_seed(seed)
    a = (torch.rand(count, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 10
    b = a + (torch.rand(count, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 3
    for (a0, a1), (b0, b1) in zip(a.tolist(), b.tolist(), strict=True):
        rows.append((min(a0, a1), max(a0, a1), min(b0, b1), max(b0, b1)))
    t = torch.tensor(rows, dtype=torch.float64)
    return t[:, 0], t[:, 1], t[:, 2], t[:, 3]


def _bisect(
    relaxation: ReluRelaxation, start: Tensor, end: Tensor, codes_start: Tensor
) -> tuple[Tensor, Tensor]:
    """Points just before and just after the first piece change on each segment (vectorised)."""
    lo_t = torch.zeros(start.shape[0], dtype=torch.float64)
    hi_t = torch.ones(start.shape[0], dtype=torch.float64)
    for _ in range(_BISECTIONS):
        mid = (lo_t + hi_t) / 2
        point = start + (end - start) * mid[:, None]
        codes, _ = _piece_signature(relaxation, point[:, 0], point[:, 1])
        same = (codes == codes_start).all(dim=-1)
        lo_t = torch.where(same, mid, lo_t)
        hi_t = torch.where(same, hi_t, mid)
    before = start + (end - start) * lo_t[:, None]
    after = start + (end - start) * hi_t[:, None]
    return before, after


def _sorted_pair(point: Tensor) -> Tensor:
    return torch.stack((point.min(dim=-1).values, point.max(dim=-1).values), dim=-1)


def derive_continuity(relaxation: ReluRelaxation) -> list[Discontinuity]:
    """Jumps of the lines at piece changes declared in the spec (empty: continuous)."""
    l0, u0, l1, u1 = probe_segments()
    start = torch.stack((l0, u0), dim=-1)
    end = torch.stack((l1, u1), dim=-1)
    codes_start, labels = _piece_signature(relaxation, l0, u0)
    codes_end, _ = _piece_signature(relaxation, l1, u1)
    crossing = ~(codes_start == codes_end).all(dim=-1)
    found: dict[str, Discontinuity] = {}
    # Repeatedly split at the first crossing so segments crossing several surfaces are all examined.
    for _ in range(6):
        if not bool(crossing.any()):
            break
        s, e, cs = start[crossing], end[crossing], codes_start[crossing]
        before, after = _bisect(relaxation, s, e, cs)
        before, after = _sorted_pair(before), _sorted_pair(after)
        c_before = _coefficients(relaxation, before[:, 0], before[:, 1])
        c_after = _coefficients(relaxation, after[:, 0], after[:, 1])
        scale = 1.0 + c_before.abs().max(dim=-1).values + before.abs().max(dim=-1).values
        jump = (c_before - c_after).abs().max(dim=-1).values
        codes_b, _ = _piece_signature(relaxation, before[:, 0], before[:, 1])
        codes_a, _ = _piece_signature(relaxation, after[:, 0], after[:, 1])
        for i in torch.nonzero(jump > JUMP_TOLERANCE * scale).flatten().tolist():
            source = _case_label(codes_b[i], codes_a[i], labels, float(before[i, 0]), float(before[i, 1]))
            if source not in found:
                found[source] = Discontinuity(
                    source, float(before[i, 0]), float(before[i, 1]), float(jump[i])
                )
        # continue each segment from just after its crossing
        start = after
        end = e
        codes_start, _ = _piece_signature(relaxation, start[:, 0], start[:, 1])
        codes_end, _ = _piece_signature(relaxation, end[:, 0], end[:, 1])
        crossing = ~(codes_start == codes_end).all(dim=-1)
    return list(found.values())


def _segments_points(n: int) -> Iterator[tuple[Tensor, Tensor]]:
    l0, u0, l1, u1 = probe_segments(seed=1)
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    lb = l0[:, None] + (l1 - l0)[:, None] * t
    ub = u0[:, None] + (u1 - u0)[:, None] * t
    yield lb, ub


def probe_continuity(relaxation: ReluRelaxation, points: int = 400) -> list[Discontinuity]:
    """Black-box jumps along segments: App. E.2's detector, confirmed by bisection.

    Along each segment the coefficients are sampled at ``points`` points; a step
    ``Δ_i`` that is more than 10x both neighbours (plus 1e-5) is a candidate,
    bisected down to a gap of 1e-12 of the segment; a jump that survives is reported.
    """
    found: list[Discontinuity] = []
    for lb, ub in _segments_points(points):
        lo = torch.minimum(lb, ub)
        hi = torch.maximum(lb, ub)
        coeffs = _coefficients(relaxation, lo, hi)  # (segments, points, 4)
        delta = (coeffs[:, 1:] - coeffs[:, :-1]).abs().max(dim=-1).values
        prev = torch.nn.functional.pad(delta[:, :-1], (1, 0), value=math.inf)
        nxt = torch.nn.functional.pad(delta[:, 1:], (0, 1), value=math.inf)
        candidate = (delta > 10 * prev + 1e-5) & (delta > 10 * nxt + 1e-5)
        candidate[:, 0] |= delta[:, 0] > 10 * delta[:, 1] + 1e-5
        candidate[:, -1] |= delta[:, -1] > 10 * delta[:, -2] + 1e-5
        for seg, i in torch.nonzero(candidate).tolist():
            a = torch.stack((lo[seg, i], hi[seg, i]))
            b = torch.stack((lo[seg, i + 1], hi[seg, i + 1]))
            jump, where = _confirm_jump(relaxation, a, b)
            if jump > JUMP_TOLERANCE * (1 + float(where.abs().max())):
                found.append(Discontinuity("jump found by probing", float(where[0]), float(where[1]), jump))
    return found


def _confirm_jump(relaxation: ReluRelaxation, a: Tensor, b: Tensor) -> tuple[float, Tensor]:
    """Shrink ``[a, b]`` onto the largest change of the coefficients; the change left at the end."""
    ca = _coefficients(relaxation, a[:1], a[1:])
    cb = _coefficients(relaxation, b[:1], b[1:])
    for _ in range(_BISECTIONS):
        mid = (a + b) / 2
        cm = _coefficients(relaxation, mid[:1], mid[1:])
        if (ca - cm).abs().max() >= (cm - cb).abs().max():
            b, cb = mid, cm
        else:
            a, ca = mid, cm
        if float((b - a).abs().max()) < 1e-12 * (1 + float(a.abs().max())):
            break
    return float((ca - cb).abs().max()), a


#: App. E.2's constants.
ALPHA = 0.03
POINTS = 500
C_RATIO = 10.0
D_FLOOR = 1e-5


def find_discontinuities(
    values: Tensor | Sequence[float], ratio: float = C_RATIO, floor: float = D_FLOOR
) -> Tensor:
    """Indices ``i`` (0-based) where the step from ``values[i]`` to ``values[i + 1]`` is a jump.

    ``Δ_i = |values[i+1] - values[i]|``; ``i`` is reported when both neighbouring steps exist and
    ``Δ_i > ratio·Δ_{i-1} + floor`` and ``Δ_i > ratio·Δ_{i+1} + floor``.

    :param values: ``(n,)`` values along a segment, or ``(B, n)`` for a batch (then the result
        is a boolean ``(B, n - 1)`` mask instead of indices).
    :return: indices (1-d input) or a mask (2-d input).
    """
    tensor = torch.as_tensor(values, dtype=torch.float64) if not isinstance(values, Tensor) else values
    if tensor.dim() not in (1, 2):
        raise ValueError(f"values must be (n,) or (B, n), got shape {tuple(tensor.shape)}")
    if ratio < 0 or floor < 0:
        raise ValueError(f"C and D must be >= 0, got C={ratio}, D={floor}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("values contain NaN/inf; the bound or loss overflowed along the segment")
    batch = tensor.unsqueeze(0) if tensor.dim() == 1 else tensor
    mask = torch.zeros(batch.shape[0], max(batch.shape[1] - 1, 0), dtype=torch.bool, device=batch.device)
    if batch.shape[1] >= 4:
        delta = (batch[:, 1:] - batch[:, :-1]).abs()
        inner = delta[:, 1:-1]
        jump = (inner > ratio * delta[:, :-2] + floor) & (inner > ratio * delta[:, 2:] + floor)
        mask[:, 1:-1] = jump
    if tensor.dim() == 1:
        return mask[0].nonzero().flatten()
    return mask


@attrs.frozen(eq=False)
class ContinuityResult:
    """The App. E.2 test on a batch.

    :param share: fraction of inputs with at least one discontinuity.
    :param has_discontinuity: ``(B,)`` per input.
    :param counts: ``(B,)`` number of discontinuities per input.
    :param values: ``(B, n)`` the losses along each segment.
    :param steps: ``(n,)`` the multiples ``t`` of the gradient (from ``-α`` to ``α``).
    """

    share: float
    has_discontinuity: Tensor
    counts: Tensor
    values: Tensor
    steps: Tensor


def discontinuity_share(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    eps: float,
    relaxation: object,
    *,
    output: int | None = None,
    alpha: float = ALPHA,
    points: int = POINTS,
    ratio: float = C_RATIO,
    floor: float = D_FLOOR,
    kappa: float = 0.0,
    parameters: Sequence[str] | None = None,
    normalize: bool = False,
    domain: tuple[float, float] | None = (0.0, 1.0),
    points_per_call: int = DEFAULT_POINTS_PER_CALL,
) -> ContinuityResult:
    """App. E.2's empirical continuity measure on a batch of inputs.

    For each input ``b`` the loss ``L_b`` (the certified loss ``kappa·CE(z) + (1-kappa)·CE(z_worst)``
    for ``labels``, or minus the lower bound of ``output``) is followed along
    ``θ + t·∇θL_b``, ``t ∈ [-alpha, alpha]`` (``points`` points); the jump test is
    :func:`find_discontinuities`.

    :param parameters: names of the parameters that move (default: all, as in the paper).
    :param normalize: use the unit gradient direction instead of ``∇θL`` itself (the paper: not).
    :param domain: the input domain the ``eps``-box is clipped to (pixels: ``(0, 1)``).
    """
    if points < 4:
        raise ValueError(f"points must be >= 4 for the test to compare neighbours, got {points}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if (labels is None) == (output is None):
        raise ValueError(
            "give labels (follow the certified loss) or output= (follow a lower bound), not both"
        )
    value = bound_value(relaxation, eps, output=output, labels=labels, kappa=kappa, domain=domain)

    def loss_fn(network: Network | nn.Module, xb: Tensor, yb: Tensor | None) -> Tensor:
        v = value(network, xb, yb)
        return v if labels is not None else -v

    names = list(parameters) if parameters is not None else [n for n, _ in model.named_parameters()]
    directions, _ = gradient_directions(model, x, names, loss_fn, labels, normalize=normalize)
    steps = torch.linspace(-alpha, alpha, points, dtype=x.dtype)
    values = along_segments(model, x, directions, steps, loss_fn, labels, points_per_call=points_per_call)
    mask = find_discontinuities(values, ratio, floor)
    counts = mask.sum(dim=1)
    has = counts > 0
    return ContinuityResult(
        share=float(has.double().mean()) if has.numel() else 0.0,
        has_discontinuity=has,
        counts=counts,
        values=values,
        steps=steps,
    )


__all__ = [
    "ALPHA",
    "C_RATIO",
    "D_FLOOR",
    "POINTS",
    "ContinuityResult",
    "discontinuity_share",
    "find_discontinuities",
]
