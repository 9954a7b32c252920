"""Projected gradient descent (Madry et al.) in a box: one attack for evaluation and for training.

:func:`pgd` ascends the cross-entropy ``CE(model(x'), y)`` by signed-gradient steps inside a box
``[lower, upper]`` (any box: the eps-ball clipped to the pixel range, a larger attack box, a
per-coordinate box), projecting every iterate back onto it. It reports two things about the
iterates ``x_0`` (the start) ... ``x_steps``:

- ``point``: per example, the iterate with the highest cross-entropy (the first one on ties),
  what training objectives use as the adversarial example (SABR's box centre, the adversarial
  term of MTL-IBP, CC-IBP, EXP-IBP);
- ``robust``: per example, whether the clean input and every iterate are classified correctly
  (checking every iterate keeps the evaluation monotone: the strongest point found counts, not
  only the last).

Options: the start (``"centre"``: the clean input, projected onto the box; ``"random"``: uniform
in the box, drawn on the CPU from a given ``torch.Generator`` so that a run stays a function of
its seed), the number of steps, the step length (a number, or a tensor that broadcasts to the
input: per coordinate), and steps after which the length is multiplied by ``decay_factor``
(SABR's schedule). The model is put in eval mode for the attack (BatchNorm uses its running
statistics, as in SABR's and De Palma et al.'s training code) and restored afterwards.

:func:`pgd_robust` is App. F.4 of the paper, the evaluation attack: 100 steps of size 0.01 from
the clean input in the eps-ball intersected with ``[0, 1]``.

Shapes: ``B`` batch; inputs ``(B, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.engine.box import PIXEL_DOMAIN, input_box

PGD_STEPS = 100
PGD_STEP_SIZE = 0.01
#: Where an attack starts.
STARTS = ("centre", "random")


@attrs.frozen
class PGDResult:
    """What an attack found.

    :param point: ``(B, ...)`` the iterate with the highest cross-entropy (detached).
    :param robust: ``(B,)`` True where the clean input and every iterate were classified correctly.
    """

    point: Tensor = attrs.field(eq=False)
    robust: Tensor = attrs.field(eq=False)


def pgd(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    lower: Tensor,
    upper: Tensor,
    *,
    steps: int,
    step_size: float | Tensor,
    start: str = "centre",
    generator: torch.Generator | None = None,
    decay_at: Sequence[int] = (),
    decay_factor: float = 0.1,
) -> PGDResult:
    """Signed-gradient ascent on the cross-entropy inside ``[lower, upper]`` (module docstring).

    :param model: classifier.
    :param x: ``(B, ...)`` clean inputs (the ``"centre"`` start, and the first robustness check).
    :param labels: ``(B,)`` labels.
    :param lower: ``(B, ...)`` lower corner of the box (``lower <= upper``).
    :param upper: ``(B, ...)`` upper corner.
    :param steps: number of ascent steps (>= 0; 0 returns the start).
    :param step_size: step length, a number or a tensor broadcasting to ``x`` (>= 0).
    :param start: ``"centre"`` (``x`` projected onto the box) or ``"random"`` (uniform in the box).
    :param generator: CPU generator of the random start (required for ``"random"``).
    :param decay_at: step indices (0-based) from which the length is multiplied by ``decay_factor``
        once more each (SABR: ``(4, 7)`` for 8 steps).
    :param decay_factor: the multiplier of ``decay_at``.
    :return: the strongest iterate and which examples withstood every iterate.
    :raises ValueError: (before any work) a bad ``steps``, ``step_size``, ``start`` or box.
    """
    _check(x, lower, upper, steps, step_size, start, generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            robust = model(x).argmax(1) == labels
        if start == "random":
            assert generator is not None
            noise = torch.rand(lower.shape, generator=generator, dtype=lower.dtype).to(lower.device)
            current = lower.detach() + noise * (upper - lower).detach()
        else:
            current = torch.max(torch.min(x.detach(), upper), lower)
        best = current.clone()
        best_loss = torch.full(labels.shape, -torch.inf, dtype=x.dtype, device=x.device)
        length = step_size
        for step in range(steps + 1):
            current = current.detach().requires_grad_(step < steps)
            with torch.set_grad_enabled(step < steps):  # the last iterate is only evaluated
                logits = model(current)
                loss = F.cross_entropy(logits, labels, reduction="none")
            robust &= (logits.argmax(1) == labels).detach()
            better = loss.detach() > best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), current.detach(), best)
            if step == steps:
                break
            if step in decay_at:
                length = length * decay_factor
            (grad,) = torch.autograd.grad(loss.sum(), current)
            current = torch.max(torch.min(current.detach() + length * grad.sign(), upper), lower)
    finally:
        model.train(was_training)
    return PGDResult(point=best.detach(), robust=robust)


def _check(
    x: Tensor, lower: Tensor, upper: Tensor, steps: int, step_size: float | Tensor, start: str,
    generator: torch.Generator | None,
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"PGD steps must be an int >= 0, got {steps!r}")
    if start not in STARTS:
        raise ValueError(f"PGD start must be one of {list(STARTS)}, got {start!r}")
    if start == "random" and generator is None:
        raise ValueError("a random PGD start needs a torch.Generator (seeded, so that the attack is reproducible)")
    size = step_size.detach() if isinstance(step_size, Tensor) else torch.tensor(float(step_size))
    if not bool(torch.isfinite(size).all()) or bool((size < 0).any()):
        raise ValueError(f"PGD step_size must be finite and >= 0, got {step_size!r}")
    if lower.shape != x.shape or upper.shape != x.shape:
        raise ValueError(f"the PGD box {tuple(lower.shape)}/{tuple(upper.shape)} must have x's shape {tuple(x.shape)}")
    if bool((lower > upper).any()):
        raise ValueError("the PGD box has lower > upper somewhere; give lower <= upper")


def pgd_robust(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    *,
    steps: int = PGD_STEPS,
    step_size: float = PGD_STEP_SIZE,
) -> Tensor:
    """Which samples withstand the evaluation attack: ``(B,)`` bool.

    :func:`pgd` from the clean input in the eps-ball intersected with ``[0, 1]`` (App. F.4).

    :param model: classifier taking inputs in [0, 1].
    :param x: ``(B, ...)`` clean inputs.
    :param labels: ``(B,)`` labels.
    :param eps: L-infinity radius in pixel space.
    :param steps: number of signed-gradient ascent steps.
    :param step_size: step length.
    :return: True where no iterate was misclassified.
    """
    lower, upper = input_box(x.detach(), eps, PIXEL_DOMAIN)
    return pgd(model, x, labels, lower, upper, steps=steps if eps > 0 else 0, step_size=step_size).robust
