"""The paper's network architectures (Table 7), and the built-in ``relaxlab_architectures`` hook.

Every network is an ``nn.Sequential`` that starts with :class:`relaxlab.nn.Normalize`
(the dataset's per-channel mean/std, saved with the network) followed by
``Conv2d`` / ``Linear`` / ``ReLU`` / ``Flatten`` layers, which is what the engine bounds.
The input shape is generic: MNIST-like ``1x28x28`` and CIFAR/SVHN ``3x32x32`` both work.

Only the standard library and attrs load at import time; torch loads when a network is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from relaxlab.hookspecs import hookimpl
from relaxlab.nn import Normalize

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


        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"architecture {self.name!r}: input_shape must be (C, H, W), got {tuple(input_shape)}"
            )
        if num_classes < 2:
            raise ValueError(f"architecture {self.name!r}: need at least 2 classes, got {num_classes}")
        return nn.Sequential(Normalize(mean, std), *self.builder(shape, num_classes))  # type: ignore[arg-type]


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
)


@hookimpl
def relaxlab_architectures() -> Iterable[Architecture]:
    """The architectures of Table 7 of the paper: FC, CONV, CONV+ and FC-S."""
    return BUILTIN_ARCHITECTURES
