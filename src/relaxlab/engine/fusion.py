"""Loss fusion (Xu et al. 2020, App. A.2 and B.3): an upper bound of the worst-case cross-entropy
from **one** backsubstituted row per example instead of one per class.

For logits ``z`` and label ``y``, ``CE(z, y) = log S`` with ``S = sum_j exp(m_j)`` and the margins
``m_j = z_j - z_y`` (``m_y = 0``). Over the input box:

1. **Margin intervals** ``l_j <= m_j <= u_j`` by interval arithmetic from the box after the last
   ReLU, as the relaxation's intermediate bounds give it (``relu(transform_bounds(l, u))`` for an
   ``intermediate = "interval"`` relaxation such as CROWN-IBP (R); the lines' offsets for an
   interval relaxation such as IBP). The margin rows are folded into the layers after the last
   ReLU, whose image of that box is exact (the rows pulled back to those boxes).
2. **Shift.** ``s = max(0, max_j u_j)`` (per example, not differentiated: it cancels exactly), so
   every ``exp`` below is at most 1: ``log S = s + log sum_j exp(m_j - s)``.
3. **Chords.** ``exp`` is convex, so on ``[l_j - s, u_j - s]`` its chord lies above it:
   ``exp(m_j - s) <= exp(u_j - s) + a_j (m_j - u_j)``, ``a_j`` the chord's slope
   (:func:`exp_chord`; the tangent's slope where ``l_j = u_j``). Hence
   ``sum_j exp(m_j - s) <= exp(-s) + c·z + sum_{j != y} (exp(u_j - s) - a_j u_j)`` with the one row
   ``c = sum_{j != y} a_j (e_j - e_y)`` over the logits (``a_j >= 0``).
4. **One row.** The upper bound of ``c·z`` over the box is ``bound_network`` with ``C = -c`` (one
   row per example, lower bound only), through the relaxation's own backsubstitution. For an
   interval relaxation, whose backsubstitution stops at the last ReLU (the engine's fast path),
   the row is pulled back through the layers after it only, from the box of step 1.

Cost: the relaxation's intermediate bounds are computed once (one
:class:`~relaxlab.engine.bounder.Bounder` serves steps 1 and 4).

The bound is ``s + log max(S', exp(-s))`` with ``S'`` the right-hand side above: ``S' >= exp(-s)``
holds in exact arithmetic (``S >= exp(m_y) = 1``), so the maximum only guards the logarithm
against rounding, and the bound is never below 0 = min CE. It is sound up to floating-point
rounding; it may be looser or tighter than the cross-entropy of the worst-case logits from the
margin bounds (docs/training.md has measurements). For an interval relaxation it is never looser:
each chord lies below its constant ``exp(u_j - s)`` on the interval.

Which relaxations: those whose intermediate bounds are intervals (``intermediate = "interval"``
or ``is_interval``). A relaxation that backsubstitutes every intermediate layer (CROWN, DeepZ,
hBox) is refused: its final rows are a small part of its cost, and :func:`bound_network` would
compute its intermediate bounds a second time. Any network the engine accepts: on a graph the
margins are bounded from the boxes after *every* ReLU (the stops of interval propagation).

Shapes: ``B`` batch, ``K`` classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.core.relaxer import Relaxer
from relaxlab.engine.bounder import Bounder, propagation
from relaxlab.engine.box import PIXEL_DOMAIN, input_box
from relaxlab.engine.network import Network
from relaxlab.engine.parse import parse_model
from relaxlab.engine.spec import margin_spec, other_classes

__all__ = ["check_fusable", "exp_chord", "fused_ce_bound"]

#: Below this width the chord's slope is computed as ``exp(l)·expm1(w)/w`` (no cancellation);
#: above it as ``(exp(u) - exp(l))/w`` (no overflow of ``expm1``).
_NARROW = 1.0


def check_fusable(relaxation: Relaxer) -> None:
    """Refuse a relaxation whose intermediate bounds are not intervals (see the module docstring).

    :raises ValueError: naming the relaxation and what to use instead.
    """
    if not relaxation.is_interval and relaxation.intermediate != "interval":
        raise ValueError(
            f"loss fusion needs a relaxation whose intermediate bounds are intervals (intermediate = "
            f"'interval', e.g. CROWN-IBP (R), or an interval relaxation such as IBP); {relaxation.name!r} "
            f"computes them by backsubstitution (intermediate = {relaxation.intermediate!r}), whose cost "
            "fusion does not reduce; train it without loss fusion"
        )


def exp_chord(lower: Tensor, upper: Tensor) -> Tensor:
    """Slope of the chord of ``exp`` on ``[lower, upper]`` (elementwise; ``exp(lower)`` where they meet).

    The line ``exp(upper) + slope·(t - upper)`` lies above ``exp(t)`` for ``t`` in the interval
    (``exp`` is convex). A width below 0 (rounding of bounds of a point) counts as 0. Keep
    ``upper`` small (shifted to ``<= 0``): ``exp(upper)`` is evaluated.
    """
    width = (upper - lower).clamp(min=0)
    narrow = width <= _NARROW
    # expm1(w)/w, with w = 0 (and the branch not taken) replaced so that no 0/0 reaches autograd
    safe = torch.where(narrow & (width > 0), width, torch.ones_like(width))
    ratio = torch.where(width > 0, torch.expm1(safe) / safe, torch.ones_like(width))
    wide = width.clamp(min=_NARROW)
    return torch.where(narrow, torch.exp(lower) * ratio, (torch.exp(upper) - torch.exp(upper - wide)) / wide)


def fused_ce_bound(
    model: nn.Module | Network,
    x: Tensor,
    labels: Tensor,
    eps: float | Tensor,
    relaxation: Relaxer,
    *,
    num_classes: int,
    domain: tuple[float, float] | None = PIXEL_DOMAIN,
) -> Tensor:
    """``(B,)`` upper bounds of ``max CE(model(x'), y)`` over the eps-box of each ``x`` (differentiable).

    :param model: any module the engine accepts (or a parsed :class:`Network`); a model in
        training mode is bounded as it is (no centre check, as in certified training).
    :param x: ``(B, *input_shape)`` centres; the computation runs in their dtype and device.
    :param labels: ``(B,)`` classes.
    :param eps: l_inf radius (a number or a ``(B,)`` tensor, as for ``compute_bounds``).
    :param relaxation: an interval-intermediate relaxation (:func:`check_fusable`).
    :param num_classes: ``K``.
    :param domain: the box is clipped to it (default: pixels in ``[0, 1]``).
    :raises ValueError: a backsubstitution relaxation.
    """
    check_fusable(relaxation)
    network = (
        model
        if isinstance(model, Network)
        else parse_model(model, tuple(x.shape[1:]), dtype=x.dtype, device=x.device, clean=x)
    )
    lower, upper = input_box(x, eps, domain)
    run = Bounder(network, lower, upper, relaxation, propagation(relaxation))
    after_relus = run.stops  # the input and every ReLU, whose boxes the intermediate bounds gave
    # 1. margins m_j = z_j - z_y (rows -(e_y - e_j)) over the boxes after the ReLUs
    rows = -margin_spec(labels, num_classes, dtype=x.dtype)
    out = len(network.nodes) - 1
    both = torch.cat([rows, -rows], dim=1).reshape(x.shape[0], 2 * rows.shape[1], *network.output_shape)
    bounds = run.rows_lower(out, both, after_relus, run.max_elements)
    margin_lower, margin_upper = bounds[:, : rows.shape[1]], -bounds[:, rows.shape[1] :]
    # 2. shift; 3. chords of exp on [l_j - s, u_j - s]
    shift = margin_upper.detach().amax(dim=1).clamp(min=0)
    top = margin_upper - shift.unsqueeze(1)
    slope = exp_chord(margin_lower - shift.unsqueeze(1), top)
    constant = (torch.exp(top) - slope * margin_upper).sum(dim=1)
    # 4. one row c = sum_j a_j (e_j - e_y) over the logits; its upper bound is -lb(-c)
    others = other_classes(labels, num_classes)
    row = slope.new_zeros(labels.shape[0], num_classes).scatter(1, others, slope)
    row = row - F.one_hot(labels, num_classes).to(slope.dtype) * slope.sum(dim=1, keepdim=True)
    # the relaxation's own final stage: to the same boxes for an interval relaxation, through every
    # ReLU to the input box for an interval-intermediate one
    lb, _ = run.bound(-row.unsqueeze(1), lower_only=True)
    floor = torch.exp(-shift)
    total = floor + constant - lb[:, 0]
    return shift + torch.log(torch.maximum(total, floor))
