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

    mean: Tensor  # buffers (register_buffer), declared for the type checker
    std: Tensor

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


class ResidualBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convolutions (padding 1).

    The shortcut is the identity when the shape is kept, else a 1x1 convolution with the
    block's stride followed by BatchNorm (He et al. 2016, option B). The graph engine bounds it.

    :param in_channels: ``C_in``.
    :param out_channels: ``C_out``.
    :param stride: stride of the first convolution (and of the shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))
