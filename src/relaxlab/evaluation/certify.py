"""Certification with any relaxation: standard accuracy, PGD accuracy and certified robustness (CR).

A sample is *certified* at radius eps when it is classified correctly and the relaxation's lower
bound on every margin ``z_y - z_j`` (``j != y``) over the eps-box (clipped to [0, 1]) exceeds a
tolerance: ``lb > CERT_ATOL + CERT_RTOL * max_j |z_j|`` (``z`` the clean logits). Bounds are
computed in float64 by default, so the tolerance covers floating-point error with a wide margin
and certification never claims a margin that is within rounding error of zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from relaxlab.evaluation.pgd import pgd_robust
from relaxlab.training.loss import margin_lower_bounds

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation

CERT_ATOL = 1e-6
CERT_RTOL = 1e-6


@attrs.frozen(kw_only=True)
class CertifyResult:
    """Fractions over ``n`` test samples.

    :param accuracy: clean accuracy.
    :param pgd: PGD accuracy (``None`` when not computed).
    :param certified: certified robustness CR.
    :param n: number of samples.
    :param eps: radius.
    :param relaxation: name of the certifying relaxation.
    """

    accuracy: float
    pgd: float | None
    certified: float
    n: int
    eps: float
    relaxation: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return attrs.asdict(self)


def check_eps(eps: float) -> float:
    """Refuse a radius outside [0, 1] (pixel space)."""
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (inputs are pixels in [0, 1]), got {eps}")
    return float(eps)


def certified_mask(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    relaxation: ReluRelaxation,
    num_classes: int,
    *,
    elision: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(correct, certified)`` boolean masks ``(B,)`` for one batch (no gradients)."""
    with torch.no_grad():
        logits = model(x)
        correct = logits.argmax(1) == labels
        lb, _ = margin_lower_bounds(model, x, labels, eps, relaxation, num_classes, elision=elision)
        tol = CERT_ATOL + CERT_RTOL * logits.abs().amax(dim=1, keepdim=True)
        certified = correct & (lb > tol).all(dim=1)
    return correct, certified


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def certify(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float,
    relaxations: Sequence[ReluRelaxation],
    *,
    num_classes: int = 10,
    pgd: bool = True,
    batch_size: int = 200,
    dtype: torch.dtype = torch.float64,
    progress: Callable[[int], None] | None = None,
) -> list[CertifyResult]:
    """Accuracy, PGD accuracy and CR of ``model`` for each relaxation.

    :param model: the network (left unchanged; a float64 copy is used when ``dtype`` is float64).
    :param images: ``(N, C, H, W)`` in [0, 1].
    :param labels: ``(N,)``.
    :param eps: radius in [0, 1].
    :param relaxations: relaxations to certify with.
    :param num_classes: class count.
    :param pgd: also run PGD (100 steps, step size 0.01).
    :param batch_size: evaluation batch size.
    :param dtype: dtype of the bound computation.
    :param progress: called with the number of samples done after each batch.
    :return: one result per relaxation, in order.
    """
    eps = check_eps(eps)
    import copy

    net = copy.deepcopy(model).to(dtype=dtype).eval()
    correct = 0
    robust = 0
    certified = [0] * len(relaxations)
    n = int(labels.shape[0])
    for part in _batches(n, batch_size):
        x, y = images[part].to(dtype=dtype), labels[part]
        with torch.no_grad():
            correct += int((net(x).argmax(1) == y).sum())
        if pgd:
            robust += int(pgd_robust(net, x, y, eps).sum())
        for i, relaxation in enumerate(relaxations):
            certified[i] += int(certified_mask(net, x, y, eps, relaxation, num_classes)[1].sum())
        if progress is not None:
            progress(part.stop - part.start)
    denominator = max(n, 1)
    return [
        CertifyResult(
            accuracy=correct / denominator,
            pgd=robust / denominator if pgd else None,
            certified=count / denominator,
            n=n,
            eps=eps,
            relaxation=relaxation.name,
        )
        for relaxation, count in zip(relaxations, certified, strict=True)
    ]
