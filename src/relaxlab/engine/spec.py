"""Linear specifications ``C`` over network outputs, margins, and what "certified" means.

For a classifier, robustness at ``x`` with label ``y`` is the statement ``z_y - z_j > 0`` for
every ``j != y`` and every input in the box: the *margin* rows ``e_y - e_j``. A sample is
**certified** when a sound lower bound ``lb_j`` of every margin exceeds a tolerance,
``lb_j > CERT_ATOL + CERT_RTOL·max_k |z_k|`` (``z`` the clean logits), so that a margin
within floating-point error of zero is never claimed (DESIGN §3). :func:`is_certified` is the
one place that decides it, for certification, tightness curves and the CLI alike.

Shapes: ``B`` batch, ``S`` specification rows, ``K`` classes/outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relaxlab.core.relaxer import Relaxer
from relaxlab.engine.bounds import compute_bounds
from relaxlab.engine.box import PIXEL_DOMAIN
from relaxlab.engine.network import Network
from relaxlab.engine.optimise import Optimise

#: Absolute and relative tolerance of :func:`is_certified`.
CERT_ATOL = 1e-6
CERT_RTOL = 1e-6


def margin_spec(
    labels: Tensor,
    num_classes: int,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Margin rows ``e_y - e_j`` for every ``j != y``: ``(B, K-1, K)``.

    A *lower* bound > 0 on every row certifies that class ``y`` wins against every
    other class for all inputs in the box (Sec. 2, Eq. 1 of the paper, with
    ``c = e_y - e_j`` the negated ``c_{y'}``).

    :param labels: ``(B,)`` integer class labels in ``[0, num_classes)``.
    :param num_classes: ``K`` (at least 2).
    :param dtype: floating dtype of the result; default ``torch.get_default_dtype()``.
    :return: ``(B, K-1, K)``; row ``i`` of example ``b`` compares ``y_b`` with the ``i``-th other class
        in increasing order.
    """
    if num_classes < 2:
        raise ValueError(f"margin specifications need at least 2 classes, got num_classes={num_classes}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-d integer tensor, got shape {tuple(labels.shape)} {labels.dtype}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    dtype = dtype or torch.get_default_dtype()
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    own = eye[labels]  # (B, K)
    others = other_classes(labels, num_classes)
    return own.unsqueeze(1) - eye[others]


def other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """``(B, K-1)`` the classes other than each label, increasing (the column of each margin row)."""
    classes = torch.arange(num_classes, device=labels.device).expand(labels.shape[0], num_classes)
    return classes[classes != labels.unsqueeze(1)].reshape(labels.shape[0], num_classes - 1)


def margin_bounds(
    model: nn.Module | Network,
    x: Tensor,
    labels: Tensor,
    eps: float | Tensor,
    relaxation: Relaxer,
    *,
    num_classes: int,
    domain: tuple[float | Tensor, float | Tensor] | None = PIXEL_DOMAIN,
    elision: bool = True,
    check_centre: bool = True,
    rigorous: bool = False,
    optimise: Optimise | None = None,
) -> tuple[Tensor, Tensor]:
    """Lower bounds on the margins ``z_y - z_j`` over the eps-box of ``x``, and the class ``j`` of each row.

    With ``elision`` the margin rows are the specification (the engine folds them into the last
    layer); without it the logits are bounded and ``lb_j = lb(z_y) - ub(z_j)`` (looser).

    :param domain: the box is clipped to it (default: pixels in ``[0, 1]``).
    :param check_centre: see :func:`~relaxlab.engine.bounds.compute_bounds`.
    :param rigorous: see :func:`~relaxlab.engine.bounds.compute_bounds` (certification sets it).
    :param optimise: see :func:`~relaxlab.engine.bounds.compute_bounds`.
    :return: ``(lb, others)``, both ``(B, K-1)``; ``others[b, r]`` is the class of row ``r``.
    """
    if elision:
        spec = margin_spec(labels, num_classes, dtype=x.dtype)
        lb, _ = compute_bounds(
            model,
            x,
            eps,
            relaxation,
            C=spec,
            domain=domain,
            lower_only=True,
            check_centre=check_centre,
            rigorous=rigorous,
            optimise=optimise,
        )
        return lb, other_classes(labels, num_classes)
    lower, upper = compute_bounds(
        model,
        x,
        eps,
        relaxation,
        domain=domain,
        check_centre=check_centre,
        rigorous=rigorous,
        optimise=optimise,
    )
    others = other_classes(labels, num_classes)
    return lower.gather(1, labels.unsqueeze(1)) - upper.gather(1, others), others


def is_certified(lb: Tensor, logits: Tensor) -> Tensor:
    """``(B,)`` whether every margin lower bound of a row of ``lb`` (``(B, S)``) exceeds the tolerance.

    :param logits: ``(B, K)`` the clean outputs; they scale the relative part of the tolerance.
    """
    tolerance = CERT_ATOL + CERT_RTOL * logits.detach().abs().amax(dim=1, keepdim=True)
    return (lb > tolerance).all(dim=1)


def worst_case_logits(lb: Tensor, others: Tensor, num_classes: int) -> Tensor:
    """``(B, K)`` logits with 0 at the label and ``-lb_j`` at each other class ``j``.

    The worst case the margin bounds allow: the certified training loss is their cross-entropy.

    :param others: the class of each margin row (from :func:`margin_bounds`).
    """
    return lb.new_zeros(lb.shape[0], num_classes).scatter(1, others, -lb)
