"""Training objectives as data, and the built-in ones (the ``relaxlab_objectives`` hook).

An :class:`Objective` is what certified training minimises for one batch: a function of an
:class:`ObjectiveContext` (the model, the batch, the run's relaxation, the schedule's ε, κ and
β, and what the training layer offers on top: bounds over any box inside the ε-box, the
adversarial attack, the natural loss) and of the objective's own parameters, returning the loss
and its logged parts. Objectives are registered through the same hook machinery as relaxations:
relaxlab's own come from this module's :func:`relaxlab_objectives`, third-party ones from the
``relaxlab`` entry-point group. An objective never imports the engine: the context brings
bounds for **any** registered relaxation (the training layer implements it with the public
engine API, :func:`relaxlab.engine.margin_bounds`, and the one PGD,
:func:`relaxlab.evaluation.pgd.pgd`).

Parameters are declared with :class:`~relaxlab.core.relaxation.ParamSpec` (default and range)
and set in the syntax relaxations use: ``SABR(lambda=0.4)``, ``MTL-IBP(alpha=0.5, steps=1)``.
Values are checked when they are set, before any work.

The built-ins (formulas, defaults and sources in docs/training.md):

=============  ================================================================================
``kappa-mix``  the paper's loss: ``κ·CE(z, y) + (1−κ)·CE(z_worst(ε-box), y)`` (Gowal et al. 2018)
``CROWN-IBP``  the CROWN-IBP defense: robust term ``β·CE_R + (1−β)·CE_IBP`` (Zhang et al. 2020)
``SABR``       the worst case over a box of radius ``λ·ε`` centred at a PGD point, inside the
               ε-box (Müller et al. 2023)
``MTL-IBP``    ``α·CE_cert + (1−α)·CE(f(x_adv), y)`` (De Palma et al. 2024)
``CC-IBP``     the cross-entropy of ``α·lb + (1−α)·m(x_adv)``, margins combined (De Palma et al.)
``EXP-IBP``    ``CE_cert^α · CE_adv^(1−α)`` (De Palma et al.)
=============  ================================================================================

Every built-in mixes its robust term with the natural loss by κ (:func:`kappa_mixed`): with
``kappa_end = 0`` after the warm-up the published objective is trained as published; with
κ = 1 (warm-up) the robust term is not computed.

Only the standard library and attrs load at import time; torch loads when a loss is computed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from attrs import field, frozen

from relaxlab.core.convert import as_tuple
from relaxlab.core.relaxation import NAME_PATTERN, ParamSpec
from relaxlab.hookspecs import hookimpl

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import Tensor, nn

    from relaxlab.core.relaxer import Relaxer

#: What an objective returns: the loss (a scalar tensor to differentiate) and parts to log.
LossParts = tuple["Tensor", dict[str, float]]
#: ``loss(context, parameters) -> (loss, parts)``.
ObjectiveFn = Callable[["ObjectiveContext", Mapping[str, float]], LossParts]


class ObjectiveContext(Protocol):
    """One training batch as an objective sees it (implemented by :mod:`relaxlab.training.loss`).

    Boxes are l_inf boxes in pixel space, always inside ``[0, 1]``; ``centre``/``radius`` default
    to the batch and the schedule's ε. A relaxation may be given as an object or a registered
    name; the default is the run's.

    Shapes: ``B`` batch, ``K`` classes; inputs ``(B, ...)``.
    """

    model: nn.Module
    x: Tensor
    labels: Tensor
    eps: float
    kappa: float
    beta: float
    num_classes: int
    relaxation: Relaxer

    @property
    def logits(self) -> Tensor:
        """``(B, K)`` the clean logits (computed once, in the model's training mode)."""

    def natural_loss(self) -> Tensor:
        """``CE(z, y)``, the batch mean over the clean logits."""

    def eps_box(self, radius: float | None = None) -> tuple[Tensor, Tensor]:
        """``[x − radius, x + radius] ∩ [0, 1]`` (default radius: ε)."""

    def margins(
        self,
        centre: Tensor | None = None,
        radius: float | Tensor | None = None,
        *,
        within: tuple[Tensor, Tensor] | None = None,
        relaxation: Relaxer | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Lower bounds ``(B, K−1)`` of the margins ``z_y − z_j`` over ``[centre ± radius] ∩ within``
        (``within`` defaults to ``[0, 1]``), and the class ``j`` of each column."""

    def margin_loss(self, margins: Tensor, others: Tensor) -> Tensor:
        """``CE(z_worst, y)`` for logits ``0`` at the label and ``−margins`` elsewhere (batch mean)."""

    def logit_margins(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The margins ``z_y − z_j`` of some logits, ``(B, K−1)``, and the class of each column."""

    def certified_loss(self, relaxation: Relaxer | str | None = None) -> Tensor:
        """The certified cross-entropy over the ε-box: ``margin_loss(margins())``, or the fused
        bound when the run uses loss fusion."""

    def attack(
        self,
        lower: Tensor,
        upper: Tensor,
        *,
        steps: int,
        step_size: float,
        decay_at: tuple[int, ...] = (),
    ) -> Tensor:
        """PGD on the cross-entropy inside ``[lower, upper]`` from a seeded random start: the
        iterate with the highest loss (detached)."""

    def forward(self, x: Tensor) -> Tensor:
        """``model(x)`` in the model's training mode (logits to differentiate)."""


def _check_name(_instance: object, _attribute: object, value: str) -> None:
    if not re.match(NAME_PATTERN, value):
        raise ValueError(
            f"objective name {value!r} is not allowed: use letters, digits, spaces and -_().,+=/"
        )


def _items(values: Mapping[str, float] | Iterable[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    pairs = values.items() if isinstance(values, Mapping) else values
    return tuple(sorted((str(k), v) for k, v in pairs))


def format_value(value: float) -> str:
    """A parameter value as labels show it: ``8`` for 8.0, ``0.004`` for 4e-3."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@frozen(kw_only=True)
class Objective:
    """A training objective: its loss function, parameters and documentation.

    :param name: registry name (``"SABR"``).
    :param loss: ``loss(context, parameters) -> (loss, parts)`` (see :data:`ObjectiveFn`).
    :param params: the parameters with defaults and ranges.
    :param integers: parameters that take whole numbers only (``steps``).
    :param values: parameters set to other values than their defaults (use :meth:`with_params`).
    :param fusable: its certified term is the ε-box cross-entropy of :meth:`ObjectiveContext.certified_loss`,
        so loss fusion applies to it; ``False`` refuses ``loss_fusion`` by name.
    :param attack: it uses an adversarial attack (listings say so).
    :param summary: one line for listings.
    :param formula: the loss as a formula (listings, docs).
    :param reference: where it comes from.
    :raises ValueError: a bad name, an undeclared, non-integral or out-of-range value.
    """

    name: str = field(validator=_check_name)
    loss: ObjectiveFn = field(eq=False, repr=False)
    params: tuple[ParamSpec, ...] = field(default=(), converter=as_tuple)
    integers: tuple[str, ...] = field(default=(), converter=as_tuple)
    values: tuple[tuple[str, float], ...] = field(default=(), converter=_items)
    fusable: bool = False
    attack: bool = False
    summary: str = ""
    formula: str = ""
    reference: str = ""

    def __attrs_post_init__(self) -> None:
        declared = {p.name for p in self.params}
        if len(declared) != len(self.params):
            raise ValueError(f"objective {self.name!r} declares a parameter twice")
        stray = set(self.integers) - declared
        if stray:
            raise ValueError(
                f"objective {self.name!r}: integers {sorted(stray)} are not among its parameters"
            )
        for spec in self.params:
            self._check(spec, spec.default)
        for key, value in self.values:
            declared_spec = next((p for p in self.params if p.name == key), None)
            if declared_spec is None:
                raise ValueError(self._unknown(key))
            self._check(declared_spec, value)

    def _unknown(self, key: str) -> str:
        names = [p.name for p in self.params]
        if not names:
            return f"{self.name} has no parameters, got {key!r}"
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{self.name} has no parameter {key!r}{hint}; its parameters: {', '.join(names)}"

    def _check(self, spec: ParamSpec, value: float) -> float:
        checked = spec.validate(value, self.name)
        if spec.name in self.integers and not checked.is_integer():
            raise ValueError(
                f"{self.name}: parameter {spec.name} must be a whole number, got {format_value(checked)}"
            )
        return checked

    @property
    def parameters(self) -> dict[str, float]:
        """Every parameter's value (defaults filled in)."""
        current = dict(self.values)
        return {p.name: float(current.get(p.name, p.default)) for p in self.params}

    def with_params(self, **values: float) -> Objective:
        """A copy with some parameters set (checked here: a bad value raises ``ValueError``)."""
        for key in values:
            if key not in {p.name for p in self.params}:
                raise ValueError(self._unknown(key))
        return attrs.evolve(self, values={**dict(self.values), **values})

    @property
    def label(self) -> str:
        """The name with its non-default parameters: ``SABR(lambda=0.6)``."""
        current = self.parameters
        changed = [
            f"{p.name}={format_value(current[p.name])}" for p in self.params if current[p.name] != p.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def __call__(self, context: ObjectiveContext) -> LossParts:
        """The loss of one batch and its parts."""
        return self.loss(context, self.parameters)

    def __str__(self) -> str:
        return self.label


# --------------------------------------------------------------------------- the built-ins

#: The name of the paper's objective, what a config without ``objective`` trains.
DEFAULT_OBJECTIVE = "kappa-mix"


def kappa_mixed(context: ObjectiveContext, robust: Callable[[], LossParts]) -> LossParts:
    """``κ·CE(z, y) + (1−κ)·robust``, with ``robust()`` called only when ``κ < 1``.

    :param context: the batch.
    :param robust: computes the robust term and its own parts.
    :return: the loss and the parts ``loss_natural``, ``loss_robust`` and ``robust``'s.
    """
    natural = context.natural_loss()
    loss = context.kappa * natural
    parts = {"loss_natural": float(natural.detach())}
    if context.kappa < 1.0:
        term, more = robust()
        loss = loss + (1.0 - context.kappa) * term
        parts["loss_robust"] = float(term.detach())
        parts.update(more)
    return loss, parts


def _kappa_mix(context: ObjectiveContext, _params: Mapping[str, float]) -> LossParts:
    return kappa_mixed(context, lambda: (context.certified_loss(), {}))


def _crown_ibp(context: ObjectiveContext, _params: Mapping[str, float]) -> LossParts:
    def robust() -> LossParts:
        term = context.logits.new_zeros(())
        for weight, relaxation in ((context.beta, None), (1.0 - context.beta, "IBP")):
            if weight > 0.0:
                term = term + weight * context.certified_loss(relaxation)
        return term, {}

    return kappa_mixed(context, robust)


def sabr_decay(steps: int) -> tuple[int, ...]:
    """SABR's attack schedule: the step length is divided by 10 from steps ⌈n/2⌉, ⌈0.8n⌉ and ⌈0.9n⌉ on."""
    return tuple(math.ceil(f * steps) for f in (0.5, 0.8, 0.9))


def sabr_centre(point: Tensor, lower: Tensor, upper: Tensor, radius: float) -> Tensor:
    """The centre of SABR's box: ``point`` moved (per coordinate, as little as possible) so that
    the box of ``radius`` around it fits in ``[lower, upper]``; where the box is narrower than
    ``2·radius`` the centre is kept inside it (the small box then covers that coordinate)."""
    import torch

    shifted = torch.clamp(point, lower + radius, upper - radius)  # lower + r > upper - r: upper - r
    return torch.min(torch.max(shifted, lower), upper)


def adversarial_point(context: ObjectiveContext, params: Mapping[str, float]) -> Tensor:
    """The attack of MTL-, CC- and EXP-IBP: PGD in the ``attack_eps_factor·ε`` box (clipped to
    ``[0, 1]``), ``steps`` steps of ``step_size`` times that radius; the clean batch when
    ``steps = 0`` or ε = 0."""
    radius = params["attack_eps_factor"] * context.eps
    steps = int(params["steps"])
    if steps == 0 or radius == 0.0:
        return context.x
    lower, upper = context.eps_box(radius)
    return context.attack(lower, upper, steps=steps, step_size=params["step_size"] * radius)


def _sabr(context: ObjectiveContext, params: Mapping[str, float]) -> LossParts:
    lam, steps = params["lambda"], int(params["steps"])

    def robust() -> LossParts:
        if lam == 1.0:  # the small box is the ε-box: the relaxation's own certified loss
            return context.certified_loss(), {}
        lower, upper = context.eps_box()
        point = context.x
        if steps > 0 and context.eps > 0.0:
            point = context.attack(
                lower,
                upper,
                steps=steps,
                step_size=params["step_size"] * context.eps,
                decay_at=sabr_decay(steps),
            )
        radius = lam * context.eps
        centre = sabr_centre(point, lower, upper, radius)
        lb, others = context.margins(centre, radius, within=(lower, upper))
        return context.margin_loss(lb, others), {}

    return kappa_mixed(context, robust)


def _adversarial_loss(context: ObjectiveContext, params: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """The adversarial logits and their cross-entropy."""
    import torch.nn.functional as F

    logits = context.forward(adversarial_point(context, params))
    return logits, F.cross_entropy(logits, context.labels)


def _combined(
    context: ObjectiveContext, params: Mapping[str, float], combine: Callable[[Tensor, Tensor, float], Tensor]
) -> LossParts:
    """κ-mixed ``combine(CE_cert, CE_adv, α)``; at α = 1 the certified loss alone, at α = 0 the
    adversarial one alone (the other is not computed)."""
    alpha = params["alpha"]

    def robust() -> LossParts:
        parts: dict[str, float] = {}
        if alpha > 0.0:
            certified = context.certified_loss()
            parts["loss_certified"] = float(certified.detach())
        if alpha < 1.0:
            _, adversarial = _adversarial_loss(context, params)
            parts["loss_adversarial"] = float(adversarial.detach())
        if alpha == 1.0:
            return certified, parts
        if alpha == 0.0:
            return adversarial, parts
        return combine(certified, adversarial, alpha), parts

    return kappa_mixed(context, robust)


def _mtl_ibp(context: ObjectiveContext, params: Mapping[str, float]) -> LossParts:
    return _combined(context, params, lambda cert, adv, alpha: alpha * cert + (1.0 - alpha) * adv)


def _geometric(certified: Tensor, adversarial: Tensor, alpha: float) -> Tensor:
    """``CE_cert^α · CE_adv^(1−α)`` in log space; the clamp keeps a loss that underflowed to 0 from
    giving 0·inf = NaN gradients (it changes the value by less than the smallest float)."""
    import torch

    tiny = torch.finfo(certified.dtype).tiny
    return (alpha * certified.clamp_min(tiny).log() + (1.0 - alpha) * adversarial.clamp_min(tiny).log()).exp()


def _exp_ibp(context: ObjectiveContext, params: Mapping[str, float]) -> LossParts:
    return _combined(context, params, _geometric)


def _cc_ibp(context: ObjectiveContext, params: Mapping[str, float]) -> LossParts:
    alpha = params["alpha"]

    def robust() -> LossParts:
        if alpha == 1.0:
            return context.margin_loss(*context.margins()), {}
        logits, _ = _adversarial_loss(context, params)
        combined, others = context.logit_margins(logits)
        if alpha > 0.0:
            lb, _ = context.margins()  # the same columns: the classes other than the label, increasing
            combined = alpha * lb + (1.0 - alpha) * combined
        return context.margin_loss(combined, others), {}

    return kappa_mixed(context, robust)


def _attack_params(alpha: float, what: str) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("alpha", alpha, minimum=0.0, maximum=1.0, description=f"weight of the certified {what}"),
        ParamSpec("steps", 8.0, minimum=0.0, description="PGD steps of the attack (0: the clean point)"),
        ParamSpec(
            "step_size", 0.25, minimum=0.0, description="PGD step length, as a multiple of the attack radius"
        ),
        ParamSpec(
            "attack_eps_factor",
            2.1,
            minimum=0.0,
            strict=True,
            description="attack radius as a multiple of ε (the box is clipped to [0, 1])",
        ),
    )


EXPRESSIVE = "De Palma et al., Expressive Losses for Verified Robustness via Convex Combinations, ICLR 2024"

BUILTIN_OBJECTIVES: tuple[Objective, ...] = (
    Objective(
        name=DEFAULT_OBJECTIVE,
        loss=_kappa_mix,
        fusable=True,
        summary="the paper's loss: natural and certified cross-entropy mixed by κ",
        formula="κ·CE(z, y) + (1−κ)·CE(z_worst, y), z_worst over the ε-box with the run's relaxation",
        reference="Gowal et al. 2018; On the Paradox of Certified Training (Sec. 2, App. F.1)",
    ),
    Objective(
        name="CROWN-IBP",
        loss=_crown_ibp,
        fusable=True,
        summary="the CROWN-IBP defense: the run's relaxation and IBP mixed by β (1 → 0 over the ramp-up)",
        formula="κ·CE(z, y) + (1−κ)·(β·CE(z_worst^R, y) + (1−β)·CE(z_worst^IBP, y))",
        reference="Zhang et al., Towards Stable and Efficient Training of Verifiably Robust Neural Networks, "
        "ICLR 2020",
    ),
    Objective(
        name="SABR",
        loss=_sabr,
        params=(
            ParamSpec(
                "lambda",
                0.1,
                minimum=0.0,
                strict=True,
                maximum=1.0,
                description="radius of the propagated box as a fraction of ε",
            ),
            ParamSpec(
                "steps", 8.0, minimum=0.0, description="PGD steps for the box centre (0: the clean point)"
            ),
            ParamSpec("step_size", 0.5, minimum=0.0, description="PGD step length as a multiple of ε"),
        ),
        integers=("steps",),
        attack=True,
        summary="worst case over a small box (radius λε) around a PGD point, kept inside the ε-box",
        formula="κ·CE(z, y) + (1−κ)·CE(z_worst over [c − λε, c + λε] ∩ ε-box, y), c from PGD",
        reference="Müller et al., Certified Training: Small Boxes are All You Need, ICLR 2023",
    ),
    Objective(
        name="MTL-IBP",
        loss=_mtl_ibp,
        params=_attack_params(4e-3, "loss"),
        integers=("steps",),
        fusable=True,
        attack=True,
        summary="convex combination of the certified and the adversarial loss",
        formula="κ·CE(z, y) + (1−κ)·(α·CE(z_worst, y) + (1−α)·CE(f(x_adv), y))",
        reference=EXPRESSIVE,
    ),
    Objective(
        name="CC-IBP",
        loss=_cc_ibp,
        params=_attack_params(1e-2, "margins"),
        integers=("steps",),
        attack=True,
        summary="cross-entropy of a convex combination of certified and adversarial margins",
        formula="κ·CE(z, y) + (1−κ)·CE(z_worst(α·lb + (1−α)·m(x_adv)), y), m the margins z_y − z_j",
        reference=EXPRESSIVE,
    ),
    Objective(
        name="EXP-IBP",
        loss=_exp_ibp,
        params=_attack_params(9.5e-2, "loss (in log space)"),
        integers=("steps",),
        fusable=True,
        attack=True,
        summary="geometric combination of the certified and the adversarial loss",
        formula="κ·CE(z, y) + (1−κ)·CE(z_worst, y)^α · CE(f(x_adv), y)^(1−α)",
        reference=EXPRESSIVE,
    ),
)


@hookimpl
def relaxlab_objectives() -> Iterable[Objective]:
    """The paper's κ-mix, the CROWN-IBP defense, SABR, MTL-IBP, CC-IBP and EXP-IBP."""
    return BUILTIN_OBJECTIVES


def describe(objective: Objective) -> dict[str, Any]:
    """The facts listings show about one objective."""
    return {
        "name": objective.name,
        "params": objective.parameters,
        "fusable": objective.fusable,
        "attack": objective.attack,
        "summary": objective.summary,
        "formula": objective.formula,
        "reference": objective.reference,
    }
