"""Stability cases of a ReLU and the one boundary convention of relaxlab.

For pre-activation bounds ``[l, u]``:

- ``u <= 0`` is NEGATIVE (including ``l == u == 0``);
- ``l >= 0`` and ``u > 0`` is POSITIVE;
- otherwise (``l < 0 < u``) UNSTABLE.

Every element belongs to exactly one case.
"""

from __future__ import annotations

import enum

import torch
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


def safe_width(lower: Tensor, upper: Tensor) -> Tensor:
    """``u - l`` clamped away from zero.

    Clamp *before* dividing: ``torch.where`` evaluates both branches, and an
    ``inf`` in the unselected branch still turns gradients into NaN.
    """
    return (upper - lower).clamp_min(torch.finfo(lower.dtype).tiny)
