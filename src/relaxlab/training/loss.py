"""Certified training losses: the batch an objective sees, and the loss of one training step.

For a margin specification with rows ``e_y - e_j`` (``j != y``), a relaxation gives lower bounds
``lb_j`` on ``z_y - z_j`` over an input box (:func:`relaxlab.engine.spec.margin_bounds`). The
worst-case logits are ``z_worst[y] = 0`` and ``z_worst[j] = -lb_j``; the certified loss is
``CE(z_worst, y)``. With loss fusion the certified loss over the ε-box is instead the upper bound
of the worst-case cross-entropy that :func:`relaxlab.engine.fusion.fused_ce_bound` computes with
one row per example.

What is minimised is a training objective (:mod:`relaxlab.objectives`: the paper's κ-mix, the
CROWN-IBP defense, SABR, MTL-IBP, CC-IBP, EXP-IBP, or a plugin's). :class:`BatchContext` is the
:class:`~relaxlab.objectives.ObjectiveContext` of one batch: it computes bounds through the
public engine API for whichever relaxation the run trains with, and adversarial points with the
one PGD (:func:`relaxlab.evaluation.pgd.pgd`, random starts from a generator seeded per step).
:func:`training_loss` adds the L1 penalty and the batch accuracy.

Shapes: ``B`` batch, ``K`` classes.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.api import get_registry, get_relaxation
from relaxlab.engine.box import PIXEL_DOMAIN, input_box
from relaxlab.engine.fusion import fused_ce_bound
from relaxlab.engine.spec import margin_bounds, other_classes, worst_case_logits
from relaxlab.evaluation.pgd import pgd
from relaxlab.objectives import DEFAULT_OBJECTIVE, Objective


def robust_ce(lb: Tensor, others: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``CE(z_worst, y)`` averaged over the batch, from margin lower bounds (differentiable)."""
    return F.cross_entropy(worst_case_logits(lb, others, num_classes), labels)


def l1_penalty(model: nn.Module) -> Tensor:
    """Sum of absolute weights of all Linear and Conv2d layers (biases excluded)."""
    terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return torch.stack(terms).sum()


@attrs.define(eq=False)
class BatchContext:
    """One training batch as objectives see it (:class:`relaxlab.objectives.ObjectiveContext`).

    :param model: the network, in training mode.
    :param x: ``(B, ...)`` the batch, pixels in ``[0, 1]``.
    :param labels: ``(B,)``.
    :param eps: the schedule's radius.
    :param kappa: the schedule's weight of the natural loss.
    :param beta: the schedule's CROWN-IBP weight.
    :param relaxation: the run's relaxation (an object).
    :param num_classes: ``K``.
    :param elision: bound the margins directly (the engine folds them into the last layer).
    :param fusion: :meth:`certified_loss` is the fused bound (:mod:`relaxlab.engine.fusion`).
    :param generator: CPU generator of the attacks' random starts.
    """

    model: nn.Module
    x: Tensor
    labels: Tensor
    eps: float
    kappa: float
    beta: float
    relaxation: Any
    num_classes: int
    elision: bool = True
    fusion: bool = False
    generator: torch.Generator = attrs.field(factory=lambda: torch.Generator().manual_seed(0))
    _logits: Tensor | None = attrs.field(default=None, init=False)

    @property
    def logits(self) -> Tensor:
        """The clean logits, computed once."""
        if self._logits is None:
            self._logits = self.model(self.x)
        return self._logits

    def natural_loss(self) -> Tensor:
        return F.cross_entropy(self.logits, self.labels)

    def eps_box(self, radius: float | None = None) -> tuple[Tensor, Tensor]:
        return input_box(self.x.detach(), self.eps if radius is None else radius, PIXEL_DOMAIN)

    def _relaxation(self, relaxation: Any) -> Any:
        return self.relaxation if relaxation is None else get_relaxation(relaxation)

    def margins(
        self,
        centre: Tensor | None = None,
        radius: float | Tensor | None = None,
        *,
        within: tuple[Tensor, Tensor] | None = None,
        relaxation: Any = None,
    ) -> tuple[Tensor, Tensor]:
        # the model is in training mode: no centre check (see engine.bounds.compute_bounds)
        return margin_bounds(
            self.model,
            self.x if centre is None else centre,
            self.labels,
            self.eps if radius is None else radius,
            self._relaxation(relaxation),
            num_classes=self.num_classes,
            domain=PIXEL_DOMAIN if within is None else within,
            elision=self.elision,
            check_centre=False,
        )

    def margin_loss(self, margins: Tensor, others: Tensor) -> Tensor:
        return F.cross_entropy(worst_case_logits(margins, others, self.num_classes), self.labels)

    def logit_margins(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        others = other_classes(self.labels, self.num_classes)
        return logits.gather(1, self.labels.unsqueeze(1)) - logits.gather(1, others), others

    def certified_loss(self, relaxation: Any = None) -> Tensor:
        resolved = self._relaxation(relaxation)
        if self.fusion:
            return fused_ce_bound(
                self.model, self.x, self.labels, self.eps, resolved, num_classes=self.num_classes
            ).mean()
        lb, others = self.margins(relaxation=resolved)
        return robust_ce(lb, others, self.labels, self.num_classes)

    def attack(
        self,
        lower: Tensor,
        upper: Tensor,
        *,
        steps: int,
        step_size: float,
        decay_at: tuple[int, ...] = (),
    ) -> Tensor:
        return pgd(
            self.model,
            self.x.detach(),
            self.labels,
            lower,
            upper,
            steps=steps,
            step_size=step_size,
            start="random",
            generator=self.generator,
            decay_at=decay_at,
        ).point

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


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
    objective: Objective | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The objective's loss of one batch ``+ l1 * |W|_1``, and its parts as floats (for logging).

    :param relaxations: the run's relaxation, first; natural training has none (the loss is then
        the natural cross-entropy, κ = 1).
    :param objective: what to minimise; default: the paper's κ-mix for one relaxation, the
        CROWN-IBP defense for the pair (CROWN-IBP (R), IBP).
    :param generator: source of the attacks' random starts (the trainer seeds it with
        :func:`~relaxlab.training.schedule.step_seed`); default: seeded 0.
    :return: the loss and its parts (``loss``, ``accuracy``, ``loss_natural``, and the objective's).
    """
    if objective is None:
        name = "CROWN-IBP" if len(relaxations) == 2 else DEFAULT_OBJECTIVE
        objective = get_registry().objectives[name]
    if len(relaxations) == 2 and relaxations[1].label != "IBP":
        raise ValueError(f"the CROWN-IBP defense mixes a relaxation with IBP, got {relaxations[1].label!r}")
    context = BatchContext(
        model=model,
        x=x,
        labels=labels,
        eps=eps,
        kappa=kappa if relaxations else 1.0,
        beta=beta,
        relaxation=relaxations[0] if relaxations else None,
        num_classes=num_classes,
        elision=elision,
        fusion=fusion,
        generator=generator if generator is not None else torch.Generator().manual_seed(0),
    )
    loss, parts = objective(context)
    if l1 > 0.0:
        loss = loss + l1 * l1_penalty(model)
    parts["loss"] = float(loss.detach())
    parts["accuracy"] = float((context.logits.argmax(1) == labels).float().mean())
    return loss, parts
