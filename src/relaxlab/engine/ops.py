"""The operator protocol: every operation the engine bounds, one class each.

A network is a DAG of these operations (:mod:`relaxlab.engine.network`). Each class says, for
its operation,

- ``forward(*xs)``: the exact map on ``(B, *in_shape)`` tensors, computed as torch computes the
  module or function it came from (bias fused where torch fuses it);
- ``linear(*xs)`` and ``linear_abs(*xs)``: its linear part ``L`` without the offset, and the map
  ``|L|`` with absolute weights, on ``(B, M, *in_shape)`` (``M`` maps per example: forward
  symbolic forms, or ``M = 1`` for a centre or radius). ``forward(x) = L(x) + offset`` up to
  rounding;
- ``interval(*boxes)``: the exact interval image of one box per input (centre/radius form:
  ``forward(c) ± |L|(r)``), exact whenever the inputs vary independently;
- ``backward(rows)``: rows ``(B, S, *out_shape)`` of a linear function of the output pulled back
  to rows on each input ``(B, S, *in_shape)`` (``None`` for an input the rows do not reach) and
  the constant ``(B, S)`` the offset contributes (``None`` when it has none). A batch dimension
  of 1 means rows shared by the whole batch and must be kept where the operation allows;
- ``diagonal``: every output entry is one input entry scaled and shifted (or a constant), so the
  image of a box is a box, computed exactly by ``interval`` and cheaper than pulling rows back;
- ``out_shape``: the shape of one output, without the batch dimension.

:class:`Relu` is the one non-linear operation; the engine relaxes it with the relaxation's lines.
:class:`Input` is the network's input. Every other class is an :class:`AffineOp`. The engine never
asks which class it holds beyond these two roles; patch rows (:mod:`relaxlab.engine.patches`)
additionally use :class:`PatchOp`, implemented by the operations that keep a row local.

Adding an operation is one class here and one line of the op table (:mod:`relaxlab.engine.optable`),
plus its exact test (``tests/unit/engine/test_ops.py`` checks every class against the dense
Jacobian of its ``forward``).

Shapes: ``B`` batch, ``S`` rows, ``M`` maps per example.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

Shape = tuple[int, ...]
Box = tuple[Tensor, Tensor]
Rows = tuple[Tensor | None, ...]


class UnsupportedNetworkError(ValueError):
    """The network contains an operation, setting or value the engine cannot bound faithfully."""


def _flat_maps(x: Tensor, shape: Shape) -> Tensor:
    """``(B, M, *shape)`` as ``(B·M, *shape)``."""
    return x.reshape(-1, *shape)


def _split_maps(y: Tensor, like: Tensor) -> Tensor:
    """``(B·M, *out)`` back to ``(B, M, *out)`` with ``like``'s first two dimensions."""
    return y.reshape(like.shape[0], like.shape[1], *y.shape[1:])


class Op(ABC):
    """One operation of a network (an attrs value: tensors are held, never copied)."""

    __attrs_attrs__: ClassVar[tuple[attrs.Attribute[Any], ...]]  # every subclass is an attrs class
    out_shape: Shape

    @abstractmethod
    def forward(self, *xs: Tensor) -> Tensor:
        """The exact map on ``(B, *in_shape)`` inputs."""

    def tensors(self) -> dict[str, Tensor]:
        """The tensors this operation holds, by field name (for casting)."""
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(type(self))
            if isinstance(getattr(self, f.name), Tensor)
        }

    def cast(self, fn: Callable[[Tensor], Tensor]) -> Op:
        """A copy with ``fn`` applied to every tensor (dtype and device changes)."""
        held = self.tensors()
        return self.evolve(**{name: fn(value) for name, value in held.items()}) if held else self

    def evolve(self, **changes: Any) -> Op:
        """A copy with some fields replaced (:func:`attrs.evolve`)."""
        # Every operation is an attrs class, but Op itself is not one, which mypy's attrs plugin requires.
        return attrs.evolve(self, **changes)  # type: ignore[misc]


@attrs.frozen(eq=False)
class Input(Op):
    """The network's input ``(B, *out_shape)``."""

    out_shape: Shape

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0]


@attrs.frozen(eq=False)
class Relu(Op):
    """``y = max(x, 0)``: relaxed by the relaxation's lines."""

    out_shape: Shape

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.relu(xs[0])


class AffineOp(Op):
    """``y = L(x_1, ..., x_k) + offset`` with ``L`` linear (see the module docstring)."""

    diagonal: ClassVar[bool] = False

    @abstractmethod
    def linear(self, *xs: Tensor) -> Tensor:
        """``L`` on ``(B, M, *in_shape)`` inputs: ``(B, M, *out_shape)``."""

    @abstractmethod
    def linear_abs(self, *xs: Tensor) -> Tensor:
        """``|L|`` (absolute weights) on ``(B, M, *in_shape)`` inputs."""

    @abstractmethod
    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        """Rows on the output pulled back to rows on each input, and the offset's constant."""

    def interval(self, *boxes: Box) -> Box:
        """The exact image of a box per input (independent inputs), in centre/radius form."""
        centres = [(high + low).mul_(0.5) for low, high in boxes]
        radii = [(high - low).mul_(0.5).unsqueeze(1) for low, high in boxes]
        centre, radius = self.forward(*centres), self.linear_abs(*radii).squeeze(1)
        return centre - radius, centre + radius


class Monotone(AffineOp):
    """An operation whose every output is a non-decreasing function of the input elements it reads (a
    shape map, a shift, a concatenation): the image of a box is the images of its two ends,
    exactly, with no centre and radius."""

    def interval(self, *boxes: Box) -> Box:
        return self.forward(*(b[0] for b in boxes)), self.forward(*(b[1] for b in boxes))


class Weighted(AffineOp):
    """``y = L(x) + bias`` with the bias a field (``None``: no bias): a dense or convolutional map.

    Its interval applies the factor 1/2 of centre and radius on the smaller side: where the output
    is smaller than the input, ``L(u + l) + 2·bias`` and ``|L|(u - l)`` are mapped and the two
    ends halved afterwards (doubling and halving are exact in floating point; the same box up to
    the rounding of one order against another).
    """

    bias: Tensor | None

    @abstractmethod
    def affine(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``L(x) + bias`` on ``(B, *in_shape)``."""

    def forward(self, *xs: Tensor) -> Tensor:
        return self.affine(xs[0], self.bias)

    def interval(self, *boxes: Box) -> Box:
        low, high = boxes[0]
        if math.prod(self.out_shape) >= math.prod(low.shape[1:]):
            return super().interval(*boxes)
        centre = self.affine(high + low, None if self.bias is None else self.bias * 2)
        radius = self.linear_abs((high - low).unsqueeze(1)).squeeze(1)
        return (centre - radius).mul_(0.5), (centre + radius).mul_(0.5)


class PatchOp(ABC):
    """An affine operation on ``(C, H, W)`` maps that keeps a row local (a *patch*,
    :mod:`relaxlab.engine.patches`): each output depends on a window of the input."""

    @property
    def per_channel(self) -> bool:
        """Whether the operation's constant (if any) is one value per channel, the same at every position."""
        return True

    @abstractmethod
    def patch_geometry(
        self, size: tuple[int, int], stride: tuple[int, int], origin: tuple[int, int]
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The window ``(size, stride, origin)`` on the input that a window on the output reads."""

    @abstractmethod
    def patch_linear(self, patches: Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
        """Patches ``(N, G, C_out·h·w)`` of the linear part pulled back to ``(N, G, C_in·h'·w')``."""

    @abstractmethod
    def offset_map(self) -> Tensor | None:
        """The constant the operation adds, as a ``(C_out, H, W)`` map (``None`` when it adds none)."""


# -- dense and convolutional maps -----------------------------------------------------------------


@attrs.frozen(eq=False)
class Linear(Weighted):
    """``y = x W^T + b`` on the last dimension; ``weight`` is ``(out, in)``, or ``(B, out, in)`` per example
    (inputs ``(B, in)`` then: the analyses bound one network per parameter point)."""

    weight: Tensor
    bias: Tensor | None
    in_shape: Shape
    out_shape: Shape

    @property
    def per_example(self) -> bool:
        return self.weight.dim() == 3

    def affine(self, x: Tensor, bias: Tensor | None) -> Tensor:
        if self.per_example:
            out = torch.einsum("bi,boi->bo", x, self.weight)
            return out if bias is None else out + bias
        return F.linear(x, self.weight, bias)

    def linear(self, *xs: Tensor) -> Tensor:
        if self.per_example:
            return torch.einsum("bmi,boi->bmo", xs[0], self.weight)
        return F.linear(xs[0], self.weight)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        if self.per_example:
            return torch.einsum("bmi,boi->bmo", xs[0], self.weight.abs())
        return F.linear(xs[0], self.weight.abs())

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        if self.per_example:
            new = torch.matmul(rows, self.weight)  # (B, S, out) @ (B, out, in)
            bias = None if self.bias is None else torch.matmul(rows, self.bias.unsqueeze(-1)).squeeze(-1)
            return (new,), bias
        bias = None if self.bias is None else rows @ self.bias
        if bias is not None and bias.dim() > 2:  # leading dimensions: the bias is added at every position
            bias = bias.flatten(2).sum(-1)
        return (rows @ self.weight,), bias


def transposed_conv(
    coef: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int], size: tuple[int, ...]
) -> Tensor:
    """``conv_transpose2d(coef, weight, stride, padding)`` cropped/padded to ``size``, as one ``conv2d``.

    Polyphase form: output pixel ``s·m + a`` of the (uncropped) transposed convolution only
    meets kernel taps ``a, a + s, a + 2s, …``, so each of the ``s_h·s_w`` phases is an ordinary
    stride-1 convolution with a sub-kernel; all phases run as the output channels of one
    ``conv2d`` and are interleaved afterwards. Same arithmetic as ``conv_transpose2d``, but it
    takes the fast convolution kernels (on CPU, torch's transposed convolution is an order of
    magnitude slower for the many maps that backsubstitution pulls back).

    :param coef: ``(N, C_out, H, W)`` coefficients on the convolution's output.
    :param weight: ``(C_out, C_in, k_h, k_w)`` the forward convolution's weight.
    :param size: ``(H_in, W_in)`` of the forward convolution's input.
    :return: ``(N, C_in, H_in, W_in)``.
    """
    c_in = weight.shape[1]
    (s_h, s_w), (p_h, p_w) = stride, padding
    out = polyphase_transposed_conv(coef, weight, stride)
    n, _, h, w = out.shape
    full = out.reshape(n, c_in, s_h, s_w, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c_in, h * s_h, w * s_w)
    height, width = size
    # Crop the padding; rows/columns the forward conv never read get zero coefficients.
    extra_h, extra_w = max(0, p_h + height - h * s_h), max(0, p_w + width - w * s_w)
    if extra_h or extra_w:
        full = F.pad(full, (0, extra_w, 0, extra_h))
    return full[:, :, p_h : p_h + height, p_w : p_w + width]


def polyphase_transposed_conv(coef: Tensor, weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """The phases of ``conv_transpose2d(coef, weight, stride)`` (no padding), not interleaved.

    :return: ``(N, C_in·s_h·s_w, H + t_h - 1, W + t_w - 1)``, channel ``(c, a_h, a_w)`` at
        ``(m, q)`` holding output pixel ``(s_h·m + a_h, s_w·q + a_w)`` of channel ``c``, with
        ``t = ceil(k / s)`` taps per phase.
    """
    c_out, c_in, k_h, k_w = weight.shape
    s_h, s_w = stride
    t_h, t_w = -(-k_h // s_h), -(-k_w // s_w)  # taps per phase
    # Zero-pad the kernel to a multiple of the stride; tap s·t + a -> (t, a).
    padded = F.pad(weight, (0, t_w * s_w - k_w, 0, t_h * s_h - k_h))
    phases = padded.reshape(c_out, c_in, t_h, s_h, t_w, s_w).permute(1, 3, 5, 0, 2, 4)
    phases = phases.flip(-2, -1).reshape(c_in * s_h * s_w, c_out, t_h, t_w)
    return F.conv2d(coef, phases, None, 1, (t_h - 1, t_w - 1))


@attrs.frozen(eq=False)
class Conv(Weighted, PatchOp):
    """A 2-d convolution on ``(B, C, H, W)``: zero ``padding`` (symmetric), dilation 1, ``groups``.

    With one group, rows are pulled back by :func:`transposed_conv` (never a dense matrix); with
    several (grouped convolutions, and ``AvgPool2d`` as a depthwise convolution with the fixed
    kernel ``1/(k_h·k_w)``) by ``conv_transpose2d``.
    """

    weight: Tensor  # (C_out, C_in / groups, k_h, k_w)
    bias: Tensor | None  # (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_shape: Shape
    out_shape: Shape

    @property
    def output_padding(self) -> tuple[int, int]:
        """Rows/columns of the input the strided convolution never reads (``conv_transpose2d``
        cannot infer them: several input sizes give the same output size)."""
        k_h, k_w = self.weight.shape[-2:]
        _, height, width = self.in_shape
        return (
            (height + 2 * self.padding[0] - k_h) % self.stride[0],
            (width + 2 * self.padding[1] - k_w) % self.stride[1],
        )

    def affine(self, x: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, self.weight, bias, self.stride, self.padding, 1, self.groups)

    def _maps(self, x: Tensor, weight: Tensor) -> Tensor:
        out = F.conv2d(_flat_maps(x, self.in_shape), weight, None, self.stride, self.padding, 1, self.groups)
        return _split_maps(out, x)

    def linear(self, *xs: Tensor) -> Tensor:
        return self._maps(xs[0], self.weight)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return self._maps(xs[0], self.weight.abs())

    def _bias_rows(self, rows: Tensor) -> Tensor | None:
        return None if self.bias is None else rows.sum(dim=(-2, -1)) @ self.bias

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        batch, specs = rows.shape[:2]
        flat = rows.reshape(batch * specs, *self.out_shape)
        if self.groups == 1:
            new = transposed_conv(flat, self.weight, self.stride, self.padding, self.in_shape[1:])
        else:
            new = F.conv_transpose2d(
                flat, self.weight, None, self.stride, self.padding, self.output_padding, self.groups
            )
        return (new.reshape(batch, specs, *self.in_shape),), self._bias_rows(rows)

    # -- a box right before the convolution: rows in polyphase order ---------------------------------

    @property
    def has_phases(self) -> bool:
        return self.groups == 1

    def backward_phases(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`backward` in polyphase order, flat: ``(B, S, P)`` plus the bias term.

        The same coefficients as :meth:`backward` without interleaving the phases or cropping
        the padding (two copies of the largest tensor saved): position ``k`` of the result
        multiplies position ``k`` of :meth:`phase_layout` of the input. For a sum over the
        input (concretisation), the order does not matter.
        """
        batch, specs = rows.shape[:2]
        flat = rows.reshape(batch * specs, *self.out_shape)
        phases = polyphase_transposed_conv(flat, self.weight, self.stride)
        return phases.reshape(batch, specs, -1), self._bias_rows(rows)

    def phase_layout(self, values: Tensor) -> Tensor:
        """``(B, *in_shape)`` input values in the order of :meth:`backward_phases`, ``(B, P)``.

        Positions that correspond to no input pixel (the padding, rows the convolution never
        reads) hold 0, so they add nothing to a sum of products.
        """
        (s_h, s_w), (p_h, p_w) = self.stride, self.padding
        k_h, k_w = self.weight.shape[-2:]
        t_h, t_w = -(-k_h // s_h), -(-k_w // s_w)
        h, w = self.out_shape[1] + t_h - 1, self.out_shape[2] + t_w - 1
        channels, height, width = self.in_shape
        # Input pixel y sits at row y + p_h of the interleaved grid (h·s_h rows); F.pad crops
        # with negative amounts.
        grid = F.pad(values, (p_w, w * s_w - p_w - width, p_h, h * s_h - p_h - height))
        grid = grid.reshape(values.shape[0], channels, h, s_h, w, s_w).permute(0, 1, 3, 5, 2, 4)
        return grid.reshape(values.shape[0], -1)

    # -- patches ----------------------------------------------------------------------------------

    def patch_geometry(
        self, size: tuple[int, int], stride: tuple[int, int], origin: tuple[int, int]
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        k_h, k_w = self.weight.shape[-2:]
        return (
            ((size[0] - 1) * self.stride[0] + k_h, (size[1] - 1) * self.stride[1] + k_w),
            (stride[0] * self.stride[0], stride[1] * self.stride[1]),
            (origin[0] * self.stride[0] + self.padding[0], origin[1] * self.stride[1] + self.padding[1]),
        )

    def patch_linear(self, patches: Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
        # A patch through a convolution is a linear map of its entries: one (K_out, K_in) matrix, the
        # transposed convolution of each unit patch, applied as a matrix product.
        channels = self.out_shape[0]
        units = torch.eye(channels * size[0] * size[1], dtype=self.weight.dtype, device=self.weight.device)
        units = units.reshape(-1, channels, *size)
        if self.groups == 1:
            moved = transposed_conv(units, self.weight, self.stride, (0, 0), new_size)
        else:
            moved = F.conv_transpose2d(units, self.weight, None, self.stride, 0, 0, self.groups)
        return patches @ moved.reshape(units.shape[0], -1)

    def offset_map(self) -> Tensor | None:
        if self.bias is None:
            return None
        return self.bias.reshape(-1, 1, 1).expand(*self.out_shape)


# -- elementwise maps -----------------------------------------------------------------------------


def _per_channel(constant: Tensor, shape: Shape) -> bool:
    """Whether ``constant`` is one value per channel (or one in all) of ``(C, H, W)`` maps."""
    full = (1,) * (len(shape) - constant.dim()) + tuple(constant.shape)
    return len(shape) == 3 and len(full) == 3 and full[1] == full[2] == 1


def _sum_to(rows: Tensor, constant: Tensor) -> Tensor:
    """``Σ rows · constant`` over the shape, ``(B, S)`` (per-channel constants summed per channel first)."""
    dims = rows.dim() - 2
    shape = (1,) * (dims - constant.dim()) + tuple(constant.shape)
    if dims >= 2 and all(s == 1 for s in shape[1:]):  # per channel: sum the positions first
        per_channel = rows.flatten(3).sum(-1)
        return (
            per_channel @ constant.reshape(-1) if shape[0] > 1 else per_channel.sum(-1) * constant.reshape(())
        )
    return (rows * constant).flatten(2).sum(-1)


@attrs.frozen(eq=False)
class Scale(AffineOp, PatchOp):
    """``y = x · factor`` (or ``x / factor`` with ``divide``): a constant that broadcasts onto the input."""

    factor: Tensor
    divide: bool
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] / self.factor if self.divide else xs[0] * self.factor

    def linear(self, *xs: Tensor) -> Tensor:
        return self.forward(*xs)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return xs[0] / self.factor.abs() if self.divide else xs[0] * self.factor.abs()

    def interval(self, *boxes: Box) -> Box:
        """Each output scales one input element: the images of the two ends, ordered (a negative
        factor swaps them)."""
        first, second = self.forward(boxes[0][0]), self.forward(boxes[0][1])
        return torch.minimum(first, second), torch.maximum(first, second)

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        return (self.forward(rows),), None

    @property
    def per_channel(self) -> bool:
        return _per_channel(self.factor, self.out_shape)

    def patch_geometry(
        self, size: tuple[int, int], stride: tuple[int, int], origin: tuple[int, int]
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return size, stride, origin

    def patch_linear(self, patches: Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
        factor = self.factor.reshape(-1, 1, 1).expand(self.out_shape[0], *size).reshape(-1)
        return patches / factor if self.divide else patches * factor

    def offset_map(self) -> Tensor | None:
        return None


@attrs.frozen(eq=False)
class Shift(Monotone, PatchOp):
    """``y = x + offset``: a constant that broadcasts onto the input."""

    offset: Tensor
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] + self.offset

    def linear(self, *xs: Tensor) -> Tensor:
        return xs[0]

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return xs[0]

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        return (rows,), _sum_to(rows, self.offset)

    @property
    def per_channel(self) -> bool:
        return _per_channel(self.offset, self.out_shape)

    def patch_geometry(
        self, size: tuple[int, int], stride: tuple[int, int], origin: tuple[int, int]
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return size, stride, origin

    def patch_linear(self, patches: Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
        return patches

    def offset_map(self) -> Tensor | None:
        return self.offset.reshape(-1, 1, 1).expand(*self.out_shape)


# -- shape maps -----------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class Reshape(Monotone):
    """A per-example reshape ``(B, *in_shape) -> (B, *out_shape)`` (flatten, view, squeeze, ...)."""

    in_shape: Shape
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0].reshape(xs[0].shape[0], *self.out_shape)

    def linear(self, *xs: Tensor) -> Tensor:
        return xs[0].reshape(*xs[0].shape[:2], *self.out_shape)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return self.linear(*xs)

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        return (rows.reshape(*rows.shape[:2], *self.in_shape),), None


@attrs.frozen(eq=False)
class Transpose(Monotone):
    """A permutation of the per-example dimensions: output dimension ``i`` is input dimension ``perm[i]``."""

    perm: tuple[int, ...]
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    def _apply(self, x: Tensor, lead: int) -> Tensor:
        return x.permute(*range(lead), *(lead + p for p in self.perm))

    def forward(self, *xs: Tensor) -> Tensor:
        return self._apply(xs[0], 1)

    def linear(self, *xs: Tensor) -> Tensor:
        return self._apply(xs[0], 2)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return self._apply(xs[0], 2)

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        inverse = [0] * len(self.perm)
        for position, source in enumerate(self.perm):
            inverse[source] = position
        return (rows.permute(0, 1, *(2 + p for p in inverse)),), None


@attrs.frozen(eq=False)
class Pad(Monotone):
    """Constant padding of the last dimensions: ``pads`` as ``F.pad`` takes them (non-negative)."""

    pads: tuple[int, ...]
    value: float
    in_shape: Shape
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    def forward(self, *xs: Tensor) -> Tensor:
        return F.pad(xs[0], self.pads, value=self.value)

    def linear(self, *xs: Tensor) -> Tensor:
        return F.pad(xs[0], self.pads)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return F.pad(xs[0], self.pads)

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        cropped = F.pad(rows, tuple(-p for p in self.pads))
        bias = None
        if self.value != 0:
            bias = (rows.flatten(2).sum(-1) - cropped.flatten(2).sum(-1)) * self.value
        return (cropped,), bias


@attrs.frozen(eq=False)
class Slice(Monotone):
    """Basic strided slicing of the per-example dimensions: ``x[:, start:stop:step, ...]``."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]
    steps: tuple[int, ...]
    in_shape: Shape
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    @property
    def _key(self) -> tuple[slice, ...]:
        return tuple(slice(a, b, c) for a, b, c in zip(self.starts, self.stops, self.steps, strict=True))

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0][(slice(None),) + self._key]

    def linear(self, *xs: Tensor) -> Tensor:
        return xs[0][(slice(None), slice(None)) + self._key]

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return self.linear(*xs)

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        full = rows.new_zeros(*rows.shape[:2], *self.in_shape)
        full[(slice(None), slice(None)) + self._key] = rows
        return (full,), None


# -- joins ----------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class Sum(AffineOp):
    """``y = Σ_i c_i x_i`` of equally shaped inputs (``c = (1, 1)``: a residual connection; ``(1, -1)``: a difference)."""

    coefficients: tuple[float, ...]
    out_shape: Shape

    def forward(self, *xs: Tensor) -> Tensor:
        if self.coefficients == (1.0, 1.0):
            return xs[0] + xs[1]
        if self.coefficients == (1.0, -1.0):
            return xs[0] - xs[1]
        total = xs[0] * self.coefficients[0]
        for c, x in zip(self.coefficients[1:], xs[1:], strict=True):
            total = total + x * c
        return total

    def linear(self, *xs: Tensor) -> Tensor:
        return self.forward(*xs)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        total = xs[0] * abs(self.coefficients[0])
        for c, x in zip(self.coefficients[1:], xs[1:], strict=True):
            total = total + x * abs(c)
        return total

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        return tuple(rows if c == 1.0 else rows * c for c in self.coefficients), None


@attrs.frozen(eq=False)
class Cat(Monotone):
    """Concatenation along per-example dimension ``dim`` (0: channels)."""

    dim: int
    sizes: tuple[int, ...]
    out_shape: Shape
    diagonal: ClassVar[bool] = True

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=1 + self.dim)

    def linear(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=2 + self.dim)

    def linear_abs(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=2 + self.dim)

    def backward(self, rows: Tensor) -> tuple[Rows, Tensor | None]:
        return tuple(torch.split(rows, list(self.sizes), dim=2 + self.dim)), None


def numel(shape: Shape) -> int:
    return math.prod(shape)


__all__ = [
    "AffineOp",
    "Monotone",
    "Box",
    "Cat",
    "Conv",
    "Input",
    "Linear",
    "Op",
    "Pad",
    "PatchOp",
    "Relu",
    "Reshape",
    "Scale",
    "Shift",
    "Slice",
    "Sum",
    "Transpose",
    "UnsupportedNetworkError",
    "numel",
    "polyphase_transposed_conv",
    "transposed_conv",
]
