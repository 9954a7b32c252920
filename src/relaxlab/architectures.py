"""The paper's network architectures (Table 7), CNN7 and a small ResNet, and the built-in
``relaxlab_architectures`` hook.

Every network is an ``nn.Sequential`` that starts with :class:`relaxlab.nn.Normalize`
(the dataset's per-channel mean/std, saved with the network). The paper's networks follow with
``Conv2d`` / ``Linear`` / ``ReLU`` / ``Flatten`` layers (the chain engine); CNN7 adds BatchNorm
and ResNet-S residual blocks (:class:`relaxlab.nn.ResidualBlock`) and AvgPool (the graph engine).
The input shape is generic: MNIST-like ``1x28x28`` and CIFAR/SVHN ``3x32x32`` both work.

Only the standard library and attrs load at import time; torch loads when a network is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from relaxlab.hookspecs import hookimpl

if TYPE_CHECKING:
    from torch import nn

#: ``builder(input_shape, num_classes) -> layers`` (without the leading normalisation).
Builder = Callable[[tuple[int, int, int], int], "list[nn.Module]"]


@attrs.frozen(kw_only=True)
class Architecture:
    """A network architecture known by name.

    :param name: registry name (``"CONV"``).
    :param builder: ``builder(input_shape, num_classes) -> list of layers`` after normalisation.
    :param summary: one line for listings (the layer sequence).
    """

    name: str
    builder: Builder = attrs.field(eq=False, repr=False)
    summary: str = ""

    def build(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> nn.Sequential:
        """Build a freshly initialised network (uses torch's global RNG; seed it first).

        :param input_shape: ``(channels, height, width)``.
        :param num_classes: output width.
        :param mean: per-channel mean for the leading :class:`~relaxlab.nn.Normalize`.
        :param std: per-channel std (positive).
        :return: ``nn.Sequential(Normalize, ...)``.
        """
        from torch import nn

        from relaxlab.nn import Normalize

        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"architecture {self.name!r}: input_shape must be (C, H, W), got {tuple(input_shape)}"
            )
        if num_classes < 2:
            raise ValueError(f"architecture {self.name!r}: need at least 2 classes, got {num_classes}")
        return nn.Sequential(Normalize(mean, std), *self.builder(shape, num_classes))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input of size {size} too small for a {kernel}x{kernel} convolution")
    return out


def _fc(widths: Sequence[int]) -> Builder:
    def build(input_shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
        from torch import nn

        layers: list[nn.Module] = [nn.Flatten()]
        width = input_shape[0] * input_shape[1] * input_shape[2]
        for hidden in widths:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        return layers

    return build


def _conv(convs: Sequence[tuple[int, int, int, int]], hidden: int) -> Builder:
    """``convs``: (channels, kernel, stride, padding) per convolution, then FC hidden, FC classes."""

    def build(input_shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
        from torch import nn

        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels, kernel, stride, padding in convs:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=padding), nn.ReLU()]
            channels = out_channels
            height, width = (
                _conv_out(height, kernel, stride, padding),
                _conv_out(width, kernel, stride, padding),
            )
        layers += [
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        ]
        return layers

    return build


def _cnn7(width: int = 64, hidden: int = 512) -> Builder:
    """CNN7 of CTBench / SABR / TAPS: five 3x3 convolutions (``width``, ``width``, ``2·width`` with
    stride 2, ``2·width``, ``2·width``), FC ``hidden``, FC classes; BatchNorm after every
    convolution and hidden linear layer, then ReLU."""

    def build(input_shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
        from torch import nn

        channels, height, width_px = input_shape
        layers: list[nn.Module] = []
        for out_channels, stride in ((width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (2 * width, 1)):
            layers += [
                nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            channels = out_channels
            height, width_px = _conv_out(height, 3, stride, 1), _conv_out(width_px, 3, stride, 1)
        layers += [
            nn.Flatten(),
            nn.Linear(channels * height * width_px, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        ]
        return layers

    return build


def _resnet_small(input_shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
    """CONV 16 3x3 + BN, two residual blocks (16, then 32 with stride 2), AvgPool 2, FC 100, FC classes."""
    from torch import nn

    from relaxlab.nn import ResidualBlock

    channels, height, width = input_shape
    for stride in (1, 1, 2):
        height, width = _conv_out(height, 3, stride, 1), _conv_out(width, 3, stride, 1)
    height, width = _conv_out(height, 2, 2, 0), _conv_out(width, 2, 2, 0)
    return [
        nn.Conv2d(channels, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        ResidualBlock(16, 16),
        ResidualBlock(16, 32, stride=2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * height * width, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    ]


BUILTIN_ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name="FC", builder=_fc((400, 200, 100, 100)), summary="FC 400, FC 200, FC 100, FC 100, FC classes"
    ),
    Architecture(
        name="CONV",
        builder=_conv(((16, 4, 2, 1),), 100),
        summary="CONV 16 4x4+2 (padding 1: 16x14x14 on 28x28), FC 100, FC classes",
    ),
    Architecture(
        name="CONV+",
        builder=_conv(((16, 4, 2, 0), (32, 4, 1, 0)), 100),
        summary="CONV 16 4x4+2, CONV 32 4x4+1 (no padding), FC 100, FC classes ('small' of Gowal et al.)",
    ),
    Architecture(name="FC-S", builder=_fc((100, 100)), summary="FC 100, FC 100, FC classes"),
    Architecture(
        name="CNN7",
        builder=_cnn7(),
        summary="CONV 64, 64, 128 (stride 2), 128, 128 3x3, FC 512, FC classes; BatchNorm + ReLU after each "
        "(CTBench/SABR/TAPS)",
    ),
    Architecture(
        name="ResNet-S",
        builder=_resnet_small,
        summary="CONV 16 3x3 + BN, residual blocks 16 and 32 (stride 2), AvgPool 2, FC 100, FC classes",
    ),
)


@hookimpl
def relaxlab_architectures() -> Iterable[Architecture]:
    """The architectures of Table 7 of the paper (FC, CONV, CONV+, FC-S), CNN7 and ResNet-S."""
    return BUILTIN_ARCHITECTURES
