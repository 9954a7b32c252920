"""Certified training losses (Sec. 2 of the paper; Gowal et al. 2018).

For a margin specification with rows ``e_y - e_j`` (``j != y``), a relaxation gives lower bounds
``lb_j`` on ``z_y - z_j`` over the input box. The worst-case logits are ``z_worst[y] = 0`` and
``z_worst[j] = -lb_j``; the certified loss is ``CE(z_worst, y)``. With last-layer elision the
specification is passed into the bound computation (the engine folds it into the last layer);
without it the logits are bounded (identity specification) and ``lb_j = lb(z_y) - ub(z_j)``.

Shapes: ``B`` batch, ``K`` classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation

#: The input domain: pixels live in [0, 1], so the eps-box is clipped to it.
PIXEL_DOMAIN = (0.0, 1.0)


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """``(B, K-1, K)`` rows ``e_y - e_j`` for ``j != y`` (the engine's, when it is available)."""
    try:
        from relaxlab.engine.spec import margin_spec as engine_margin_spec
    except ImportError:  # pragma: no cover - the engine ships it; kept for partial installs
        eye = torch.eye(num_classes, dtype=torch.get_default_dtype(), device=labels.device)
        others = _others(labels, num_classes)
        return eye[labels].unsqueeze(1) - eye[others]
    return engine_margin_spec(labels, num_classes)


def _others(labels: Tensor, num_classes: int) -> Tensor:
    """``(B, K-1)`` the classes other than each label, increasing."""
    classes = torch.arange(num_classes, device=labels.device).expand(labels.shape[0], num_classes)
    return classes[classes != labels.unsqueeze(1)].reshape(labels.shape[0], num_classes - 1)


def compute_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    relaxation: ReluRelaxation,
    C: Tensor | None = None,
    *,
    lower_only: bool = False,
) -> tuple[Tensor, Tensor]:
    """The engine's bounds on ``C @ model(x')`` for ``x'`` in the eps-box of ``x`` clipped to [0, 1]."""
    from relaxlab.api import compute_bounds as engine_bounds

    return engine_bounds(model, x, eps, relaxation, C=C, domain=PIXEL_DOMAIN, lower_only=lower_only)


def margin_lower_bounds(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    relaxation: ReluRelaxation,
    num_classes: int,
    *,
    elision: bool = True,
) -> tuple[Tensor, Tensor]:
    """Lower bounds on the margins ``z_y - z_j`` and the class ``j`` of each row.

    :return: ``(lb, others)``, both ``(B, K-1)``; ``others[b, r]`` is the class of row ``r``.
    """
    if elision:
        spec = margin_spec(labels, num_classes).to(dtype=x.dtype)
        lb, _ = compute_bounds(model, x, eps, relaxation, C=spec, lower_only=True)
        others = spec.argmin(dim=-1)  # the -1 entry of row e_y - e_j sits at column j
        return lb, others
    lower, upper = compute_bounds(model, x, eps, relaxation)
    others = _others(labels, num_classes)
    lb = lower.gather(1, labels.unsqueeze(1)) - upper.gather(1, others)
    return lb, others


def worst_case_logits(lb: Tensor, others: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``(B, K)`` logits with 0 at the label and ``-lb`` at the other classes."""
    z = lb.new_zeros(lb.shape[0], num_classes)
    return z.scatter(1, others, -lb)


def robust_ce(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    relaxation: ReluRelaxation,
    num_classes: int,
    *,
    elision: bool = True,
) -> Tensor:
    """``CE(z_worst, y)`` averaged over the batch (differentiable through the bounds)."""
    lb, others = margin_lower_bounds(model, x, labels, eps, relaxation, num_classes, elision=elision)
    return F.cross_entropy(worst_case_logits(lb, others, labels, num_classes), labels)


def l1_penalty(model: nn.Module) -> Tensor:
    """Sum of absolute weights of all Linear and Conv2d layers (biases excluded)."""
    terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return torch.stack(terms).sum()


def training_loss(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    eps: float,
    kappa: float,
    beta: float,
    relaxations: tuple[Any, ...],
    num_classes: int,
    elision: bool,
    l1: float,
) -> tuple[Tensor, dict[str, float]]:
    """``kappa * CE(natural) + (1 - kappa) * robust + l1 * |W|_1``.

    ``robust`` is ``CE(z_worst)`` for one relaxation, or for two relaxations (the CROWN-IBP defense:
    CROWN-IBP (R), IBP) ``beta * CE(z_worst^1) + (1 - beta) * CE(z_worst^2)``. Terms with weight 0
    are not computed.

    :return: the loss and its parts as floats (for logging).
    """
    logits = model(x)
    natural = F.cross_entropy(logits, labels)
    loss = kappa * natural
    parts = {"loss_natural": float(natural.detach())}
    if kappa < 1.0 and relaxations:
        weights = (1.0,) if len(relaxations) == 1 else (beta, 1.0 - beta)
        robust = natural.new_zeros(())
        for weight, relaxation in zip(weights, relaxations, strict=True):
            if weight > 0.0:
                robust = robust + weight * robust_ce(
                    model, x, labels, eps, relaxation, num_classes, elision=elision
                )
        loss = loss + (1.0 - kappa) * robust
        parts["loss_robust"] = float(robust.detach())
    if l1 > 0.0:
        loss = loss + l1 * l1_penalty(model)
    parts["loss"] = float(loss.detach())
    parts["accuracy"] = float((logits.argmax(1) == labels).float().mean())
    return loss, parts
