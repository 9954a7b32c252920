"""Projected gradient descent (Madry et al.) in a box: one attack for evaluation, training and verify.

One loop, :func:`descend`, minimises any objective of the outputs over a box ``[lower, upper]``
by projected signed-gradient steps, keeping each element's best iterate (the start included, so
more steps never make the result worse). Three entry points use it:

- :func:`pgd` ascends the cross-entropy ``CE(model(x'), y)`` (descends its negative) inside any box
  (the eps-ball clipped to the pixel range, a larger attack box, a per-coordinate box) and reports
  ``point``, each example's iterate with the highest cross-entropy (what training objectives use as
  the adversarial example: SABR's box centre, the adversarial term of MTL-IBP, CC-IBP, EXP-IBP), and
  ``robust``, whether the clean input and every iterate are classified correctly (checking every
  iterate keeps the evaluation monotone: the strongest point found counts, not only the last).
  Options: the start (``"centre"``: the clean input, projected onto the box; ``"random"``: uniform
  in the box, drawn on the CPU from a given ``torch.Generator`` so that a run stays a function of
  its seed), the step length (a number, or a tensor that broadcasts to the input: per coordinate),
  and steps from which the length is multiplied by ``decay_factor`` (SABR's schedule);
- :func:`pgd_robust` is App. F.4 of the paper, the evaluation attack: 100 steps of size 0.01 from
  the clean input in the eps-ball intersected with ``[0, 1]``;
- :func:`pgd_minimize` minimises any objective over any box with steps relative to each
  coordinate's width, and can stop early (``relaxlab verify`` minimises how far the outputs are
  from violating a property).

The model is put in eval mode for the descent (BatchNorm uses its running statistics, as in SABR's
and De Palma et al.'s training code) and its mode restored afterwards.

Shapes: ``B`` batch; inputs ``(B, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.engine.box import PIXEL_DOMAIN, input_box

PGD_STEPS = 100
PGD_STEP_SIZE = 0.01
#: Where :func:`pgd` starts.
STARTS = ("centre", "random")
#: Default step of :func:`pgd_minimize`, as a fraction of each coordinate's width ``upper - lower``.
PGD_BOX_STEP = 0.05


def descend(
    model: nn.Module,
    objective: Callable[[Tensor], Tensor],
    lower: Tensor,
    upper: Tensor,
    start: Tensor,
    *,
    steps: int,
    step: float | Tensor,
    decay_at: Sequence[int] = (),
    decay_factor: float = 0.1,
    should_stop: Callable[[], bool] | None = None,
    stop_below: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise ``objective(model(x))`` over ``[lower, upper]`` for each batch element: the one loop.

    Each step moves every coordinate by ``step`` against the sign of the gradient and projects back
    onto the box; ``objective`` is called once per iterate (the start included), in order.

    :param model: the network; used in eval mode, its mode restored afterwards.
    :param objective: ``(B, *output) -> (B,)``, the value to minimise for each element.
    :param lower: ``(B, *input)`` lower ends of each element's box; ``upper`` likewise.
    :param start: ``(B, *input)`` first iterates (projected onto the box).
    :param steps: number of gradient steps.
    :param step: step length, a number or a tensor broadcasting to the input.
    :param decay_at: step indices (0-based) from which the length is multiplied by ``decay_factor``
        once more for each (SABR: ``(4, 7, 8)`` for 8 steps).
    :param decay_factor: the multiplier of ``decay_at``.
    :param should_stop: called before every step; ``True`` stops the descent (a time limit).
    :param stop_below: stop as soon as some element's best value is below this.
    :return: ``(x, value)``: the best point of each element, ``(B, *input)``, and its value, ``(B,)``.
    """
    x = torch.min(torch.max(start.detach(), lower), upper)
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
            if (
                index == steps
                or (stop_below is not None and bool((best < stop_below).any()))
                or (should_stop is not None and should_stop())
            ):
                break
            (grad,) = torch.autograd.grad(value.sum(), x)
            length = step * decay_factor ** sum(1 for d in decay_at if index >= d) if decay_at else step
            x = torch.min(torch.max(x.detach() - length * grad.sign(), lower), upper)
    finally:
        model.train(was_training)
    return best_x.detach(), best


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
    :param decay_at: see :func:`descend`.
    :param decay_factor: see :func:`descend`.
    :return: the strongest iterate and which examples withstood every iterate.
    :raises ValueError: (before any work) a bad ``steps``, ``step_size``, ``start`` or box.
    """
    _check(x, lower, upper, steps, step_size, start, generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            robust = model(x).argmax(1) == labels
    finally:
        model.train(was_training)
    if start == "random":
        assert generator is not None
        noise = torch.rand(lower.shape, generator=generator, dtype=lower.dtype).to(lower.device)
        first = lower.detach() + noise * (upper - lower).detach()
    else:
        first = x.detach()

    def negative_ce(logits: Tensor) -> Tensor:
        nonlocal robust
        robust = robust & (logits.detach().argmax(1) == labels)
        return -F.cross_entropy(logits, labels, reduction="none")

    point, _ = descend(
        model,
        negative_ce,
        lower,
        upper,
        first,
        steps=steps,
        step=step_size,
        decay_at=decay_at,
        decay_factor=decay_factor,
    )
    return PGDResult(point=point, robust=robust)


def _check(
    x: Tensor,
    lower: Tensor,
    upper: Tensor,
    steps: int,
    step_size: float | Tensor,
    start: str,
    generator: torch.Generator | None,
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"PGD steps must be an int >= 0, got {steps!r}")
    if start not in STARTS:
        raise ValueError(f"PGD start must be one of {list(STARTS)}, got {start!r}")
    if start == "random" and generator is None:
        raise ValueError(
            "a random PGD start needs a torch.Generator (seeded, so that the attack is reproducible)"
        )
    size = step_size.detach() if isinstance(step_size, Tensor) else torch.tensor(float(step_size))
    if not bool(torch.isfinite(size).all()) or bool((size < 0).any()):
        raise ValueError(f"PGD step_size must be finite and >= 0, got {step_size!r}")
    if lower.shape != x.shape or upper.shape != x.shape:
        raise ValueError(
            f"the PGD box {tuple(lower.shape)}/{tuple(upper.shape)} must have x's shape {tuple(x.shape)}"
        )
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

    :func:`descend` with each step moving every coordinate by ``step_size`` times its width.

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
    return descend(
        model,
        objective,
        lower,
        upper,
        (lower + upper) / 2 if start is None else start,
        steps=steps,
        step=step_size * (upper - lower),
        should_stop=should_stop,
        stop_below=stop_below,
    )
