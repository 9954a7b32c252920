"""Stability cases of a ReLU and the one boundary convention of relaxlab.

For pre-activation bounds ``[l, u]``:

- ``u <= 0`` is NEGATIVE (including ``l == u == 0``);
- ``l >= 0`` and ``u > 0`` is POSITIVE;
- otherwise (``l < 0 < u``) UNSTABLE.

Every element belongs to exactly one case.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the convention itself needs no torch; tensors bring it along
    from torch import Tensor


class Stability(enum.Enum):
    """The three stability cases of a ReLU with input in ``[l, u]``."""

    NEGATIVE = "negative"
    UNSTABLE = "unstable"
    POSITIVE = "positive"

    def __str__(self) -> str:
        return self.value


def stability_masks(lower: Tensor, upper: Tensor) -> dict[Stability, Tensor]:
    """Boolean masks, one per case, that partition the elements of ``[lower, upper]``."""
    negative = upper <= 0
    positive = (lower >= 0) & ~negative
    unstable = ~negative & ~positive
    return {Stability.NEGATIVE: negative, Stability.UNSTABLE: unstable, Stability.POSITIVE: positive}


def classify(lower: float, upper: float) -> Stability:
    """The case of one scalar pair, with the same convention as :func:`stability_masks`."""
    if upper <= 0:
        return Stability.NEGATIVE
    if lower >= 0:
        return Stability.POSITIVE
    return Stability.UNSTABLE


ALL_CASES = frozenset(Stability)


class CaseWeights:
    """Float weights (1 inside, 0 outside) of stability cases and of their unions, computed on demand.

    Same convention as :func:`stability_masks`, computed without boolean tensors: with
    ``p = [u > 0]`` and ``q = [l < 0]``, UNSTABLE is ``p·q``, POSITIVE ``p - p·q`` and NEGATIVE
    ``1 - p``. ``[u > 0]`` is ``sign(relu(u))``: two float passes, where a comparison and a
    conversion from bool cost about five on the CPU builds we measured. Weights carry no
    gradient. NaN bounds give NaN weights (so NaN reaches the result instead of a silent 0).

    Index with a frozenset of cases; the union of all three cases has weight ``None`` (no mask).
    """

    def __init__(self, lower: Tensor, upper: Tensor) -> None:
        self._lower, self._upper = lower.detach(), upper.detach()
        self._cache: dict[frozenset[Stability], Tensor] = {}

    def __getitem__(self, cases: frozenset[Stability]) -> Tensor | None:
        if cases == ALL_CASES:
            return None
        return self._mask(cases)

    def _mask(self, cases: frozenset[Stability]) -> Tensor:
        """The weight of a proper subset of the cases (cached)."""
        if cases not in self._cache:
            self._cache[cases] = self._compute(cases)
        return self._cache[cases]

    def _compute(self, cases: frozenset[Stability]) -> Tensor:
        import torch

        if cases == _ABOVE:
            return torch.relu(self._upper).sign_()  # u > 0
        if cases == _NEGATIVE:
            return 1.0 - self._mask(_ABOVE)
        if cases == _UNSTABLE:
            below = torch.clamp(self._lower, max=0.0).sign_().neg_()  # l < 0
            return below.mul_(self._mask(_ABOVE))
        if cases == _POSITIVE:
            return self._mask(_ABOVE) - self._mask(_UNSTABLE)
        # The union of two cases: one minus the third.
        (rest,) = ALL_CASES - cases
        return 1.0 - self._mask(frozenset({rest}))


_NEGATIVE, _UNSTABLE, _POSITIVE = (frozenset({s}) for s in Stability)
_ABOVE = frozenset({Stability.UNSTABLE, Stability.POSITIVE})  # u > 0
