"""Empirical checks of bounds: points of the box that a sound bound must contain.

Bounds are sound when ``lb <= C·f(x) <= ub`` for *every* ``x`` in the box. These
helpers produce concrete ``x`` that try hard to violate that: random samples, all
vertices (for tiny inputs) and the result of projected gradient descent on each
specification row (PGD, Madry et al. 2018). They find violations; they cannot
prove their absence.

Shapes: ``B`` batch, ``S`` specification rows, ``P`` points per example.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

Forward = Callable[[Tensor], Tensor]


def box_samples(lower: Tensor, upper: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``(B, P, *shape)``: the centre, uniform samples and, for inputs of at most 10 entries, all vertices."""
    batch, shape = lower.shape[0], lower.shape[1:]
    numel = math.prod(shape)
    uniform = torch.rand((batch, count, *shape), generator=generator, dtype=lower.dtype).to(lower.device)
    points = [((lower + upper) / 2).unsqueeze(1), lower.unsqueeze(1) + uniform * (upper - lower).unsqueeze(1)]
    if numel <= 10:
        corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=numel)), dtype=lower.dtype)
        corners = corners.to(lower.device).reshape(1, -1, *shape)
        points.append(torch.where(corners > 0, upper.unsqueeze(1), lower.unsqueeze(1)))
    return torch.cat(points, dim=1)


def spec_values(forward: Forward, spec: Tensor, points: Tensor) -> Tensor:
    """``(B, P, S)``: ``C·f(x)`` at each point (``spec`` of shape ``(B, S, K)``)."""
    batch, count = points.shape[:2]
    outputs = forward(points.reshape(batch * count, *points.shape[2:])).reshape(batch, count, -1)
    return outputs @ spec.transpose(1, 2)


def pgd_extremes(
    forward: Forward,
    spec: Tensor,
    lower: Tensor,
    upper: Tensor,
    *,
    steps: int = 30,
    restarts: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Smallest and largest values of each row ``C·f(x)`` that PGD finds in the box.

    Signed-gradient steps, projected onto the box, from the centre and random starts;
    the step size shrinks from a quarter of the box width.

    :return: ``(low, high)``, each ``(B, S)``: attained values, so ``lb <= low`` and ``high <= ub``
        must hold for sound bounds.
    """
    batch, specs = spec.shape[:2]
    shape = lower.shape[1:]
    # One copy of the box per (row, direction, restart): (B, 2S·R, *shape).
    copies = 2 * specs * restarts
    lo = lower.unsqueeze(1).expand(batch, copies, *shape)
    up = upper.unsqueeze(1).expand(batch, copies, *shape)
    start = torch.rand((batch, copies, *shape), generator=generator, dtype=lower.dtype).to(lower.device)
    start[:, : 2 * specs] = 0.5  # the first restart starts at the centre
    x = (lo + start * (up - lo)).detach()
    sign = torch.cat([torch.ones(specs), -torch.ones(specs)]).repeat(restarts).to(lower)  # +: minimise
    rows = spec.repeat(1, 2 * restarts, 1)  # (B, copies, K)
    width = up - lo
    best = torch.full((batch, copies), math.inf, dtype=lower.dtype, device=lower.device)

    def objective(points: Tensor) -> Tensor:
        outputs = forward(points.reshape(batch * copies, *shape)).reshape(batch, copies, -1)
        return (outputs * rows).sum(-1) * sign

    for step in range(steps):
        with torch.enable_grad():
            x.requires_grad_(True)
            value = objective(x)
            (grad,) = torch.autograd.grad(value.sum(), x)
        best = torch.minimum(best, value.detach())
        size = 0.25 * (1 - step / steps) + 0.01
        x = torch.minimum(torch.maximum(x.detach() - size * width * grad.sign(), lo), up)
    with torch.no_grad():
        best = torch.minimum(best, objective(x))
    signed = (best * sign).reshape(batch, restarts, 2, specs)
    return signed[:, :, 0].min(dim=1).values, signed[:, :, 1].max(dim=1).values
