"""Network building blocks that the engine understands besides plain torch layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel input normalisation ``(x - mean) / std``, a layer of the network.

    The engine bounds it exactly as the affine map it is. It is kept as a layer
    (not folded into the first convolution) because folding it into a
    zero-padded convolution changes what the padded border computes.

    :param mean: one value per input channel (or a single value).
    :param std: one positive value per input channel (or a single value).
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.get_default_dtype()).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.get_default_dtype()).reshape(-1)
        if mean_t.numel() != std_t.numel():
            raise ValueError(
                f"Normalize: mean has {mean_t.numel()} values but std has {std_t.numel()}; give one per channel"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool(torch.isfinite(std_t).all()):
            raise ValueError("Normalize: mean and std must be finite")
        if bool((std_t <= 0).any()):
            raise ValueError(f"Normalize: std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        # (C,) broadcasts over (B, C, H, W) as (1, C, 1, 1) and over (B, d) as (1, d).
        return (1, -1, *([1] * (x.dim() - 2))) if self.mean.numel() > 1 else (1,)

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
