"""The one contract between a relaxation and the engine.

The engine (:mod:`relaxlab.engine`) never resolves names and never looks at a
relaxation's expressions: at every ReLU it asks a :class:`Relaxer` for the
lines at the pre-activation bounds, and for nothing else. A
:class:`~relaxlab.core.relaxation.ReluRelaxation` satisfies the protocol
structurally; so may any object a researcher writes by hand (a learnable,
α-style relaxation, a wrapper that counts calls).

Shapes: ``lower``/``upper`` of any shape; every returned tensor has that shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

#: Names of the four coefficients, in order.
COEFFICIENT_NAMES = ("lower_slope", "lower_offset", "upper_slope", "upper_offset")


class RelaxationTensors(NamedTuple):
    """Per-neuron line coefficients, the same shape as the bounds they came from.

    For every ``x`` in ``[l, u]``:
    ``lower_slope·x + lower_offset <= relu(x) <= upper_slope·x + upper_offset``.

    ``zeros`` optionally names coefficients that are exactly 0 everywhere (the engine may skip
    work for them); two coefficients with equal values may be the same tensor object. A plain
    named tuple, so that ``torch.compile`` traces code that builds and reads it.
    """

    lower_slope: Tensor
    lower_offset: Tensor
    upper_slope: Tensor
    upper_offset: Tensor
    zeros: frozenset[str] = frozenset()

    @property
    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four coefficients, without the hint."""
        return (self.lower_slope, self.lower_offset, self.upper_slope, self.upper_offset)


@runtime_checkable
class Relaxer(Protocol):
    """What the engine needs from a relaxation, and nothing more.

    - ``name``: for messages;
    - ``intermediate``: how the bounds of every ReLU's input are obtained: ``"backsub"`` (full
      backsubstitution), ``"interval"`` (interval arithmetic, the "(R)" variants) or ``"forward"``
      (forward affine forms with a box part: the hybrid zonotope, linear bound propagation);
    - ``final``: how the final specification is bounded, ``"backsub"`` or ``"forward"``;
    - ``is_interval``: every line has slope 0 everywhere, so the engine may take its interval
      fast path (same numbers up to rounding);
    - ``transform_bounds(lower, upper)``: the bounds the lines are evaluated on (a widening, or
      the bounds themselves);
    - ``coefficients(lower, upper)``: the lines at raw pre-activation bounds.
    """

    @property
    def name(self) -> str: ...
    @property
    def intermediate(self) -> str: ...
    @property
    def final(self) -> str: ...
    @property
    def is_interval(self) -> bool: ...
    def transform_bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]: ...
    def coefficients(self, lower: Tensor, upper: Tensor) -> RelaxationTensors: ...


def check_relaxer(relaxation: object) -> Relaxer:
    """``relaxation`` itself when it has the contract, else a ``TypeError`` naming what it lacks."""
    if isinstance(relaxation, Relaxer):
        return relaxation
    missing = [
        name
        for name in ("name", "intermediate", "final", "is_interval", "transform_bounds", "coefficients")
        if not hasattr(relaxation, name)
    ]
    raise TypeError(
        f"relaxation must be a name or a relaxation object; {type(relaxation).__name__} lacks {missing}"
    )
