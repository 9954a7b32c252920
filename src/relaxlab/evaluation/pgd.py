"""Projected gradient descent (Madry et al.) in the L-infinity ball, as in App. F.4 of the paper.

100 steps of size 0.01 by default, starting at the clean input, projecting onto the eps-ball
intersected with the pixel range [0, 1]. A sample counts as PGD-robust when the clean input and
every iterate are classified correctly (checking every iterate keeps the attack monotone: the
strongest point found is used, not only the last).

:func:`pgd_minimize` is the general form: any input box, any objective over the outputs
(``relaxlab verify`` minimises how far the outputs are from violating a property).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PGD_STEPS = 100
PGD_STEP_SIZE = 0.01


def pgd_robust(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    *,
    steps: int = PGD_STEPS,
    step_size: float = PGD_STEP_SIZE,
) -> Tensor:
    """Which samples withstand the attack: ``(B,)`` bool.

    :param model: classifier taking inputs in [0, 1].
    :param x: ``(B, ...)`` clean inputs.
    :param labels: ``(B,)`` labels.
    :param eps: L-infinity radius in pixel space.
    :param steps: number of signed-gradient ascent steps.
    :param step_size: step length.
    :return: True where no iterate was misclassified.
    """
    was_training = model.training
    model.eval()
    lower, upper = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    with torch.no_grad():
        robust = model(x).argmax(1) == labels
    x_adv = x.detach().clone()
    if eps > 0:
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            robust &= (logits.argmax(1) == labels).detach()
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x_adv)
            x_adv = torch.max(torch.min(x_adv.detach() + step_size * grad.sign(), upper), lower)
        with torch.no_grad():
            robust &= model(x_adv).argmax(1) == labels
    model.train(was_training)
    return robust


#: Default step of :func:`pgd_minimize`, as a fraction of each coordinate's width ``upper - lower``.
PGD_BOX_STEP = 0.05


def pgd_minimize(
    model: nn.Module,
    objective: Callable[[Tensor], Tensor],
    lower: Tensor,
    upper: Tensor,
    *,
    start: Tensor | None = None,
    steps: int = PGD_STEPS,
    step_size: float = PGD_BOX_STEP,
    should_stop: Callable[[], bool] | None = None,
    stop_below: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise ``objective(model(x))`` over the box ``[lower, upper]``, for each batch element.

    Projected signed-gradient descent: each step moves every coordinate by ``step_size`` times
    its width and projects back onto the box. The best iterate of each element is kept (the
    start included), so the result never gets worse with more steps.

    :param model: the network; used in eval mode, its mode restored afterwards.
    :param objective: ``(B, *output) -> (B,)``, the value to minimise for each element (for a
        property: how far the outputs are from violating it).
    :param lower: ``(B, *input)`` lower ends of each element's box; ``upper`` likewise.
    :param start: ``(B, *input)`` first iterates inside the box (default: the box centres).
    :param steps: number of gradient steps.
    :param step_size: step per coordinate as a fraction of its width.
    :param should_stop: called before every step; ``True`` stops the descent (a time limit).
    :param stop_below: stop as soon as some element's best value is below this.
    :return: ``(x, value)``: the best point of each element, ``(B, *input)``, and its value, ``(B,)``.
    """
    if start is None:
        start = (lower + upper) / 2
    x = torch.min(torch.max(start.detach(), lower), upper)
    step = step_size * (upper - lower)
    was_training = model.training
    model.eval()
    try:
        best_x, best = x.clone(), torch.full((x.shape[0],), torch.inf, dtype=x.dtype, device=x.device)
        for index in range(steps + 1):
            x.requires_grad_(True)
            value = objective(model(x))
            with torch.no_grad():
                better = value.detach() < best
                best = torch.where(better, value.detach(), best)
                best_x[better] = x.detach()[better]
            if index == steps or (stop_below is not None and bool((best < stop_below).any())) \
                    or (should_stop is not None and should_stop()):
                break
            (grad,) = torch.autograd.grad(value.sum(), x)
            x = torch.min(torch.max(x.detach() - step * grad.sign(), lower), upper)
    finally:
        model.train(was_training)
    return best_x, best
