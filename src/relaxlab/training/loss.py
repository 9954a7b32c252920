"""Certified training losses (Sec. 2 of the paper; Gowal et al. 2018).

For a margin specification with rows ``e_y - e_j`` (``j != y``), a relaxation gives lower bounds
``lb_j`` on ``z_y - z_j`` over the input box (:func:`relaxlab.engine.spec.margin_bounds`). The
worst-case logits are ``z_worst[y] = 0`` and ``z_worst[j] = -lb_j``; the certified loss is
``CE(z_worst, y)``. With loss fusion the certified loss is instead the upper bound of the worst-case
cross-entropy that :func:`relaxlab.engine.fusion.fused_ce_bound` computes with one row per example.

Shapes: ``B`` batch, ``K`` classes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.engine.fusion import fused_ce_bound
from relaxlab.engine.spec import margin_bounds, worst_case_logits


def robust_ce(lb: Tensor, others: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``CE(z_worst, y)`` averaged over the batch, from margin lower bounds (differentiable)."""
    return F.cross_entropy(worst_case_logits(lb, others, num_classes), labels)


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
    fusion: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """``kappa * CE(natural) + (1 - kappa) * robust + l1 * |W|_1``.

    ``robust`` is ``CE(z_worst)`` for one relaxation, or for two relaxations (the CROWN-IBP defense:
    CROWN-IBP (R), IBP) ``beta * CE(z_worst^1) + (1 - beta) * CE(z_worst^2)``. Terms with weight 0
    are not computed. With ``fusion`` each ``CE(z_worst)`` is replaced by the batch mean of the
    fused bound (:func:`~relaxlab.engine.fusion.fused_ce_bound`).

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
            if weight > 0.0 and fusion:
                bound = fused_ce_bound(model, x, labels, eps, relaxation, num_classes=num_classes)
                robust = robust + weight * bound.mean()
            elif weight > 0.0:
                # the model is in training mode: no centre check (see engine.bounds.compute_bounds)
                lb, others = margin_bounds(
                    model, x, labels, eps, relaxation, num_classes=num_classes, elision=elision, check_centre=False
                )
                robust = robust + weight * robust_ce(lb, others, labels, num_classes)
        loss = loss + (1.0 - kappa) * robust
        parts["loss_robust"] = float(robust.detach())
    if l1 > 0.0:
        loss = loss + l1 * l1_penalty(model)
    parts["loss"] = float(loss.detach())
    parts["accuracy"] = float((logits.argmax(1) == labels).float().mean())
    return loss, parts
