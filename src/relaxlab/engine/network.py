"""The engine's view of a network: a validated list of affine layers and ReLUs.

:func:`parse_network` turns a torch ``nn.Sequential`` of ``Linear``, ``Conv2d``,
``Flatten``, ``ReLU`` and :class:`relaxlab.nn.Normalize` (nested ``Sequential``
and ``Identity`` are flattened away) into a :class:`Network`: a tuple of
layer objects that know their input and output shapes and how to run

- ``forward(x, offset_scale=1.0)``: the layer itself on ``(B, *in_shape)``, with its
  constant offset (bias) multiplied by ``offset_scale``;
- ``forward_abs(r)``: the linear part with absolute weights, for the exact
  interval image of a box in centre/radius form;
- ``backward(A)``: coefficients ``A`` of shape ``(B, S, *out_shape)`` on the
  layer's output pulled back to its input, ``(B, S, *in_shape)``, plus the
  constant ``(B, S)`` the layer's bias contributes (``None`` when it has none).

Shapes: ``B`` batch, ``S`` specification rows, ``n`` neurons of a layer.
Convolutions are pulled back with a transposed convolution (never a dense matrix), computed
in polyphase form by :func:`transposed_conv`.
The layers reference the module's parameters (cast to the requested dtype and
device), so bounds stay differentiable with respect to the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.nn import Normalize

Shape = tuple[int, ...]


class UnsupportedNetworkError(ValueError):
    """The network contains a layer, setting or value the engine cannot bound."""


def _check_finite(tensor: Tensor, what: str) -> None:
    values = tensor.detach()
    # One reduction: the sum of finite values is finite unless it overflows, and only then
    # is the elementwise check needed to tell an overflow from a real NaN/inf.
    if bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all()):
        return
    bad = int((~torch.isfinite(values)).sum())
    raise UnsupportedNetworkError(
        f"{what} contains {bad} NaN/inf value(s); bounds of such a network are meaningless — "
        "check the checkpoint or the training run that produced it"
    )


def _abs_weight(weight: Tensor, cache: list[object]) -> Tensor:
    """``|weight|``, kept between calls while the weight is unchanged and no gradient is wanted.

    The key is the tensor's storage and version counter, which in-place updates (optimiser
    steps) advance; under autograd with a weight that requires grad it is always recomputed.
    """
    if (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
        return weight.abs()
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    if not cache or cache[0] != key:
        cache[:] = [key, weight.detach().abs()]
    return cache[1]  # type: ignore[return-value]


@attrs.frozen(eq=False)
class LinearLayer:
    """``y = x W^T + b`` on flat inputs ``(B, in)``."""

    weight: Tensor  # (out, in)
    bias: Tensor | None  # (out,)
    in_shape: Shape
    out_shape: Shape
    _abs_cache: list[object] = attrs.field(factory=list, init=False, repr=False)
    is_diagonal = False

    def forward(self, x: Tensor, offset_scale: float = 1.0) -> Tensor:
        bias = self.bias if self.bias is None or offset_scale == 1.0 else self.bias * offset_scale
        return F.linear(x, self.weight, bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.linear(r, _abs_weight(self.weight, self._abs_cache))

    def backward(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        new = coef @ self.weight  # (B, S, out) @ (out, in)
        bias = coef @ self.bias if self.bias is not None else None
        return new, bias


@attrs.frozen(eq=False)
class ConvLayer:
    """A 2-d convolution (zero padding, dilation 1, groups 1) on ``(B, C, H, W)``."""

    weight: Tensor  # (C_out, C_in, kH, kW)
    bias: Tensor | None  # (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: Shape
    out_shape: Shape
    _abs_cache: list[object] = attrs.field(factory=list, init=False, repr=False)
    is_diagonal = False

    @property
    def output_padding(self) -> tuple[int, int]:
        """Rows/columns of the input the forward convolution never reads.

        ``conv_transpose2d`` cannot infer them: several input sizes give the same
        output size when the stride exceeds 1, so they are passed explicitly.
        """
        k_h, k_w = self.weight.shape[-2:]
        _, height, width = self.in_shape
        return (
            (height + 2 * self.padding[0] - k_h) % self.stride[0],
            (width + 2 * self.padding[1] - k_w) % self.stride[1],
        )

    def forward(self, x: Tensor, offset_scale: float = 1.0) -> Tensor:
        bias = self.bias if self.bias is None or offset_scale == 1.0 else self.bias * offset_scale
        return F.conv2d(x, self.weight, bias, self.stride, self.padding)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.conv2d(r, _abs_weight(self.weight, self._abs_cache), None, self.stride, self.padding)

    def backward(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        batch, specs = coef.shape[:2]
        flat = coef.reshape(batch * specs, *self.out_shape)
        new = transposed_conv(flat, self.weight, self.stride, self.padding, self.in_shape[1:])
        bias = coef.sum(dim=(-2, -1)) @ self.bias if self.bias is not None else None
        return new.reshape(batch, specs, *self.in_shape), bias

    def backward_phases(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`backward` in polyphase order, flat: ``(B, S, P)`` plus the bias term.

        The same coefficients as :meth:`backward` without interleaving the phases or cropping
        the padding (two copies of the largest tensor saved): position ``k`` of the result
        multiplies position ``k`` of :meth:`phase_layout` of the input. For a sum over the
        input (concretisation), the order does not matter.
        """
        batch, specs = coef.shape[:2]
        flat = coef.reshape(batch * specs, *self.out_shape)
        phases = polyphase_transposed_conv(flat, self.weight, self.stride)
        bias = coef.sum(dim=(-2, -1)) @ self.bias if self.bias is not None else None
        return phases.reshape(batch, specs, -1), bias

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


def box_through_diagonal(
    layers: Sequence[AffineLayer], lower: Tensor, upper: Tensor
) -> tuple[Tensor, Tensor, tuple[AffineLayer, ...]]:
    """Move a box forward through the leading diagonal layers of ``layers`` (normalisation, flatten).

    A diagonal layer maps a box onto a box, so the box is moved instead of pulling every row back
    through the layer (fewer passes over the rows).

    :return: the box after those layers, and the layers that remain.
    """
    leading = 0
    while leading < len(layers) and layers[leading].is_diagonal:
        mapped_lower, mapped_upper = layers[leading].forward(lower), layers[leading].forward(upper)
        lower, upper = torch.minimum(mapped_lower, mapped_upper), torch.maximum(mapped_lower, mapped_upper)
        leading += 1
    return lower, upper, tuple(layers[leading:])


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
    # Crop the padding; rows the forward conv never read (output padding) get zero coefficients.
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
class ScaleShiftLayer:
    """Elementwise ``y = (x - mean) / std`` (a :class:`~relaxlab.nn.Normalize` layer).

    ``mean`` and ``std`` broadcast against ``in_shape`` (per channel); ``std > 0``.
    The forward pass is computed exactly as :class:`~relaxlab.nn.Normalize` does.
    """

    mean: Tensor
    std: Tensor
    in_shape: Shape
    out_shape: Shape
    is_diagonal = True

    def forward(self, x: Tensor, offset_scale: float = 1.0) -> Tensor:
        mean = self.mean if offset_scale == 1.0 else self.mean * offset_scale
        return (x - mean) / self.std

    def forward_abs(self, r: Tensor) -> Tensor:
        return r / self.std

    def backward(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        new = coef / self.std
        bias = -(new * self.mean).flatten(2).sum(-1)
        return new, bias


@attrs.frozen(eq=False)
class FlattenLayer:
    """Reshape ``(B, *in_shape)`` to ``(B, n)``."""

    in_shape: Shape
    out_shape: Shape
    is_diagonal = True

    def forward(self, x: Tensor, offset_scale: float = 1.0) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def forward_abs(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def backward(self, coef: Tensor) -> tuple[Tensor, Tensor | None]:
        return coef.reshape(*coef.shape[:2], *self.in_shape), None


@attrs.frozen(eq=False)
class ReluLayer:
    """``y = max(x, 0)``; the one non-linear layer, relaxed by a relaxation's lines."""

    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


AffineLayer = LinearLayer | ConvLayer | ScaleShiftLayer | FlattenLayer
Layer = AffineLayer | ReluLayer


@attrs.frozen(eq=False)
class Network:
    """A parsed, validated feed-forward ReLU network.

    ``segments[i]`` is the tuple of affine layers between ReLU ``i-1`` and ReLU ``i``
    (``segments[0]`` starts at the input, ``segments[-1]`` ends at the output), so
    a network with ``m`` ReLU layers has ``m + 1`` segments, some possibly empty.

    :param layers: all layers in order.
    :param input_shape: shape of one input (no batch dimension).
    """

    layers: tuple[Layer, ...]
    input_shape: Shape

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].out_shape if self.layers else self.input_shape

    @property
    def output_dim(self) -> int:
        return math.prod(self.output_shape)

    @property
    def relus(self) -> tuple[ReluLayer, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, ReluLayer))

    @property
    def segments(self) -> tuple[tuple[AffineLayer, ...], ...]:
        segments: list[tuple[AffineLayer, ...]] = []
        current: list[AffineLayer] = []
        for layer in self.layers:
            if isinstance(layer, ReluLayer):
                segments.append(tuple(current))
                current = []
            else:
                current.append(layer)
        segments.append(tuple(current))
        return tuple(segments)

    def forward(self, x: Tensor) -> Tensor:
        """Run the network on ``(B, *input_shape)``."""
        for layer in self.layers:
            x = layer.forward(x)
        return x


def _flatten_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(module, nn.Sequential):
            _check_faithful(module, f"model.{path}")
            yield from _flatten_modules(module, prefix=f"{path}.")
        elif isinstance(module, nn.Identity) and not overrides_forward(module, nn.Identity):
            _check_module_hooks(module, f"model.{path}")  # skipped, but a hook would change the function
            continue
        else:
            yield path, module


def overrides_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether ``type(module)`` defines a ``forward`` other than ``base``'s."""
    return type(module).forward is not base.forward


def _check_faithful(module: nn.Module, where: str) -> None:
    """Refuse a module whose output is not what its base class computes.

    A subclass that overrides ``forward`` (of ``Linear``, ``ReLU``, ``Sequential``, ...) and a
    module with forward hooks or pre-hooks (``weight_norm``/``spectral_norm`` of old style are
    pre-hooks) compute something the layer rules do not describe: bounding them as the base
    layer would bound another function. Parametrized weights (``torch.nn.utils.parametrize``)
    are faithful: the engine reads ``module.weight``, which is the parametrized value.
    """
    base = next((cls for cls in type(module).__mro__ if cls.__module__.startswith("torch.nn")
                 or cls is Normalize), None)
    if base is not None and overrides_forward(module, base):
        raise UnsupportedNetworkError(
            f"{where} ({type(module).__name__}) overrides forward() of {base.__name__}: the engine would bound "
            f"{base.__name__}'s function, not the one the model computes; use {base.__name__} itself"
        )
    _check_module_hooks(module, where)


def _check_module_hooks(module: nn.Module, where: str) -> None:
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedNetworkError(
            f"{where} ({type(module).__name__}) has forward hooks or pre-hooks (e.g. weight_norm or spectral_norm): "
            "they change what the layer computes; remove them (torch.nn.utils.parametrize is supported)"
        )


def check_hooks(model: nn.Module) -> None:
    """Refuse a model any of whose modules has forward hooks or pre-hooks (tracing would not see them)."""
    for path, module in model.named_modules():
        _check_module_hooks(module, f"model.{path}" if path else "model")


def _pair(value: int | tuple[int, ...] | str, what: str, where: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise UnsupportedNetworkError(f"{where}: {what}={value!r} is not supported; use integer {what}")


def _unsupported(where: str, module: nn.Module, why: str) -> UnsupportedNetworkError:
    return UnsupportedNetworkError(
        f"{where} ({type(module).__name__}) is not supported: {why}. The engine accepts nn.Sequential "
        "networks of Linear, Conv2d, Flatten, ReLU and relaxlab.nn.Normalize layers."
    )


Cast = Callable[[Tensor], Tensor]


def _affine_parameters(module: nn.Module, where: str, cast: Cast) -> tuple[Tensor, Tensor | None]:
    kind = type(module).__name__
    _check_finite(module.weight, f"{where} ({kind}) weight")
    if module.bias is not None:
        _check_finite(module.bias, f"{where} ({kind}) bias")
    return cast(module.weight), None if module.bias is None else cast(module.bias)


def _linear(module: nn.Linear, shape: Shape, where: str, cast: Cast) -> Layer:
    if len(shape) != 1 or shape[0] != module.in_features:
        raise UnsupportedNetworkError(
            f"{where} (Linear) expects inputs of shape ({module.in_features},) but receives "
            f"{shape}; add nn.Flatten() before it or fix the input shape"
        )
    weight, bias = _affine_parameters(module, where, cast)
    return LinearLayer(weight, bias, shape, (module.out_features,))


def _conv2d(module: nn.Conv2d, shape: Shape, where: str, cast: Cast) -> Layer:
    if module.groups != 1:
        raise _unsupported(where, module, f"groups={module.groups} (only groups=1)")
    if tuple(module.dilation) != (1, 1):
        raise _unsupported(where, module, f"dilation={module.dilation} (only dilation 1)")
    if module.padding_mode != "zeros":
        raise _unsupported(where, module, f"padding_mode={module.padding_mode!r} (only 'zeros')")
    padding_spec = module.padding
    if padding_spec == "valid":
        padding_spec = (0, 0)
    elif isinstance(padding_spec, str):
        raise _unsupported(where, module, f"padding={padding_spec!r}; give explicit integer padding")
    padding = _pair(padding_spec, "padding", where)
    stride = _pair(tuple(module.stride), "stride", where)
    if len(shape) != 3 or shape[0] != module.in_channels:
        raise UnsupportedNetworkError(
            f"{where} (Conv2d) expects inputs of shape ({module.in_channels}, H, W) but receives "
            f"{shape}; check the input shape or the layer order"
        )
    k_h, k_w = module.kernel_size
    out_h = (shape[1] + 2 * padding[0] - k_h) // stride[0] + 1
    out_w = (shape[2] + 2 * padding[1] - k_w) // stride[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise UnsupportedNetworkError(f"{where} (Conv2d) kernel {module.kernel_size} does not fit the input {shape}")
    weight, bias = _affine_parameters(module, where, cast)
    return ConvLayer(weight, bias, stride, padding, shape, (module.out_channels, out_h, out_w))


def _flatten(module: nn.Flatten, shape: Shape, where: str, cast: Cast) -> Layer:
    if module.start_dim != 1 or module.end_dim != -1:
        raise _unsupported(where, module, f"start_dim={module.start_dim}, end_dim={module.end_dim} (only 1, -1)")
    return FlattenLayer(shape, (math.prod(shape),))


def _relu(module: nn.ReLU, shape: Shape, where: str, cast: Cast) -> Layer:
    return ReluLayer(shape, shape)


def _normalize(module: Normalize, shape: Shape, where: str, cast: Cast) -> Layer:
    mean = module.mean.reshape(-1)
    std = module.std.reshape(-1)
    channels = shape[0] if shape else 1
    if mean.numel() not in (1, channels):
        raise UnsupportedNetworkError(
            f"{where} (Normalize) has {mean.numel()} channels but its input {shape} has {channels}"
        )
    _check_finite(mean, f"{where} (Normalize) mean")
    _check_finite(std, f"{where} (Normalize) std")
    view = (-1, *([1] * (len(shape) - 1))) if mean.numel() > 1 else (1,) * max(len(shape), 1)
    return ScaleShiftLayer(cast(mean).reshape(view), cast(std).reshape(view), shape, shape)


#: The layer rules: module type -> converter ``(module, input shape, where, cast) -> Layer``.
CONVERTERS: dict[type[nn.Module], Callable[[Any, Shape, str, Cast], Layer]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.Flatten: _flatten,
    nn.ReLU: _relu,
    Normalize: _normalize,
}
#: The module types of a chain (a subclass that overrides ``forward`` is not one of them).
_CHAIN_TYPES: tuple[type[nn.Module], ...] = tuple(CONVERTERS)


def parse_network(
    model: nn.Module,
    input_shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Network:
    """Validate ``model`` and convert it into a :class:`Network`, one :data:`CONVERTERS` rule per layer.

    :param model: an ``nn.Sequential`` (nested ``Sequential`` and ``Identity`` are allowed).
    :param input_shape: shape of one input, without the batch dimension.
    :param dtype: dtype to compute in (weights are cast, differentiably); default: the weights'.
    :param device: device to compute on; default: the weights'.
    :return: the parsed network.
    :raises UnsupportedNetworkError: naming the offending layer's index and type, for an
        unsupported layer or setting, a subclass that overrides ``forward`` or a module with
        hooks, a shape mismatch, or NaN/inf weights.
    """
    if isinstance(model, Network):
        return model
    if not isinstance(model, nn.Sequential):
        raise UnsupportedNetworkError(
            f"expected an nn.Sequential, got {type(model).__name__}; wrap the layers in nn.Sequential"
        )
    _check_faithful(model, "model")

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype=dtype if dtype is not None else t.dtype, device=device)

    shape: Shape = tuple(int(s) for s in input_shape)
    layers: list[Layer] = []
    for index, (path, module) in enumerate(_flatten_modules(model)):
        where = f"layer {index} (model.{path})"
        rule = next((CONVERTERS[cls] for cls in type(module).__mro__ if cls in CONVERTERS), None)
        if rule is None:
            raise _unsupported(where, module, "this layer type has no bound propagation rule")
        _check_faithful(module, where)
        layers.append(rule(module, shape, where, cast))
        shape = layers[-1].out_shape
    if not layers:
        raise UnsupportedNetworkError("the network has no layers; give at least one Linear or Conv2d layer")
    return Network(tuple(layers), tuple(int(s) for s in input_shape))
