"""The empirical continuity test of App. E.2 of *On the Paradox of Certified Training*.

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

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor, nn

from relaxlab.analysis._points import (
    DEFAULT_POINTS_PER_CALL,
    along_segments,
    bound_value,
    gradient_directions,
)

#: App. E.2's constants.
ALPHA = 0.03
POINTS = 500
C_RATIO = 10.0
D_FLOOR = 1e-5


def find_discontinuities(values: Tensor | Sequence[float], ratio: float = C_RATIO, floor: float = D_FLOOR) -> Tensor:
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
        raise ValueError("give labels (follow the certified loss) or output= (follow a lower bound), not both")
    value = bound_value(relaxation, eps, output=output, labels=labels, kappa=kappa, domain=domain)

    def loss_fn(network: object, xb: Tensor, yb: Tensor | None) -> Tensor:
        v = value(network, xb, yb)  # type: ignore[arg-type]
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


__all__ = ["ALPHA", "C_RATIO", "D_FLOOR", "POINTS", "ContinuityResult", "discontinuity_share", "find_discontinuities"]
