"""Projected gradient descent (Madry et al.) in the L-infinity ball, as in App. F.4 of the paper.

100 steps of size 0.01 by default, starting at the clean input, projecting onto the eps-ball
intersected with the pixel range [0, 1]. A sample counts as PGD-robust when the clean input and
every iterate are classified correctly (checking every iterate keeps the attack monotone: the
strongest point found is used, not only the last).
"""

from __future__ import annotations

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
