"""Optimised relaxation parameters: one value per neuron, chosen by projected gradient ascent on the bound.

A relaxation whose lines have free parameters (CROWN-alpha's lower slope ``α ∈ [0, 1]``, DeepZ-Soft's
``γ``, a plugin's own) is proved sound for *every* value in its declared range
(:func:`relaxlab.properties.prove_soundness` proves each line over the whole range, not at the current
value). So any choice of values in that range, made separately for every neuron of every example, gives
sound lines at every ReLU, and the bound computed with them is sound: optimising the values changes how
tight the bound is, never whether it holds. This is what α-CROWN (Xu et al., 2021) does for CROWN's
lower slope, for any relaxation the prover accepts.

The search, per bound computation:

- **start**: at each ReLU, in order, the parameter's ``start`` expression of that ReLU's bounds
  (:class:`~relaxlab.core.relaxation.ParamSpec`; CROWN-alpha starts at CROWN's own choice ``0`` or
  ``1``, so its first bound *is* CROWN's) or its value, clipped into the range;
- **steps**: Adam on the negated sum of the lower bounds (rows at or above ``target`` stop pulling:
  ``0`` for certification, where only the sign matters), each step followed by the projection back
  into the range (for a range open at its lower end, onto the next float above it);
- **result**: per row, the best bound of all iterates, the start included. Every iterate is a sound
  bound, so their elementwise maximum is, and it is never looser than the start.

The values are shared by the rows of an example (one value per neuron and example) and by every
bound that passes through their ReLU: the intermediate bounds of later ReLUs move with them. The
ReLU bounds of the start are those of the plain relaxation; later iterates recompute them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from attrs import field, frozen, validators
from torch import Tensor

from relaxlab.core.convert import as_tuple
from relaxlab.core.evaluate import parameter_start
from relaxlab.core.relaxation import ParamSpec
from relaxlab.engine.bounder import Bounder, ParameterSource
from relaxlab.engine.ops import Box

#: Defaults of :class:`Optimise`: α-CROWN's usual scale (Adam, a step of 0.1 on a slope in [0, 1]).
DEFAULT_STEPS = 20
DEFAULT_LR = 0.1


@frozen
class ParameterRange:
    """A parameter to optimise and the range its soundness was proved over.

    :param spec: the parameter's declaration (name, ``start``).
    :param value: the relaxation's value (the start where ``spec.start`` is ``None``).
    :param lo: smallest value (excluded when ``open_lo``).
    :param hi: largest value.
    """

    spec: ParamSpec
    value: float
    lo: float
    hi: float
    open_lo: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


def _positive_finite(instance: object, attribute: object, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the optimiser's step size must be a positive finite number, got {value!r}")


@frozen
class Optimise:
    """Optimise a relaxation's parameters per neuron (see the module docstring).

    Built with :func:`relaxlab.api.optimisation`, which proves the ranges first.

    :param ranges: the parameters and their proved ranges.
    :param steps: gradient steps after the start (0: the start only).
    :param lr: Adam's step size.
    :param target: rows whose lower bound reaches it stop pulling the parameters (``inf``: none).
    """

    ranges: tuple[ParameterRange, ...] = field(converter=as_tuple, validator=validators.min_len(1))
    steps: int = field(default=DEFAULT_STEPS, validator=[validators.instance_of(int), validators.ge(0)])
    lr: float = field(default=DEFAULT_LR, converter=float, validator=_positive_finite)
    target: float = field(default=math.inf, converter=float)


class _Values:
    """The per-neuron values of every ReLU: created at the start, then looked up (:data:`ParameterSource`)."""

    def __init__(self, optimise: Optimise) -> None:
        self.optimise = optimise
        self.values: dict[int, dict[str, Tensor]] = {}

    def __call__(self, index: int, lower: Tensor, upper: Tensor) -> Mapping[str, Tensor]:
        if index not in self.values:
            with torch.no_grad():
                made = {}
                for part in self.optimise.ranges:
                    start = parameter_start(part.spec, part.value, lower.detach(), upper.detach())
                    made[part.name] = _project(start, part).requires_grad_()
            self.values[index] = made
        return self.values[index]

    def leaves(self) -> list[Tensor]:
        return [value for values in self.values.values() for value in values.values()]

    def project(self) -> None:
        with torch.no_grad():
            for values in self.values.values():
                for part in self.optimise.ranges:
                    values[part.name].copy_(_project(values[part.name], part))


def _project(value: Tensor, part: ParameterRange) -> Tensor:
    """``value`` clipped into the range (open at ``lo``: onto the next float above it, in ``value``'s dtype)."""
    lo = torch.tensor(part.lo, dtype=value.dtype, device=value.device)
    if part.open_lo:
        lo = torch.nextafter(lo, torch.tensor(math.inf, dtype=value.dtype, device=value.device))
    hi = torch.tensor(part.hi, dtype=value.dtype, device=value.device)
    return torch.minimum(torch.maximum(value, lo), hi)


class _Adam:
    """Adam ascent (Kingma & Ba, 2015) on a few leaf tensors, written out: ``torch.optim`` would import
    the compiler stack on first use, seconds a one-off verification should not pay."""

    def __init__(
        self, leaves: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.leaves, self.lr, self.betas, self.eps = leaves, lr, betas, eps
        self.first = [torch.zeros_like(leaf) for leaf in leaves]
        self.second = [torch.zeros_like(leaf) for leaf in leaves]
        self.count = 0

    def ascend(self, grads: tuple[Tensor | None, ...]) -> None:
        self.count += 1
        b1, b2 = self.betas
        step = self.lr / (1 - b1**self.count)
        correction = math.sqrt(1 - b2**self.count)
        with torch.no_grad():
            for leaf, grad, m, v in zip(self.leaves, grads, self.first, self.second, strict=True):
                if grad is None:
                    continue
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                leaf.addcdiv_(m, v.sqrt().div_(correction).add_(self.eps), value=step)


def optimised_bounds(
    make: Callable[[ParameterSource], Bounder],
    spec: Tensor,
    optimise: Optimise,
    *,
    lower_only: bool = False,
    max_elements: int | None = None,
    expired: Callable[[], bool] | None = None,
) -> Box:
    """Bounds ``(B, S)`` of ``spec·f(x)`` (``spec`` ``(B, S, K)``) with optimised per-neuron parameters.

    :param make: a :class:`Bounder` (intermediate bounds computed) for a :data:`ParameterSource`.
    :param expired: checked before each step; when it returns true the best bounds so far are returned.
    :return: ``(lb, ub)``, the best of every iterate per row; ``ub`` is ``+inf`` with ``lower_only``.
    """
    values = _Values(optimise)
    with torch.enable_grad():
        lb, ub = make(values).bound(spec, lower_only, max_elements)
        best_lb, best_ub = lb.detach(), ub.detach()
        leaves = values.leaves()
        if not leaves or not (lb.requires_grad or ub.requires_grad):
            return best_lb, best_ub  # no ReLU, or no bound depends on the parameters
        adam = _Adam(leaves, optimise.lr)
        for _ in range(optimise.steps):
            if expired is not None and expired():
                break
            gain = lb.clamp(max=optimise.target).sum()
            if not lower_only:
                gain = gain + (-ub).clamp(max=optimise.target).sum()
            adam.ascend(torch.autograd.grad(gain, leaves, allow_unused=True))
            values.project()
            lb, ub = make(values).bound(spec, lower_only, max_elements)
            best_lb = torch.maximum(best_lb, lb.detach())
            best_ub = torch.minimum(best_ub, ub.detach())
    return best_lb, best_ub


@frozen
class Optimised:
    """A relaxation with its parameters optimised per neuron: what ``opt:NAME`` names
    (:func:`relaxlab.api.get_method`), certified and verified like a relaxation.

    :param relaxation: the relaxation.
    :param optimise: the search (its ranges proved sound for ``relaxation``).
    """

    relaxation: Any
    optimise: Optimise

    @property
    def name(self) -> str:
        return f"{OPTIMISED_PREFIX}{self.relaxation.name}"

    @property
    def label(self) -> str:
        return f"{OPTIMISED_PREFIX}{getattr(self.relaxation, 'label', self.relaxation.name)}"

    def canonical(self) -> str | None:
        """The relaxation's canonical text and the search's settings (``None`` when the relaxation has none)."""
        text = self.relaxation.canonical() if hasattr(self.relaxation, "canonical") else None
        if text is None:
            return None
        o = self.optimise
        return f"{text}\n{OPTIMISED_PREFIX} steps={o.steps} lr={o.lr!r} target={o.target!r} " + " ".join(
            f"{r.name}∈{'(' if r.open_lo else '['}{r.lo!r},{r.hi!r}]" for r in o.ranges
        )


#: How a name asks for optimised parameters: ``opt:CROWN-alpha``.
OPTIMISED_PREFIX = "opt:"


__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "OPTIMISED_PREFIX",
    "Optimise",
    "Optimised",
    "ParameterRange",
    "optimised_bounds",
]
