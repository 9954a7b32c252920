"""Layers the graph engine adds to the chain's: per-channel affine maps, grouped convolutions, joins.

Every affine layer has the interface of :mod:`relaxlab.engine.network`'s layers:
``forward(x, offset_scale=1.0)``, ``forward_abs(r)`` (linear part with ``|W|``) and
``backward(A)`` (rows ``(B, S, *out_shape)`` pulled back to ``(B, S, *in_shape)`` plus the
bias term ``(B, S)`` or ``None``), with ``in_shape``/``out_shape`` without the batch dimension.

- :class:`ChannelAffineLayer`: ``y = x·scale + shift`` per channel (dimension 0 of the
  shape), the form of ``BatchNorm`` in eval mode (or with a batch's statistics frozen);
- :class:`GroupConvLayer`: a convolution with ``groups > 1`` (and ``AvgPool2d`` as a
  depthwise convolution with the fixed kernel ``1/(k_h·k_w)``), pulled back with
  ``conv_transpose2d``;
- :class:`AddNode`, :class:`CatNode`, :class:`InputNode`: the joins of a DAG and its input.

Shapes: ``B`` batch, ``S`` specification rows, ``C`` channels.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

Shape = tuple[int, ...]


def channel_view(values: Tensor, shape: Shape) -> Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast against ``(..., *shape)`` (channel = ``shape[0]``)."""
    return values.reshape(-1, *([1] * (len(shape) - 1)))


@attrs.frozen(eq=False)
class ChannelAffineLayer:
    """``y = x·scale + shift`` with one ``scale``/``shift`` per channel (any sign of ``scale``)."""

    scale: Tensor  # (C, 1, ..., 1), broadcast against in_shape
    shift: Tensor  # (C, 1, ..., 1)
    in_shape: Shape
    out_shape: Shape
    is_diagonal = True

    def forward(self, x: Tensor, offset_scale: float = 1.0) -> Tensor:
        shift = self.shift if offset_scale == 1.0 else self.shift * offset_scale
        return torch.addcmul(shift, x, self.scale)

    def forward_abs(self, r: Tensor) -> Tensor:
        return r * self.scale.abs()

    def backward(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        # sum over the positions of each channel first, then one product with the per-channel shift
        per_channel = coef.flatten(3).sum(-1) if len(self.in_shape) > 1 else coef
        return coef * self.scale, per_channel @ self.shift.reshape(-1)


@attrs.frozen(eq=False)
class GroupConvLayer:
    """A 2-d convolution with ``groups`` groups (zero padding, dilation 1) on ``(B, C, H, W)``."""

    weight: Tensor  # (C_out, C_in / groups, kH, kW)
    bias: Tensor | None  # (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_shape: Shape
    out_shape: Shape
    is_diagonal = False

    def forward(self, x: Tensor, offset_scale: float = 1.0) -> Tensor:
        bias = self.bias if self.bias is None or offset_scale == 1.0 else self.bias * offset_scale
        return F.conv2d(x, self.weight, bias, self.stride, self.padding, 1, self.groups)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.conv2d(r, self.weight.abs(), None, self.stride, self.padding, 1, self.groups)

    def backward(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        batch, specs = coef.shape[:2]
        k_h, k_w = self.weight.shape[-2:]
        _, height, width = self.in_shape
        # Rows/columns of the input the strided convolution never reads get zero coefficients.
        extra = (
            (height + 2 * self.padding[0] - k_h) % self.stride[0],
            (width + 2 * self.padding[1] - k_w) % self.stride[1],
        )
        flat = coef.reshape(batch * specs, *self.out_shape)
        new = F.conv_transpose2d(flat, self.weight, None, self.stride, self.padding, extra, self.groups)
        bias = coef.sum(dim=(-2, -1)) @ self.bias if self.bias is not None else None
        return new.reshape(batch, specs, *self.in_shape), bias


@attrs.frozen(eq=False)
class InputNode:
    """The network's input ``(B, *out_shape)``."""

    out_shape: Shape


@attrs.frozen(eq=False)
class AddNode:
    """The sum of two inputs of the same shape (a residual connection)."""

    out_shape: Shape

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


@attrs.frozen(eq=False)
class CatNode:
    """Concatenation along the channels (dimension 0 of the shapes; 1 of the batched tensors)."""

    sizes: tuple[int, ...]  # channels contributed by each input
    out_shape: Shape

    def forward(self, *parts: Tensor) -> Tensor:
        return torch.cat(parts, dim=1)

    def split(self, coef: Tensor) -> tuple[Tensor, ...]:
        """Rows ``(B, S, *out_shape)`` split into the rows of each input."""
        return torch.split(coef, list(self.sizes), dim=2)
