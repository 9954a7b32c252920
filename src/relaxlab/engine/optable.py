"""The op table: which operations of :mod:`relaxlab.engine.ops` a torch module or function becomes.

One table for every way a network reaches the engine: :func:`relaxlab.engine.parse.parse_model`
looks up torch modules (:data:`MODULES`, by type), and, when it traces a model with ``torch.fx``,
functions (:data:`FUNCTIONS`) and tensor methods (:data:`METHODS`); the ONNX reader
(:mod:`relaxlab.engine.onnx`) looks up node types (:data:`ONNX`, filled there from the same
builders). A rule adds one or more nodes to a :class:`~relaxlab.engine.network.NetworkBuilder`
and returns the node that holds its result; what a rule cannot represent faithfully it refuses
with :class:`~relaxlab.engine.ops.UnsupportedNetworkError`, naming the node and the setting.

Adding an operation: one class in :mod:`relaxlab.engine.ops`, one rule here (or in the ONNX
reader's table), and its exact test.

Some modules are compositions of supported operations: ``BatchNorm`` is a per-channel
:class:`~relaxlab.engine.ops.Scale` then :class:`~relaxlab.engine.ops.Shift`; ``AvgPool2d`` a
depthwise :class:`~relaxlab.engine.ops.Conv`; ``MaxPool2d`` the maximum of its window's entries
written with ReLUs, ``max(a, b) = a + relu(b - a)`` (:func:`max_of`), so any ReLU relaxation
bounds it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.engine.box import all_finite
from relaxlab.engine.network import NetworkBuilder
from relaxlab.engine.ops import (
    Cat,
    Conv,
    Linear,
    Pad,
    Relu,
    Reshape,
    Scale,
    Shape,
    Shift,
    Slice,
    Sum,
    Transpose,
    UnsupportedNetworkError,
)
from relaxlab.nn import Normalize


class NodeRef(int):
    """A node index of the network being built (a tensor computed from the input), as opposed to
    the plain integers of shapes and arguments."""


class _Batch:
    """The batch dimension, as ``x.size(0)`` gives it while tracing."""

    def __repr__(self) -> str:
        return "batch"


BATCH = _Batch()

#: ``rule(builder, module, source, where, name) -> node``.
ModuleRule = Callable[[NetworkBuilder, Any, int, str, str], int]
#: ``rule(builder, args, kwargs, where, name) -> value`` (a :class:`NodeRef` or a Python value).
CallRule = Callable[[NetworkBuilder, tuple[Any, ...], dict[str, Any], str, str], Any]


def check_finite(tensor: Tensor, what: str) -> None:
    """Refuse NaN/inf values (one reduction unless it overflows)."""
    if all_finite(tensor):
        return
    bad = int((~torch.isfinite(tensor.detach())).sum())
    raise UnsupportedNetworkError(
        f"{what} contains {bad} NaN/inf value(s); bounds of such a network are meaningless — "
        "check the checkpoint or the training run that produced it"
    )


def _pair(value: Any, what: str, where: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise UnsupportedNetworkError(f"{where}: {what}={value!r} is not supported; use integer {what}")


def _unsupported(where: str, why: str) -> UnsupportedNetworkError:
    return UnsupportedNetworkError(f"{where} is not supported: {why}")


def _tensor_arg(value: Any, where: str) -> NodeRef:
    if not isinstance(value, NodeRef):
        raise UnsupportedNetworkError(
            f"{where}: operand {value!r} is not a tensor computed from the input (tensor constants are not supported)"
        )
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _constant(builder: NetworkBuilder, value: float | Sequence[float] | Tensor) -> Tensor:
    return builder.cast(torch.as_tensor(value, dtype=builder.default_dtype))


# -- modules --------------------------------------------------------------------------------------


def linear(
    builder: NetworkBuilder, source: int, weight: Tensor, bias: Tensor | None, where: str, name: str
) -> int:
    """``x W^T + b`` on the last dimension of the source."""
    shape = builder.shape(source)
    out_features, in_features = weight.shape
    if not shape or shape[-1] != in_features:
        raise UnsupportedNetworkError(
            f"{where} expects inputs of shape ({in_features},) but receives {shape}; add nn.Flatten() before it "
            "or fix the input shape"
        )
    check_finite(weight, f"{where} weight")
    if bias is not None:
        check_finite(bias, f"{where} bias")
    op = Linear(
        builder.cast(weight), None if bias is None else builder.cast(bias), shape, (*shape[:-1], out_features)
    )
    return builder.add(name, op, (source,))


def _linear_module(builder: NetworkBuilder, module: nn.Linear, source: int, where: str, name: str) -> int:
    return linear(builder, source, module.weight, module.bias, f"{where} (Linear)", name)


def conv(
    builder: NetworkBuilder,
    source: int,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
    where: str,
    name: str,
) -> int:
    """A 2-d convolution with symmetric zero padding."""
    shape = builder.shape(source)
    out_channels, per_group, k_h, k_w = weight.shape
    if len(shape) != 3 or shape[0] != per_group * groups:
        raise UnsupportedNetworkError(
            f"{where} expects inputs of shape ({per_group * groups}, H, W) but receives {shape}; check the input "
            "shape or the layer order"
        )
    if min(*stride) < 1 or min(*padding) < 0:
        raise UnsupportedNetworkError(
            f"{where}: stride {stride} and padding {padding} must be positive / non-negative"
        )
    out_h = (shape[1] + 2 * padding[0] - k_h) // stride[0] + 1
    out_w = (shape[2] + 2 * padding[1] - k_w) // stride[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise UnsupportedNetworkError(f"{where} kernel {(k_h, k_w)} does not fit the input {shape}")
    check_finite(weight, f"{where} weight")
    if bias is not None:
        check_finite(bias, f"{where} bias")
    op = Conv(
        builder.cast(weight),
        None if bias is None else builder.cast(bias),
        stride,
        padding,
        groups,
        shape,
        (out_channels, out_h, out_w),
    )
    return builder.add(name, op, (source,))


def _conv_module(builder: NetworkBuilder, module: nn.Conv2d, source: int, where: str, name: str) -> int:
    where = f"{where} (Conv2d)"
    if tuple(module.dilation) != (1, 1):
        raise _unsupported(where, f"dilation={module.dilation} (only dilation 1)")
    if module.padding_mode != "zeros":
        raise _unsupported(where, f"padding_mode={module.padding_mode!r} (only 'zeros')")
    padding_spec: Any = module.padding
    if padding_spec == "valid":
        padding_spec = (0, 0)
    elif padding_spec == "same":
        k_h, k_w = module.kernel_size
        if tuple(module.stride) != (1, 1) or k_h % 2 == 0 or k_w % 2 == 0:
            raise _unsupported(
                where, "padding='same' with an even kernel or a stride; give explicit integer padding"
            )
        padding_spec = (k_h // 2, k_w // 2)
    padding = _pair(tuple(padding_spec), "padding", where)
    stride = _pair(tuple(module.stride), "stride", where)
    return conv(builder, source, module.weight, module.bias, stride, padding, module.groups, where, name)


def flatten(builder: NetworkBuilder, source: int, start: int, end: int, where: str, name: str) -> int:
    """``flatten(start_dim, end_dim)`` on batched tensors (dimension 0 is the batch)."""
    shape = builder.shape(source)
    ndim = len(shape) + 1
    start, end = start % ndim, end % ndim
    if start == 0:
        raise UnsupportedNetworkError(
            f"{where}: flattening the batch dimension is not supported; use start_dim=1"
        )
    if end < start:
        return source
    out = (*shape[: start - 1], math.prod(shape[start - 1 : end]), *shape[end:])
    return builder.add(name, Reshape(shape, out), (source,))


def _flatten_module(builder: NetworkBuilder, module: nn.Flatten, source: int, where: str, name: str) -> int:
    return flatten(builder, source, module.start_dim, module.end_dim, f"{where} (Flatten)", name)


def reshape(builder: NetworkBuilder, source: int, out: Shape, name: str) -> int:
    shape = builder.shape(source)
    if out == shape:
        return source
    return builder.add(name, Reshape(shape, out), (source,))


def _unflatten_module(
    builder: NetworkBuilder, module: nn.Unflatten, source: int, where: str, name: str
) -> int:
    shape = builder.shape(source)
    dim = module.dim - 1 if module.dim > 0 else module.dim % (len(shape) + 1) - 1
    sizes = tuple(int(s) for s in module.unflattened_size)
    if dim < 0 or math.prod(sizes) != shape[dim]:
        raise UnsupportedNetworkError(
            f"{where} (Unflatten): cannot unflatten {shape} at dim {module.dim} to {sizes}"
        )
    return reshape(builder, source, (*shape[:dim], *sizes, *shape[dim + 1 :]), name)


def relu(builder: NetworkBuilder, source: int, name: str) -> int:
    shape = builder.shape(source)
    return builder.add(name, Relu(shape), (source,))


def _relu_module(builder: NetworkBuilder, module: nn.ReLU, source: int, where: str, name: str) -> int:
    return relu(builder, source, name)


def channel_view(values: Tensor, shape: Shape) -> Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast against ``(..., *shape)`` (channel = ``shape[0]``)."""
    return values.reshape(-1, *([1] * (len(shape) - 1)))


def scale(builder: NetworkBuilder, source: int, factor: Tensor, divide: bool, where: str, name: str) -> int:
    """``x · factor`` (``x / factor``) with a constant that broadcasts onto the input."""
    shape = builder.shape(source)
    check_finite(factor, f"{where} factor")
    if divide and bool((factor.detach() == 0).any()):
        raise UnsupportedNetworkError(f"{where} divides by 0")
    factor = builder.cast(factor)
    _check_broadcast(factor, shape, where)
    return builder.add(name, Scale(factor, divide, shape), (source,))


def shift(builder: NetworkBuilder, source: int, offset: Tensor, where: str, name: str) -> int:
    """``x + offset`` with a constant that broadcasts onto the input."""
    shape = builder.shape(source)
    check_finite(offset, f"{where} offset")
    offset = builder.cast(offset)
    _check_broadcast(offset, shape, where)
    return builder.add(name, Shift(offset, shape), (source,))


def _check_broadcast(constant: Tensor, shape: Shape, where: str) -> None:
    """``constant`` must broadcast onto inputs of ``shape`` without changing their shape."""
    own = tuple(constant.shape)
    fits = len(own) <= len(shape) and all(
        c in (1, s) for c, s in zip(reversed(own), reversed(shape), strict=False)
    )
    if not fits:
        raise UnsupportedNetworkError(
            f"{where}: a constant of shape {own} does not broadcast onto inputs of shape {shape} "
            "without changing their shape; only such constants are supported"
        )


def _normalize_module(builder: NetworkBuilder, module: Normalize, source: int, where: str, name: str) -> int:
    where = f"{where} (Normalize)"
    shape = builder.shape(source)
    mean, std = module.mean.reshape(-1), module.std.reshape(-1)
    channels = shape[0] if shape else 1
    if mean.numel() not in (1, channels):
        raise UnsupportedNetworkError(
            f"{where} has {mean.numel()} channels but its input {shape} has {channels}"
        )
    view = (-1, *([1] * (len(shape) - 1))) if mean.numel() > 1 else (1,) * max(len(shape), 1)
    # shift and scale refuse NaN/inf in the mean (the offset) and the std (the factor)
    shifted = shift(builder, source, -mean.reshape(view), where, f"{name}.mean")
    return scale(builder, shifted, std.reshape(view), True, where, name)


def batch_norm(
    builder: NetworkBuilder, module: nn.modules.batchnorm._BatchNorm, source: int, where: str, name: str
) -> int:
    """``BatchNorm`` as the per-channel affine map it is (running statistics, or the clean batch's)."""
    kind = type(module).__name__
    where = f"{where} ({kind})"
    shape = builder.shape(source)
    expected = (1, 2) if isinstance(module, nn.BatchNorm1d) else (3,)
    if len(shape) not in expected or shape[0] != module.num_features:
        raise UnsupportedNetworkError(
            f"{where} expects {module.num_features} channels (dimension 1) but receives inputs of shape {shape}"
        )
    if module.training or module.running_mean is None:
        value = builder.clean_value(source)
        if value is None:
            raise UnsupportedNetworkError(
                f"{where} normalises with batch statistics (train mode); give the clean batch "
                "(compute_bounds does) or call model.eval()"
            )
        dims = [0, *range(2, value.dim())]
        mean, var = value.mean(dim=dims), value.var(dim=dims, unbiased=False)
    else:
        assert module.running_var is not None  # a BatchNorm has both running statistics or neither
        mean, var = builder.cast(module.running_mean), builder.cast(module.running_var)
    weight = builder.cast(module.weight) if module.weight is not None else torch.ones_like(mean)
    bias = builder.cast(module.bias) if module.bias is not None else torch.zeros_like(mean)
    return normalization(builder, source, mean, var, weight, bias, module.eps, where, name)


def normalization(
    builder: NetworkBuilder,
    source: int,
    mean: Tensor,
    var: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    where: str,
    name: str,
) -> int:
    """``(x - mean) / sqrt(var + eps) · weight + bias`` per channel (dimension 0 of the node's shape): a
    :class:`~relaxlab.engine.ops.Scale` then a :class:`~relaxlab.engine.ops.Shift`."""
    shape = builder.shape(source)
    factor = weight / torch.sqrt(var + eps)
    offset = bias - mean * factor
    for tensor, what in ((factor, "scale (weight / sqrt(var + eps))"), (offset, "shift")):
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise UnsupportedNetworkError(f"{where} {what} contains NaN/inf values")
    scaled = builder.add(f"{name}.scale", Scale(channel_view(factor, shape), False, shape), (source,))
    return builder.add(name, Shift(channel_view(offset, shape), shape), (scaled,))


def _pool_geometry(
    shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], where: str
) -> tuple[int, int]:
    if len(shape) != 3:
        raise UnsupportedNetworkError(f"{where} expects (C, H, W) inputs, receives {shape}")
    out_h = (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if out_h <= 0 or out_w <= 0 or min(*stride) < 1:
        raise UnsupportedNetworkError(f"{where} kernel {kernel} does not fit the input {shape}")
    return out_h, out_w


def avg_pool(
    builder: NetworkBuilder,
    source: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    divisor: int,
    where: str,
    name: str,
) -> int:
    """Average pooling as a depthwise convolution with the fixed kernel ``1/divisor``."""
    shape = builder.shape(source)
    _pool_geometry(shape, kernel, stride, padding, where)
    weight = torch.full((shape[0], 1, *kernel), 1.0 / divisor, dtype=builder.default_dtype)
    return conv(builder, source, weight, None, stride, padding, shape[0], where, name)


def _avg_pool_module(
    builder: NetworkBuilder, module: nn.AvgPool2d, source: int, where: str, name: str
) -> int:
    where = f"{where} (AvgPool2d)"
    kernel = _pair(module.kernel_size, "kernel_size", where)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size, "stride", where)
    padding = _pair(module.padding, "padding", where)
    if module.ceil_mode:
        raise UnsupportedNetworkError(f"{where}: ceil_mode=True is not supported")
    if not module.count_include_pad and padding != (0, 0):
        raise UnsupportedNetworkError(f"{where}: count_include_pad=False with padding is not supported")
    divisor = module.divisor_override or kernel[0] * kernel[1]
    return avg_pool(builder, source, kernel, stride, padding, divisor, where, name)


def max_of(builder: NetworkBuilder, sources: list[int], name: str) -> int:
    """The elementwise maximum of equally shaped nodes, as ``max(a, b) = a + relu(b - a)`` in a balanced tree."""
    level = 0
    while len(sources) > 1:
        paired: list[int] = []
        for k in range(0, len(sources) - 1, 2):
            a, b = sources[k], sources[k + 1]
            shape = builder.shape(a)
            tag = f"{name}.max{level}_{k // 2}"
            difference = builder.add(f"{tag}.sub", Sum((1.0, -1.0), shape), (b, a))
            positive = builder.add(f"{tag}.relu", Relu(shape), (difference,))
            paired.append(builder.add(tag, Sum((1.0, 1.0), shape), (a, positive)))
        if len(sources) % 2:
            paired.append(sources[-1])
        sources, level = paired, level + 1
    return sources[0]


def max_pool(
    builder: NetworkBuilder,
    source: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    where: str,
    name: str,
) -> int:
    """Max pooling without padding: one strided selection per window entry, then :func:`max_of`."""
    shape = builder.shape(source)
    out_h, out_w = _pool_geometry(shape, kernel, stride, (0, 0), where)
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            starts = (0, i, j)
            stops = (shape[0], i + (out_h - 1) * stride[0] + 1, j + (out_w - 1) * stride[1] + 1)
            steps = (1, stride[0], stride[1])
            taps.append(
                builder.add(
                    f"{name}.tap{i}_{j}",
                    Slice(starts, stops, steps, shape, (shape[0], out_h, out_w)),
                    (source,),
                )
            )
    if len(taps) == 1:
        return taps[0]
    return max_of(builder, taps, name)


def _max_pool_module(
    builder: NetworkBuilder, module: nn.MaxPool2d, source: int, where: str, name: str
) -> int:
    where = f"{where} (MaxPool2d)"
    kernel = _pair(module.kernel_size, "kernel_size", where)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size, "stride", where)
    if _pair(module.padding, "padding", where) != (0, 0):
        raise UnsupportedNetworkError(f"{where}: padding is not supported (it pads with -inf)")
    if _pair(module.dilation, "dilation", where) != (1, 1):
        raise UnsupportedNetworkError(f"{where}: dilation is not supported")
    if module.ceil_mode or module.return_indices:
        raise UnsupportedNetworkError(f"{where}: ceil_mode and return_indices are not supported")
    return max_pool(builder, source, kernel, stride, where, name)


def pad(
    builder: NetworkBuilder, source: int, pads: tuple[int, ...], value: float, where: str, name: str
) -> int:
    """Constant padding (``F.pad`` order: last dimension first), non-negative amounts."""
    shape = builder.shape(source)
    if len(pads) % 2 or len(pads) // 2 > len(shape) or any(p < 0 for p in pads):
        raise UnsupportedNetworkError(
            f"{where}: pads {pads} must be non-negative pairs over the input's {shape}"
        )
    if not math.isfinite(value):
        raise UnsupportedNetworkError(f"{where}: padding value {value} is not finite")
    out = list(shape)
    for k in range(len(pads) // 2):
        out[-1 - k] += pads[2 * k] + pads[2 * k + 1]
    if not any(pads):
        return source
    return builder.add(name, Pad(tuple(pads), float(value), shape, tuple(out)), (source,))


def _pad_module(
    builder: NetworkBuilder, module: nn.modules.padding._ConstantPadNd, source: int, where: str, name: str
) -> int:
    return pad(
        builder,
        source,
        tuple(int(p) for p in module.padding),
        float(module.value),
        f"{where} ({type(module).__name__})",
        name,
    )


def _identity_module(builder: NetworkBuilder, module: nn.Module, source: int, where: str, name: str) -> int:
    return source


def _dropout_module(builder: NetworkBuilder, module: nn.Dropout, source: int, where: str, name: str) -> int:
    if module.training and module.p > 0:
        raise UnsupportedNetworkError(
            f"{where} ({type(module).__name__}) is random in training mode; bound the network in eval mode (model.eval())"
        )
    return source


#: Module type -> rule. A subclass that overrides ``forward`` is not its base class (it is traced).
MODULES: dict[type[nn.Module], ModuleRule] = {
    nn.Linear: _linear_module,
    nn.Conv2d: _conv_module,
    nn.Flatten: _flatten_module,
    nn.Unflatten: _unflatten_module,
    nn.ReLU: _relu_module,
    Normalize: _normalize_module,
    nn.BatchNorm1d: batch_norm,
    nn.BatchNorm2d: batch_norm,
    nn.AvgPool2d: _avg_pool_module,
    nn.MaxPool2d: _max_pool_module,
    nn.ZeroPad2d: _pad_module,
    nn.ConstantPad2d: _pad_module,
    nn.Identity: _identity_module,
    nn.Dropout: _dropout_module,
}

#: What the modules of :data:`MODULES` are, for messages.
SUPPORTED = (
    "Linear, Conv2d, BatchNorm1d/2d, AvgPool2d, MaxPool2d, Flatten/Unflatten/view/reshape/permute, ReLU, "
    "relaxlab.nn.Normalize, ZeroPad2d/ConstantPad2d, Identity, Dropout, sums and differences of branches, "
    "products with numbers and torch.cat"
)


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule for ``module``'s type (the closest base in :data:`MODULES`), if any."""
    return next((MODULES[cls] for cls in type(module).__mro__ if cls in MODULES), None)


# -- functions and methods (fx tracing) -----------------------------------------------------------


def _relu_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    return NodeRef(relu(builder, _tensor_arg(args[0], where), name))


def _sum_call(sign: float) -> CallRule:
    def rule(
        builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
    ) -> Any:
        if set(kwargs) - {"alpha"} or len(args) != 2:
            raise UnsupportedNetworkError(f"{where}: only a sum or difference of two operands is supported")
        alpha = kwargs.get("alpha", 1)
        if not _number(alpha):
            raise UnsupportedNetworkError(f"{where}: alpha={alpha!r} is not a number")
        a, b = args
        factor = sign * float(alpha)
        if isinstance(a, NodeRef) and isinstance(b, NodeRef):
            if builder.shape(a) != builder.shape(b):
                raise UnsupportedNetworkError(
                    f"{where}: combines shapes {builder.shape(a)} and {builder.shape(b)}; broadcasting two computed "
                    "tensors is not supported"
                )
            return NodeRef(builder.add(name, Sum((1.0, factor), builder.shape(a)), (a, b)))
        if isinstance(a, NodeRef) and _number(b):
            return NodeRef(shift(builder, a, _constant(builder, factor * float(b)), where, name))
        if _number(a) and isinstance(b, NodeRef):
            scaled = (
                b
                if factor == 1.0
                else scale(builder, b, _constant(builder, factor), False, where, f"{name}.neg")
            )
            return NodeRef(shift(builder, scaled, _constant(builder, float(a)), where, name))
        raise UnsupportedNetworkError(
            f"{where}: operands {a!r}, {b!r}: only tensors from the input and finite numbers"
        )

    return rule


def _mul_call(divide: bool) -> CallRule:
    def rule(
        builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
    ) -> Any:
        if kwargs or len(args) != 2:
            raise UnsupportedNetworkError(f"{where}: only a product with one number is supported")
        a, b = args
        if isinstance(a, NodeRef) and _number(b):
            return NodeRef(scale(builder, a, _constant(builder, float(b)), divide, where, name))
        if not divide and _number(a) and isinstance(b, NodeRef):
            return NodeRef(scale(builder, b, _constant(builder, float(a)), False, where, name))
        raise UnsupportedNetworkError(
            f"{where}: {'division' if divide else 'multiplication'} of {a!r} and {b!r}: only a tensor "
            f"{'divided' if divide else 'multiplied'} by a finite number is affine (a product of two computed tensors is not)"
        )

    return rule


def _neg_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    return NodeRef(scale(builder, _tensor_arg(args[0], where), _constant(builder, -1.0), False, where, name))


def _cat_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    parts = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    sources = [_tensor_arg(v, where) for v in parts]
    shapes = [builder.shape(s) for s in sources]
    ndim = len(shapes[0]) + 1
    if not isinstance(dim, int) or not -ndim <= dim < ndim or dim % ndim == 0:
        raise UnsupportedNetworkError(f"{where}: concatenation along dim={dim} (the batch) is not supported")
    axis = dim % ndim - 1
    if any(
        len(s) != len(shapes[0]) or s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :]
        for s in shapes
    ):
        raise UnsupportedNetworkError(f"{where}: concatenates tensors of shapes {shapes} along dim {dim}")
    sizes = tuple(s[axis] for s in shapes)
    out = (*shapes[0][:axis], sum(sizes), *shapes[0][axis + 1 :])
    if len(sources) == 1:
        return sources[0]
    return NodeRef(builder.add(name, Cat(axis, sizes, out), tuple(sources)))


def _flatten_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return NodeRef(flatten(builder, source, start, end, where, name))


def _reshape_target(shape: Shape, target: list[Any], where: str) -> Shape:
    """The per-example shape of ``view``/``reshape`` to ``target`` (its first entry the batch)."""
    numel = math.prod(shape)
    first, rest = (target[0], list(target[1:])) if target else (None, [])
    if any(type(v) is not int for v in rest):
        raise UnsupportedNetworkError(f"{where}: reshape to {target}: only the first entry may be the batch")
    if first is BATCH:
        known = math.prod(v for v in rest if v != -1)
        if rest.count(-1) > 1 or (rest.count(-1) == 0 and known != numel) or known == 0 or numel % known:
            raise UnsupportedNetworkError(f"{where}: cannot reshape {shape} per example to {target}")
        return tuple(numel // known if v == -1 else v for v in rest)
    if first == -1 and -1 not in rest and math.prod(rest) == numel:
        return tuple(rest)
    raise UnsupportedNetworkError(
        f"{where}: reshape to {target} does not keep the batch dimension first; use x.view(x.size(0), ...) or "
        "x.flatten(1)"
    )


def _reshape_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    target = list(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else list(args[1:])
    if not target and "shape" in kwargs:
        target = list(kwargs["shape"])
    return NodeRef(reshape(builder, source, _reshape_target(builder.shape(source), target, where), name))


def _permute_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    dims = list(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else list(args[1:])
    dims = dims or list(kwargs.get("dims", []))
    ndim = len(builder.shape(source)) + 1
    order = [d % ndim for d in dims] if all(isinstance(d, int) for d in dims) else []
    if sorted(order) != list(range(ndim)) or order[0] != 0:
        raise UnsupportedNetworkError(f"{where}: permute{tuple(dims)} must keep the batch dimension first")
    return NodeRef(transpose(builder, source, tuple(d - 1 for d in order[1:]), name))


def transpose(builder: NetworkBuilder, source: int, perm: tuple[int, ...], name: str) -> int:
    shape = builder.shape(source)
    if perm == tuple(range(len(shape))):
        return source
    return builder.add(name, Transpose(perm, tuple(shape[p] for p in perm)), (source,))


def _transpose_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    ndim = len(builder.shape(source)) + 1
    a, b = (args[1], args[2]) if len(args) == 3 else (kwargs.get("dim0"), kwargs.get("dim1"))
    if not (isinstance(a, int) and isinstance(b, int)) or 0 in (a % ndim, b % ndim):
        raise UnsupportedNetworkError(f"{where}: transpose({a}, {b}) must keep the batch dimension first")
    order = list(range(ndim))
    order[a % ndim], order[b % ndim] = order[b % ndim], order[a % ndim]
    return NodeRef(transpose(builder, source, tuple(d - 1 for d in order[1:]), name))


def _squeeze_call(unsqueeze: bool) -> CallRule:
    def rule(
        builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
    ) -> Any:
        source = _tensor_arg(args[0], where)
        shape = list(builder.shape(source))
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        ndim = len(shape) + 1 + (1 if unsqueeze else 0)
        if not isinstance(dim, int) or dim % ndim == 0:
            raise UnsupportedNetworkError(
                f"{where}: {'un' if unsqueeze else ''}squeeze(dim={dim!r}) must name a per-example dimension"
            )
        axis = dim % ndim - 1
        if unsqueeze:
            shape.insert(axis, 1)
        elif shape[axis] == 1:
            shape.pop(axis)
        return NodeRef(reshape(builder, source, tuple(shape), name))

    return rule


def _same_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    return _tensor_arg(args[0], where)


def _size_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    full = (BATCH, *builder.shape(_tensor_arg(args[0], where)))
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return full if dim is None else full[dim]


def _getitem_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    container, key = args
    if isinstance(container, (tuple, list)):
        return container[key]
    if isinstance(container, NodeRef):
        return NodeRef(_index(builder, container, key, where, name))
    raise UnsupportedNetworkError(f"{where}: indexing {container!r} is not supported")


def _index(builder: NetworkBuilder, source: int, key: Any, where: str, name: str) -> int:
    """``x[:, a:b:s, ...]``: basic slicing that keeps the batch dimension (no integers, no masks)."""
    keys = key if isinstance(key, tuple) else (key,)
    shape = builder.shape(source)
    if (
        not keys
        or keys[0] != slice(None)
        or len(keys) - 1 > len(shape)
        or any(not isinstance(k, slice) and k is not Ellipsis for k in keys)
    ):
        raise UnsupportedNetworkError(
            f"{where}: only slicing that keeps the batch dimension is supported (x[:, a:b])"
        )
    rest = list(keys[1:])
    if Ellipsis in rest:
        at = rest.index(Ellipsis)
        rest = rest[:at] + [slice(None)] * (len(shape) - len(rest) + 1) + rest[at + 1 :]
    rest += [slice(None)] * (len(shape) - len(rest))
    ranges = [piece.indices(size) for size, piece in zip(shape, rest, strict=True)]
    if any(step < 1 for _, _, step in ranges):
        raise UnsupportedNetworkError(f"{where}: negative slice steps are not supported")
    return strided_slice(builder, source, ranges, where, name)


def strided_slice(
    builder: NetworkBuilder, source: int, ranges: Sequence[tuple[int, int, int]], where: str, name: str
) -> int:
    """The node sliced by one ``(start, stop, step)`` per dimension (``0 <= start``, ``stop <= size``, ``step >= 1``)."""
    shape = builder.shape(source)
    out = []
    for size, (start, stop, step) in zip(shape, ranges, strict=True):
        count = max(0, -(-(stop - start) // step))
        if count == 0:
            raise UnsupportedNetworkError(
                f"{where}: the slice {start}:{stop}:{step} of a dimension of size {size} is empty"
            )
        out.append(count)
    if tuple(out) == shape:
        return source
    starts, stops, steps = (tuple(int(r[k]) for r in ranges) for k in range(3))
    return builder.add(name, Slice(starts, stops, steps, shape, tuple(out)), (source,))


def _getattr_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    value, attribute = args[0], args[1]
    if isinstance(value, NodeRef) and attribute == "shape":
        return (BATCH, *builder.shape(value))
    raise UnsupportedNetworkError(f"{where}: attribute {attribute!r} is not supported")


def _pool_args(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    values = dict(zip(names, args[1:], strict=False))
    values.update(kwargs)
    return values


def _max_pool_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    options = _pool_args(
        args, kwargs, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    )
    kernel = _pair(options["kernel_size"], "kernel_size", where)
    stride = _pair(options.get("stride") or options["kernel_size"], "stride", where)
    if (
        _pair(options.get("padding", 0), "padding", where) != (0, 0)
        or _pair(options.get("dilation", 1), "dilation", where) != (1, 1)
        or options.get("ceil_mode")
        or options.get("return_indices")
    ):
        raise UnsupportedNetworkError(
            f"{where}: max pooling with padding, dilation, ceil_mode or indices is not supported"
        )
    return NodeRef(max_pool(builder, source, kernel, stride, where, name))


def _avg_pool_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    options = _pool_args(
        args,
        kwargs,
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    )
    kernel = _pair(options["kernel_size"], "kernel_size", where)
    stride = _pair(options.get("stride") or options["kernel_size"], "stride", where)
    padding = _pair(options.get("padding", 0), "padding", where)
    if options.get("ceil_mode") or (options.get("count_include_pad", True) is False and padding != (0, 0)):
        raise UnsupportedNetworkError(
            f"{where}: ceil_mode, or count_include_pad=False with padding, is not supported"
        )
    divisor = options.get("divisor_override") or kernel[0] * kernel[1]
    return NodeRef(avg_pool(builder, source, kernel, stride, padding, divisor, where, name))


def _pad_call(
    builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str
) -> Any:
    source = _tensor_arg(args[0], where)
    options = _pool_args(args, kwargs, ("pad", "mode", "value"))
    if options.get("mode", "constant") != "constant":
        raise UnsupportedNetworkError(f"{where}: padding mode {options['mode']!r} (only 'constant')")
    value = options.get("value")
    return NodeRef(
        pad(
            builder,
            source,
            tuple(int(p) for p in options["pad"]),
            0.0 if value is None else float(value),
            where,
            name,
        )
    )


#: Functions (``call_function`` nodes of ``torch.fx``) -> rule.
FUNCTIONS: dict[Any, CallRule] = {
    F.relu: _relu_call,
    torch.relu: _relu_call,
    torch.relu_: _relu_call,
    F.relu_: _relu_call,
    operator.add: _sum_call(1.0),
    operator.iadd: _sum_call(1.0),
    torch.add: _sum_call(1.0),
    operator.sub: _sum_call(-1.0),
    operator.isub: _sum_call(-1.0),
    torch.sub: _sum_call(-1.0),
    operator.mul: _mul_call(False),
    operator.imul: _mul_call(False),
    torch.mul: _mul_call(False),
    operator.truediv: _mul_call(True),
    operator.itruediv: _mul_call(True),
    torch.div: _mul_call(True),
    operator.neg: _neg_call,
    torch.neg: _neg_call,
    torch.cat: _cat_call,
    torch.concat: _cat_call,
    torch.concatenate: _cat_call,
    torch.flatten: _flatten_call,
    torch.reshape: _reshape_call,
    torch.permute: _permute_call,
    torch.transpose: _transpose_call,
    torch.squeeze: _squeeze_call(False),
    torch.unsqueeze: _squeeze_call(True),
    F.max_pool2d: _max_pool_call,
    F.avg_pool2d: _avg_pool_call,
    F.pad: _pad_call,
    operator.getitem: _getitem_call,
    getattr: _getattr_call,
}

#: Tensor methods (``call_method`` nodes) -> rule; in-place forms (``relu_``, ``add_``) share the rule.
METHODS: dict[str, CallRule] = {
    "relu": _relu_call,
    "add": _sum_call(1.0),
    "sub": _sum_call(-1.0),
    "mul": _mul_call(False),
    "div": _mul_call(True),
    "neg": _neg_call,
    "flatten": _flatten_call,
    "view": _reshape_call,
    "reshape": _reshape_call,
    "permute": _permute_call,
    "transpose": _transpose_call,
    "squeeze": _squeeze_call(False),
    "unsqueeze": _squeeze_call(True),
    "contiguous": _same_call,
    "clone": _same_call,
    "size": _size_call,
}

#: Methods whose result is the same tensor as their operand, or a view of it (for in-place aliasing).
SAME_TENSOR_METHODS = frozenset({"contiguous"})
VIEW_METHODS = frozenset({"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze"})
VIEW_FUNCTIONS = frozenset(
    {
        torch.flatten,
        torch.reshape,
        torch.permute,
        torch.transpose,
        torch.squeeze,
        torch.unsqueeze,
        operator.getitem,
    }
)


# -- ONNX node types (read by relaxlab.engine.onnx) -----------------------------------------------
#
# The reader hands each rule the node's inputs as constants (numpy arrays: initializers and folded
# constant subgraphs) or as :class:`OnnxTensor` (computed from the network's input). Shapes are
# ONNX's at batch 1: a graph is read as the function of one example, which the engine evaluates for
# every example of its batch, so a shape chain (``Shape`` -> ``Gather`` -> ``Concat``) computes a
# fixed shape whose batch entry is 1. The leading 1 of a computed tensor's ONNX shape (the batch)
# is left out of its node's shape where :attr:`OnnxTensor.lead` says so: convolutions, pooling and
# per-channel maps need it left out, and a reshape puts it back where an operation acts on it.

#: The most entries a tensor read from ONNX may have (per example), and the largest constant a rule
#: may compute: larger ones are refused before anything is allocated (a hostile ``pads=100000``
#: would otherwise ask for terabytes).
ONNX_MAX_ELEMENTS = 2**24
#: The most entries of one max-pooling window (each entry becomes nodes of the maximum).
ONNX_MAX_POOL_WINDOW = 1024

#: ONNX tensor element types (``TensorProto.DataType``) -> numpy dtypes, for ``Cast`` and constants.
ONNX_DTYPES: dict[int, Any] = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}
_FLOAT_TYPES = (1, 11)  # FLOAT, DOUBLE: what a computed tensor may be cast to (a no-op for the bounds)


@attrs.frozen(eq=False)
class OnnxTensor:
    """A tensor computed from the network's input: the node that holds it, and whether its ONNX shape
    has a leading 1 (the batch) that the node's shape leaves out (``lead``)."""

    node: int
    lead: bool


@attrs.frozen(eq=False)
class OnnxNode:
    """One ONNX node as a rule sees it.

    :param where: ``ONNX node 3 'conv1' (Conv)``, for messages.
    :param name: the name of the network nodes it becomes.
    :param inputs: per ONNX input, a constant (``np.ndarray``), an :class:`OnnxTensor`, or ``None``
        for an omitted optional input.
    :param attributes: the node's attributes as Python values (ints, floats, strings, lists, arrays).
    :param opset: the model's version of the default ONNX domain.
    """

    where: str
    name: str
    inputs: tuple[Any, ...]
    attributes: dict[str, Any]
    opset: int


#: ``build(builder, node) -> value`` (the node's first output: a constant or an :class:`OnnxTensor`).
OnnxBuild = Callable[[NetworkBuilder, OnnxNode], Any]


@attrs.frozen
class OnnxRule:
    """How one ONNX node type is read: ``build``, and the attributes it implements (any other
    attribute on a node is refused by the reader, naming it, before the rule runs)."""

    build: OnnxBuild
    attributes: frozenset[str] = frozenset()


def _refuse(node: OnnxNode, why: str) -> UnsupportedNetworkError:
    return UnsupportedNetworkError(f"{node.where}: {why}")


def onnx_shape(builder: NetworkBuilder, value: Any) -> Shape:
    """The ONNX shape (at batch 1) of a constant or an :class:`OnnxTensor`."""
    if isinstance(value, OnnxTensor):
        return (1,) * value.lead + builder.shape(value.node)
    return tuple(int(s) for s in np.shape(value))


def check_size(shape: Sequence[int], where: str) -> None:
    """Refuse a tensor shape with a negative size or more than :data:`ONNX_MAX_ELEMENTS` entries."""
    if any(int(s) < 0 for s in shape):
        raise UnsupportedNetworkError(f"{where}: a tensor of shape {tuple(shape)} has a negative size")
    size = math.prod(int(s) for s in shape)
    if size > ONNX_MAX_ELEMENTS:
        raise UnsupportedNetworkError(
            f"{where}: a tensor of shape {tuple(shape)} has {size} entries, more than the {ONNX_MAX_ELEMENTS} "
            "the ONNX reader allows (relaxlab.engine.optable.ONNX_MAX_ELEMENTS)"
        )


def _view(builder: NetworkBuilder, value: OnnxTensor, shape: Sequence[int], name: str) -> OnnxTensor:
    """``value`` with the ONNX shape ``shape`` (as many entries): a reshape; a leading 1 is left out."""
    shape = tuple(int(s) for s in shape)
    lead = bool(shape) and shape[0] == 1
    return OnnxTensor(reshape(builder, value.node, shape[1:] if lead else shape, name), lead)


def _leading(builder: NetworkBuilder, node: OnnxNode, value: OnnxTensor) -> OnnxTensor:
    """``value`` with its leading 1 (the batch) left out of its node's shape."""
    if value.lead:
        return value
    shape = onnx_shape(builder, value)
    if not shape or shape[0] != 1:
        raise _refuse(
            node, f"its input of shape {shape} is not one example (the first dimension, the batch, must be 1)"
        )
    return _view(builder, value, shape, f"{node.name}.batch")


def _explicit(builder: NetworkBuilder, value: OnnxTensor, name: str) -> OnnxTensor:
    """``value`` with its node's shape the whole ONNX shape (the batch's 1 included)."""
    if not value.lead:
        return value
    return OnnxTensor(reshape(builder, value.node, onnx_shape(builder, value), name), False)


# -- reading inputs and attributes ----------------------------------------------------------------


def _input(node: OnnxNode, k: int) -> Any:
    return node.inputs[k] if k < len(node.inputs) else None


def _operand(node: OnnxNode) -> Any:
    """The first input (a constant or a computed tensor), which every node type but ``Constant`` has."""
    value = _input(node, 0)
    if value is None:
        raise _refuse(node, "has no input")
    return value


def _tensor(node: OnnxNode, k: int, what: str) -> OnnxTensor:
    value = _input(node, k)
    if not isinstance(value, OnnxTensor):
        raise _refuse(node, f"its {what} (input {k}) must be computed from the network's input")
    return value


def _constant_input(node: OnnxNode, k: int, what: str) -> np.ndarray:
    value = _input(node, k)
    if not isinstance(value, np.ndarray):
        state = "missing" if value is None else "computed from the network's input"
        raise _refuse(node, f"its {what} (input {k}) must be a constant, and is {state}")
    return value


def _numeric(node: OnnxNode, value: np.ndarray, what: str) -> np.ndarray:
    """A real-valued constant as float64."""
    if value.dtype.kind not in "biuf":
        raise _refuse(node, f"its {what} has element type {value.dtype}; only real numbers are supported")
    return np.array(value, dtype=np.float64)  # a copy: torch takes it over


def _int_list(node: OnnxNode, value: Any, what: str) -> list[int]:
    """Integers from an ``INTS`` attribute or an integer constant."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or value.ndim > 1:
            raise _refuse(
                node, f"{what} must be a 1-d integer constant, got {value.dtype} of shape {value.shape}"
            )
        return [int(v) for v in value.reshape(-1)]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    raise _refuse(node, f"{what}={value!r} must be a list of integers")


def _attr_ints(node: OnnxNode, name: str, default: list[int] | None) -> list[int] | None:
    value = node.attributes.get(name)
    return default if value is None else _int_list(node, value, f"attribute {name}")


def _attr_int(node: OnnxNode, name: str, default: int) -> int:
    value = node.attributes.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse(node, f"attribute {name}={value!r} must be an integer")
    return value


def _attr_float(node: OnnxNode, name: str, default: float) -> float:
    value = node.attributes.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise _refuse(node, f"attribute {name}={value!r} must be a finite number")
    return float(value)


def _attr_str(node: OnnxNode, name: str, default: str) -> str:
    value = node.attributes.get(name, default)
    if not isinstance(value, str):
        raise _refuse(node, f"attribute {name}={value!r} must be a string")
    return value


def _axis(node: OnnxNode, axis: int, rank: int, what: str = "axis") -> int:
    """An axis in ``[-rank, rank)`` as a non-negative index."""
    if not -rank <= axis < rank:
        raise _refuse(node, f"{what} {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def _pair_attr(node: OnnxNode, name: str, default: list[int], minimum: int) -> tuple[int, int]:
    values = _attr_ints(node, name, default)
    assert values is not None
    if len(values) != 2 or min(values) < minimum:
        raise _refuse(
            node, f"{name}={values}: a 2-d {node.where.rsplit('(', 1)[-1][:-1]} takes 2 values >= {minimum}"
        )
    return values[0], values[1]


def _broadcast(node: OnnxNode, *shapes: Sequence[int]) -> Shape:
    try:
        shape = tuple(int(s) for s in np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError:
        raise _refuse(
            node, f"operands of shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast"
        ) from None
    return shape


# -- elementwise ----------------------------------------------------------------------------------


def _fold_binary(node: OnnxNode, kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a (kind) b`` of two constants, as ONNX computes it (integer division truncates)."""
    check_size(_broadcast(node, a.shape, b.shape), node.where)
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        raise _refuse(
            node, f"operands of element types {a.dtype}, {b.dtype}: only real numbers are supported"
        )
    if kind == "Div" and a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if bool((b == 0).any()):
            raise _refuse(node, "divides integers by 0")
        quotient = np.abs(a) // np.abs(b)
        return np.asarray(np.where((a < 0) != (b < 0), -quotient, quotient), dtype=np.result_type(a, b))
    operation = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[kind]
    with np.errstate(all="ignore"):  # inf/NaN constants are refused where they are used as weights
        return np.asarray(operation(a, b))


def add_constant(
    builder: NetworkBuilder,
    node: OnnxNode,
    x: OnnxTensor,
    constant: np.ndarray,
    kind: str,
    constant_first: bool = False,
) -> OnnxTensor:
    """``x + c``, ``x - c``, ``c - x``, ``x · c``, ``x / c`` with a constant ``c`` of any shape that
    broadcasts onto ``x`` without enlarging it (a leading batch 1 of ``c`` is the batch)."""
    shape = onnx_shape(builder, x)
    out = _broadcast(node, shape, constant.shape)
    if math.prod(out) != math.prod(shape):
        raise _refuse(
            node,
            f"the constant of shape {constant.shape} broadcasts the computed tensor of shape "
            f"{shape} to {out}; only constants that keep its shape are supported",
        )
    if out != shape:  # the constant adds leading dimensions of size 1
        x = _view(builder, x, out, f"{node.name}.view")
    padded = _numeric(node, constant, "constant").reshape((1,) * (len(out) - constant.ndim) + constant.shape)
    value = torch.from_numpy(padded.reshape(padded.shape[1:]) if x.lead else padded)
    where, name = node.where, node.name
    if kind == "Add":
        return OnnxTensor(shift(builder, x.node, value, where, name), x.lead)
    if kind == "Sub" and constant_first:
        negated = scale(builder, x.node, torch.tensor(-1.0, dtype=torch.float64), False, where, f"{name}.neg")
        return OnnxTensor(shift(builder, negated, value, where, name), x.lead)
    if kind == "Sub":
        return OnnxTensor(shift(builder, x.node, -value, where, name), x.lead)
    if kind == "Div" and constant_first:
        raise _refuse(node, "a constant divided by a computed tensor is not affine")
    return OnnxTensor(scale(builder, x.node, value, kind == "Div", where, name), x.lead)


def _binary_rule(kind: str) -> OnnxBuild:
    def build(builder: NetworkBuilder, node: OnnxNode) -> Any:
        if len(node.inputs) != 2 or any(v is None for v in node.inputs):
            raise _refuse(node, "expects two operands")
        a, b = node.inputs
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return _fold_binary(node, kind, a, b)
        if isinstance(a, OnnxTensor) and isinstance(b, OnnxTensor):
            if kind in ("Mul", "Div"):
                raise _refuse(
                    node,
                    f"a {'product' if kind == 'Mul' else 'quotient'} of two computed tensors is not "
                    "affine (only products with constants are supported)",
                )
            sa, sb = onnx_shape(builder, a), onnx_shape(builder, b)
            out = _broadcast(node, sa, sb)
            if not math.prod(out) == math.prod(sa) == math.prod(sb):
                raise _refuse(node, f"broadcasting computed tensors of shapes {sa} and {sb} is not supported")
            a, b = _view(builder, a, out, f"{node.name}.a"), _view(builder, b, out, f"{node.name}.b")
            shape = builder.shape(a.node)
            return OnnxTensor(
                builder.add(node.name, Sum((1.0, 1.0 if kind == "Add" else -1.0), shape), (a.node, b.node)),
                a.lead,
            )
        if isinstance(a, OnnxTensor):
            return add_constant(builder, node, a, b, kind)
        return add_constant(builder, node, b, a, kind, constant_first=True)

    return build


def _neg_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    x = _operand(node)
    if isinstance(x, np.ndarray):
        return -_numeric(node, x, "operand").astype(x.dtype)
    x = _tensor(node, 0, "operand")
    return OnnxTensor(
        scale(builder, x.node, torch.tensor(-1.0, dtype=torch.float64), False, node.where, node.name), x.lead
    )


def _relu_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    x = _operand(node)
    if isinstance(x, np.ndarray):
        return np.maximum(_numeric(node, x, "operand"), 0.0).astype(x.dtype)
    x = _tensor(node, 0, "operand")
    return OnnxTensor(relu(builder, x.node, node.name), x.lead)


def _identity_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    return _operand(node)


def _dropout_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    if _attr_int(node, "is_test", 1) == 0:
        raise _refuse(node, "is_test=0 (training mode) is random; export the model in inference mode")
    training = _input(node, 2)
    if training is not None and (not isinstance(training, np.ndarray) or bool(np.asarray(training).any())):
        raise _refuse(node, "training_mode is not a constant false; export the model in inference mode")
    return _identity_rule(builder, node)


def _cast_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    to = _attr_int(node, "to", 0)
    x = _operand(node)
    if to not in ONNX_DTYPES:
        raise _refuse(node, f"cast to element type {to} is not supported")
    if isinstance(x, np.ndarray):
        with np.errstate(all="ignore"):
            return x.astype(ONNX_DTYPES[to])
    if to not in _FLOAT_TYPES:
        raise _refuse(
            node,
            f"a computed tensor cast to {np.dtype(ONNX_DTYPES[to]).name} (only float and double: "
            "rounding to integers or half precision is not affine)",
        )
    return _tensor(node, 0, "operand")


# -- products -------------------------------------------------------------------------------------


def _linear_last(
    builder: NetworkBuilder, node: OnnxNode, x: OnnxTensor, weight: np.ndarray, name: str
) -> OnnxTensor:
    """``x W^T`` on the last axis of ``x``; ``weight`` is ``(out, in)``."""
    shape = onnx_shape(builder, x)
    if not shape or shape[-1] != weight.shape[1]:
        raise _refuse(node, f"multiplies a tensor of shape {shape} by a matrix with {weight.shape[1]} rows")
    if x.lead and len(shape) == 1:
        x = _explicit(builder, x, f"{name}.batch")
    return OnnxTensor(
        linear(builder, x.node, torch.from_numpy(np.ascontiguousarray(weight)), None, node.where, name),
        x.lead,
    )


def _permute(
    builder: NetworkBuilder, node: OnnxNode, x: OnnxTensor, perm: Sequence[int], name: str
) -> OnnxTensor:
    shape = onnx_shape(builder, x)
    perm = tuple(perm)
    if sorted(perm) != list(range(len(shape))):
        raise _refuse(node, f"perm={list(perm)} is not a permutation of the {len(shape)} axes of {shape}")
    if x.lead and perm[0] == 0:
        return OnnxTensor(transpose(builder, x.node, tuple(p - 1 for p in perm[1:]), name), True)
    x = _explicit(builder, x, f"{name}.batch")
    return OnnxTensor(transpose(builder, x.node, perm, name), False)


def _matmul(builder: NetworkBuilder, node: OnnxNode, left: Any, right: Any, alpha: float = 1.0) -> Any:
    """``alpha · left @ right`` (numpy's ``matmul``) with one operand a constant of rank 1 or 2."""
    if isinstance(left, np.ndarray) and isinstance(right, np.ndarray):
        a, b = _numeric(node, left, "operand"), _numeric(node, right, "operand")
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[max(b.ndim - 2, 0)]:
            raise _refuse(node, f"cannot multiply constants of shapes {a.shape} and {b.shape}")
        rows = a.shape[-2] if a.ndim > 1 else 1
        check_size(
            (*_broadcast(node, a.shape[:-2], b.shape[:-2]), rows, b.shape[-1] if b.ndim > 1 else 1),
            node.where,
        )
        return alpha * np.matmul(a, b)
    if isinstance(left, OnnxTensor) and isinstance(right, OnnxTensor):
        raise _refuse(
            node, "a product of two computed tensors is not affine (one operand must be a constant)"
        )
    constant = _numeric(node, left if isinstance(left, np.ndarray) else right, "constant operand") * alpha
    if constant.ndim not in (1, 2):
        raise _refuse(
            node, f"the constant operand has shape {constant.shape}; only 1-d and 2-d constants are supported"
        )
    if isinstance(right, np.ndarray):  # x @ W
        x = left
        shape = onnx_shape(builder, x)
        if constant.ndim == 1:
            y = _linear_last(builder, node, x, constant[None, :], node.name)
            return _view(builder, y, shape[:-1], f"{node.name}.squeeze")
        return _linear_last(builder, node, x, constant.T, node.name)
    x = right  # W @ x: x's second-to-last axis is contracted (its only axis when it has one)
    shape = onnx_shape(builder, x)
    weight = constant[None, :] if constant.ndim == 1 else constant
    if len(shape) == 1:
        y = _linear_last(builder, node, x, weight, node.name)
        return y if constant.ndim == 2 else _view(builder, y, (), f"{node.name}.squeeze")
    swap = (*range(len(shape) - 2), len(shape) - 1, len(shape) - 2)
    y = _linear_last(builder, node, _permute(builder, node, x, swap, f"{node.name}.swap"), weight, node.name)
    if constant.ndim == 1:
        return _view(builder, y, (*shape[:-2], shape[-1]), f"{node.name}.squeeze")
    return _permute(builder, node, y, swap, f"{node.name}.swap_back")


def _matmul_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        raise _refuse(node, "expects two operands")
    return _matmul(builder, node, node.inputs[0], node.inputs[1])


def _gemm_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    a, b, c = _input(node, 0), _input(node, 1), _input(node, 2)
    if a is None or b is None:
        raise _refuse(node, "expects A and B")
    alpha, beta = _attr_float(node, "alpha", 1.0), _attr_float(node, "beta", 1.0)
    trans_a, trans_b = _attr_int(node, "transA", 0), _attr_int(node, "transB", 0)
    if trans_a not in (0, 1) or trans_b not in (0, 1):
        raise _refuse(node, f"transA={trans_a}, transB={trans_b} must be 0 or 1")
    for value, what in ((a, "A"), (b, "B")):
        if len(onnx_shape(builder, value)) != 2:
            raise _refuse(node, f"{what} has shape {onnx_shape(builder, value)}; Gemm takes matrices")
    if isinstance(a, OnnxTensor):
        a = _permute(builder, node, a, (1, 0), f"{node.name}.transA") if trans_a else a
    elif trans_a:
        a = a.T
    if isinstance(b, OnnxTensor):
        b = _permute(builder, node, b, (1, 0), f"{node.name}.transB") if trans_b else b
    elif trans_b:
        b = b.T
    product = _matmul(builder, node, a, b, alpha)
    if c is None or beta == 0.0:
        return product
    if not isinstance(c, np.ndarray):
        raise _refuse(node, "its C (input 2) must be a constant")
    bias = _numeric(node, c, "C") * beta
    if isinstance(product, np.ndarray):
        return _fold_binary(node, "Add", product, bias)
    return add_constant(builder, attrs.evolve(node, name=f"{node.name}.C"), product, bias, "Add")


# -- convolution, pooling, normalisation ----------------------------------------------------------


def _image(builder: NetworkBuilder, node: OnnxNode) -> tuple[OnnxTensor, Shape]:
    """The first input as ``(C, H, W)`` maps of one example, and its ONNX shape ``(1, C, H, W)``."""
    x = _tensor(node, 0, "input")
    shape = onnx_shape(builder, x)
    if len(shape) != 4:
        raise _refuse(
            node, f"expects a 4-d input (N, C, H, W), receives shape {shape} (only 2-d maps are supported)"
        )
    return _leading(builder, node, x), shape


def _pads(
    node: OnnxNode, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int], same: bool
) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` from ``pads`` or ``auto_pad`` (``SAME_*`` only where ``same``)."""
    auto = _attr_str(node, "auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = _attr_ints(node, "pads", [0, 0, 0, 0])
        assert pads is not None
        if len(pads) != 4:
            raise _refuse(node, f"pads={pads}: 2-d maps take 4 pads (top, left, bottom, right)")
        if min(pads) < 0:
            raise _refuse(node, f"pads={pads}: negative pads (cropping) are not supported")
        return pads[0], pads[1], pads[2], pads[3]
    if "pads" in node.attributes:
        raise _refuse(node, f"pads and auto_pad={auto} are given together")
    if auto == "VALID":
        return 0, 0, 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER") and same:
        begin, end = [], []
        for length, k, s in zip(size, kernel, strides, strict=True):
            total = max((-(-length // s) - 1) * s + k - length, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return begin[0], begin[1], end[0], end[1]
    raise _refuse(
        node,
        f"auto_pad={auto!r} is not supported (NOTSET and VALID{', SAME_UPPER, SAME_LOWER' if same else ''})",
    )


def _check_dilations(node: OnnxNode) -> None:
    dilations = _attr_ints(node, "dilations", [1, 1])
    if dilations != [1, 1]:
        raise _refuse(node, f"dilations={dilations} are not supported (only 1)")


def _padded(
    builder: NetworkBuilder, node: OnnxNode, x: OnnxTensor, shape: Shape, pads: tuple[int, int, int, int]
) -> tuple[int, tuple[int, int]]:
    """The source node and the symmetric padding for a convolution: asymmetric pads become a ``Pad``."""
    top, left, bottom, right = pads
    check_size((shape[1], shape[2] + top + bottom, shape[3] + left + right), node.where)
    if top == bottom and left == right:
        return x.node, (top, left)
    return pad(builder, x.node, (left, right, top, bottom), 0.0, node.where, f"{node.name}.pad"), (0, 0)


def _conv_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    x, shape = _image(builder, node)
    weight = _numeric(node, _constant_input(node, 1, "weight"), "weight")
    if weight.ndim != 4:
        raise _refuse(node, f"weight of shape {weight.shape}: only 2-d convolutions are supported")
    out_channels, per_group, k_h, k_w = weight.shape
    if _attr_ints(node, "kernel_shape", [k_h, k_w]) != [k_h, k_w]:
        raise _refuse(
            node, f"kernel_shape={node.attributes['kernel_shape']} differs from the weight's {(k_h, k_w)}"
        )
    strides = _pair_attr(node, "strides", [1, 1], 1)
    _check_dilations(node)
    group = _attr_int(node, "group", 1)
    if group < 1 or per_group * group != shape[1] or out_channels % group:
        raise _refuse(
            node,
            f"group={group} with a weight of shape {weight.shape} does not fit an input of "
            f"{shape[1]} channels",
        )
    bias = _input(node, 2)
    if bias is not None:
        bias = _numeric(node, _constant_input(node, 2, "bias"), "bias")
        if bias.shape != (out_channels,):
            raise _refuse(node, f"bias of shape {bias.shape} for {out_channels} output channels")
    source, padding = _padded(builder, node, x, shape, _pads(node, shape[2:], (k_h, k_w), strides, same=True))
    out = conv(
        builder,
        source,
        torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias),
        strides,
        padding,
        group,
        node.where,
        node.name,
    )
    return OnnxTensor(out, True)


def _pool_settings(node: OnnxNode, shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
    kernel = _attr_ints(node, "kernel_shape", None)
    if kernel is None or len(kernel) != 2 or min(kernel) < 1:
        raise _refuse(node, f"kernel_shape={kernel}: 2-d pooling takes 2 positive sizes")
    strides = _pair_attr(node, "strides", [1, 1], 1)
    _check_dilations(node)
    if _attr_int(node, "ceil_mode", 0):
        raise _refuse(node, "ceil_mode=1 is not supported")
    return (kernel[0], kernel[1]), strides


def _average_pool_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    x, shape = _image(builder, node)
    kernel, strides = _pool_settings(node, shape)
    pads = _pads(node, shape[2:], kernel, strides, same=False)
    if any(pads) and not _attr_int(node, "count_include_pad", 0):
        raise _refuse(
            node,
            "count_include_pad=0 with pads (border windows averaged over fewer entries) is not supported",
        )
    source, padding = _padded(builder, node, x, shape, pads)
    out = avg_pool(builder, source, kernel, strides, padding, kernel[0] * kernel[1], node.where, node.name)
    return OnnxTensor(out, True)


def _global_average_pool_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    x, shape = _image(builder, node)
    kernel = (shape[2], shape[3])
    return OnnxTensor(
        avg_pool(builder, x.node, kernel, (1, 1), (0, 0), kernel[0] * kernel[1], node.where, node.name), True
    )


def _max_pool_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    x, shape = _image(builder, node)
    kernel, strides = _pool_settings(node, shape)
    if any(_pads(node, shape[2:], kernel, strides, same=False)):
        raise _refuse(node, "pads are not supported (max pooling pads with -inf)")
    if kernel[0] * kernel[1] > ONNX_MAX_POOL_WINDOW:
        raise _refuse(
            node,
            f"a window of {kernel[0] * kernel[1]} entries is more than the "
            f"{ONNX_MAX_POOL_WINDOW} the reader allows (relaxlab.engine.optable.ONNX_MAX_POOL_WINDOW)",
        )
    return OnnxTensor(max_pool(builder, x.node, kernel, strides, node.where, node.name), True)


def _batch_norm_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    if _attr_int(node, "training_mode", 0) or not _attr_int(node, "is_test", 1):
        raise _refuse(
            node, "training mode normalises with batch statistics; export the model in inference mode"
        )
    if _attr_int(node, "spatial", 1) != 1:
        raise _refuse(node, "spatial=0 (statistics per position) is not supported")
    x = _tensor(node, 0, "input")
    shape = onnx_shape(builder, x)
    if len(shape) < 2:
        raise _refuse(node, f"expects an input (N, C, ...), receives shape {shape}")
    x = _leading(builder, node, x)
    stats = []
    for k, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")):
        value = _numeric(node, _constant_input(node, k, what), what)
        if value.size != shape[1]:
            raise _refuse(node, f"{what} has {value.size} entries for an input of {shape[1]} channels")
        stats.append(torch.from_numpy(value.reshape(-1)))
    weight, bias, mean, var = (builder.cast(t) for t in stats)
    # ONNX stores epsilon as float32; its shortest decimal (1e-05) is the value the exporter was given.
    eps = float(str(np.float32(_attr_float(node, "epsilon", 1e-5))))
    return OnnxTensor(
        normalization(builder, x.node, mean, var, weight, bias, eps, node.where, node.name), True
    )


# -- shapes ---------------------------------------------------------------------------------------


def _reshaped(builder: NetworkBuilder, node: OnnxNode, value: Any, out: Sequence[int]) -> Any:
    """``value`` (a constant or a computed tensor) with the ONNX shape ``out`` (as many entries)."""
    out = tuple(int(s) for s in out)
    check_size(out, node.where)
    if isinstance(value, np.ndarray):
        return value.reshape(out)
    return _view(builder, value, out, node.name)


def _flatten_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    axis = _attr_int(node, "axis", 1)
    if not -len(shape) <= axis <= len(shape):
        raise _refuse(node, f"axis={axis} is out of range for a tensor of rank {len(shape)}")
    axis = axis + len(shape) if axis < 0 else axis
    return _reshaped(builder, node, value, (math.prod(shape[:axis]), math.prod(shape[axis:])))


def _reshape_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    if node.opset < 5:
        target = _attr_ints(node, "shape", None)
        if target is None:
            raise _refuse(node, "has no shape attribute")
    else:
        target = _int_list(node, _constant_input(node, 1, "shape"), "the target shape")
    allow_zero = _attr_int(node, "allowzero", 0)
    out, unknown = [], None
    for position, size in enumerate(target):
        if size == -1 and unknown is None:
            unknown = position
            out.append(1)
        elif size == 0 and not allow_zero:
            if position >= len(shape):
                raise _refuse(
                    node, f"target {target}: entry {position} copies a dimension {shape} does not have"
                )
            out.append(shape[position])
        elif size < 0:
            raise _refuse(node, f"target {target} is not a shape")
        else:
            out.append(size)
    known = math.prod(out)
    if unknown is not None:
        if known == 0 or math.prod(shape) % known:
            raise _refuse(node, f"cannot reshape {shape} to {target}")
        out[unknown] = math.prod(shape) // known
    if math.prod(out) != math.prod(shape):
        raise _refuse(node, f"cannot reshape {shape} ({math.prod(shape)} entries) to {target}")
    return _reshaped(builder, node, value, out)


def _axes(node: OnnxNode, k: int) -> list[int] | None:
    """``axes`` from the attribute (before opset 13) or from input ``k``."""
    if node.opset < 13:
        return _attr_ints(node, "axes", None)
    value = _input(node, k)
    return None if value is None else _int_list(node, _constant_input(node, k, "axes"), "axes")


def _squeeze_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    axes = _axes(node, 1)
    if axes is None:
        return _reshaped(builder, node, value, [s for s in shape if s != 1])
    drop = {_axis(node, a, len(shape)) for a in axes}
    if len(drop) != len(axes) or any(shape[a] != 1 for a in drop):
        raise _refuse(node, f"axes={axes} must name distinct dimensions of size 1 of {shape}")
    return _reshaped(builder, node, value, [s for i, s in enumerate(shape) if i not in drop])


def _unsqueeze_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    axes = _axes(node, 1)
    if not axes:
        raise _refuse(node, "has no axes")
    rank = len(shape) + len(axes)
    inserted = sorted({_axis(node, a, rank) for a in axes})
    if len(inserted) != len(axes):
        raise _refuse(node, f"axes={axes} repeat an axis")
    out = list(shape)
    for a in inserted:
        out.insert(a, 1)
    return _reshaped(builder, node, value, out)


def _transpose_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    perm = _attr_ints(node, "perm", list(range(len(shape)))[::-1])
    assert perm is not None
    if sorted(perm) != list(range(len(shape))):
        raise _refuse(node, f"perm={perm} is not a permutation of the {len(shape)} axes of {shape}")
    if isinstance(value, np.ndarray):
        return np.transpose(value, perm)
    return _permute(builder, node, value, perm, node.name)


def _concat_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    values = list(node.inputs)
    if not values or any(v is None for v in values):
        raise _refuse(node, "expects at least one input")
    if "axis" not in node.attributes:
        raise _refuse(node, "has no axis")
    shapes = [onnx_shape(builder, v) for v in values]
    rank = len(shapes[0])
    axis = _axis(node, _attr_int(node, "axis", 0), max(rank, 1))
    if any(
        len(s) != rank or s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :] for s in shapes
    ):
        raise _refuse(node, f"concatenates tensors of shapes {shapes} along axis {axis}")
    out = (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1 :])
    check_size(out, node.where)
    if all(isinstance(v, np.ndarray) for v in values):
        return np.concatenate(values, axis=axis)
    if not all(isinstance(v, OnnxTensor) for v in values):
        raise _refuse(node, "concatenates constants with computed tensors (not supported)")
    if len(values) == 1:
        return values[0]
    lead = axis > 0 and all(s[0] == 1 for s in shapes)
    parts = [
        _leading(builder, node, v) if lead else _explicit(builder, v, f"{node.name}.batch{k}")
        for k, v in enumerate(values)
    ]
    dim = axis - 1 if lead else axis
    sizes = tuple(builder.shape(p.node)[dim] for p in parts)
    engine_out = out[1:] if lead else out
    return OnnxTensor(builder.add(node.name, Cat(dim, sizes, engine_out), tuple(p.node for p in parts)), lead)


def _slice_axes(
    builder: NetworkBuilder, node: OnnxNode, x: OnnxTensor, ranges: dict[int, tuple[int, int, int]]
) -> OnnxTensor:
    """``x`` sliced with ``(start, stop, step)`` per ONNX axis (non-negative, clamped, step >= 1)."""
    shape = onnx_shape(builder, x)
    full = [ranges.get(axis, (0, size, 1)) for axis, size in enumerate(shape)]
    if x.lead and full[0][0] >= full[0][1]:  # the batch's 1, sliced to nothing
        raise _refuse(node, f"the slice {full[0][0]}:{full[0][1]} of the batch axis (size 1) is empty")
    engine = full[1:] if x.lead else full  # a leading 1 sliced to its one entry: nothing to do on that axis
    return OnnxTensor(strided_slice(builder, x.node, engine, node.where, node.name), x.lead)


def _slice_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    if node.opset < 10:
        starts, ends = _attr_ints(node, "starts", None), _attr_ints(node, "ends", None)
        axes, steps = _attr_ints(node, "axes", None), None
        if starts is None or ends is None:
            raise _refuse(node, "has no starts or ends")
    else:
        starts = _int_list(node, _constant_input(node, 1, "starts"), "starts")
        ends = _int_list(node, _constant_input(node, 2, "ends"), "ends")
        axes = None if _input(node, 3) is None else _int_list(node, _constant_input(node, 3, "axes"), "axes")
        steps = (
            None if _input(node, 4) is None else _int_list(node, _constant_input(node, 4, "steps"), "steps")
        )
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise _refuse(node, f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    ranges: dict[int, tuple[int, int, int]] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(node, axis, len(shape))
        if axis in ranges:
            raise _refuse(node, f"axes {axes} repeat an axis")
        if step < 1:
            raise _refuse(node, f"step {step}: only positive steps are supported")
        size = shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        ranges[axis] = (min(max(start, 0), size), min(max(end, 0), size), step)
    if isinstance(value, np.ndarray):
        return value[tuple(slice(*ranges.get(a, (None, None, None))) for a in range(len(shape)))]
    return _slice_axes(builder, node, value, ranges)


def _gather_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    indices = _constant_input(node, 1, "indices")
    if indices.dtype.kind not in "iu":
        raise _refuse(node, f"indices of element type {indices.dtype}")
    axis = _axis(node, _attr_int(node, "axis", 0), max(len(shape), 1))
    if not shape:
        raise _refuse(node, "gathers from a scalar")
    size = shape[axis]
    if bool(((indices < -size) | (indices >= size)).any()):
        raise _refuse(node, f"indices {indices.tolist()} are out of range for axis {axis} of size {size}")
    indices = np.where(indices < 0, indices + size, indices).astype(np.int64)
    out = (*shape[:axis], *indices.shape, *shape[axis + 1 :])
    check_size(out, node.where)
    if isinstance(value, np.ndarray):
        return np.take(value, indices, axis=axis)
    flat = indices.reshape(-1)
    step = int(flat[1] - flat[0]) if flat.size > 1 else 1
    if flat.size == 0 or step < 1 or bool((np.diff(flat) != step).any()):
        raise _refuse(
            node,
            f"gathering entries {flat.tolist()} of a computed tensor (only increasing, evenly "
            "spaced indices: a slice)",
        )
    sliced = _slice_axes(builder, node, value, {axis: (int(flat[0]), int(flat[-1]) + 1, step)})
    return _reshaped(builder, attrs.evolve(node, name=f"{node.name}.shape"), sliced, out)


def _shape_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    value = _operand(node)
    shape = onnx_shape(builder, value)
    start, end = _attr_int(node, "start", 0), _attr_int(node, "end", len(shape))
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _size_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    return np.array(math.prod(onnx_shape(builder, _operand(node))), dtype=np.int64)


def _constant_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    if len(node.attributes) != 1:
        raise _refuse(node, f"expects exactly one value attribute, has {sorted(node.attributes)}")
    ((name, value),) = node.attributes.items()
    if name == "value" and isinstance(value, np.ndarray):
        return value
    kinds = {
        "value_float": (float, np.float32),
        "value_int": (int, np.int64),
        "value_floats": (list, np.float32),
        "value_ints": (list, np.int64),
    }
    kind, dtype = kinds.get(name, (None, None))
    if kind is None or not isinstance(value, kind):
        raise _refuse(node, f"attribute {name}={value!r} is not a tensor value")
    return np.array(value, dtype=dtype)


def _constant_of_shape_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    shape = _int_list(node, _constant_input(node, 0, "shape"), "the shape")
    check_size(shape, node.where)
    fill = node.attributes.get("value", np.zeros(1, dtype=np.float32))
    if not isinstance(fill, np.ndarray) or fill.size != 1:
        raise _refuse(node, f"value={fill!r} must be a tensor of one entry")
    return np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)


def _pad_rule(builder: NetworkBuilder, node: OnnxNode) -> Any:
    mode = _attr_str(node, "mode", "constant")
    if mode != "constant":
        raise _refuse(node, f"mode={mode!r} is not supported (only 'constant')")
    value = _operand(node)
    shape = onnx_shape(builder, value)
    if node.opset < 11:
        pads, fill, axes = _attr_ints(node, "pads", None), _attr_float(node, "value", 0.0), None
        if pads is None:
            raise _refuse(node, "has no pads")
    else:
        pads = _int_list(node, _constant_input(node, 1, "pads"), "pads")
        fill_value = _input(node, 2)
        fill = 0.0
        if fill_value is not None:
            fill_array = _numeric(node, _constant_input(node, 2, "constant_value"), "constant_value")
            if fill_array.size != 1:
                raise _refuse(node, "constant_value must be one number")
            fill = float(fill_array.reshape(-1)[0])
        axes = None if _input(node, 3) is None else _int_list(node, _constant_input(node, 3, "axes"), "axes")
    axes = list(range(len(shape))) if axes is None else [_axis(node, a, len(shape)) for a in axes]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        raise _refuse(node, f"pads {pads} do not give a begin and an end for each of the axes {axes}")
    if min(pads, default=0) < 0:
        raise _refuse(node, f"pads {pads}: negative pads (cropping) are not supported")
    amounts = [(0, 0)] * len(shape)
    for k, axis in enumerate(axes):
        amounts[axis] = (pads[k], pads[k + len(axes)])
    out = [size + begin + end for size, (begin, end) in zip(shape, amounts, strict=True)]
    check_size(out, node.where)
    if isinstance(value, np.ndarray):
        return np.pad(value, amounts, constant_values=fill)
    x = _tensor(node, 0, "input")
    if x.lead and amounts[0] != (0, 0):
        x = _explicit(builder, x, f"{node.name}.batch")
    engine = amounts[1:] if x.lead else amounts
    nonzero = [k for k, pair in enumerate(engine) if pair != (0, 0)]
    if not nonzero:
        return x
    torch_pads = tuple(p for begin, end in reversed(engine[nonzero[0] :]) for p in (begin, end))
    return OnnxTensor(pad(builder, x.node, torch_pads, fill, node.where, node.name), x.lead)


_POOL = frozenset({"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"})

#: ONNX node types (default domain) -> rule. A node of another type, or with an attribute its rule
#: does not list, is refused by the reader (:mod:`relaxlab.engine.onnx`) naming the node.
ONNX: dict[str, OnnxRule] = {
    "Add": OnnxRule(_binary_rule("Add")),
    "Sub": OnnxRule(_binary_rule("Sub")),
    "Mul": OnnxRule(_binary_rule("Mul")),
    "Div": OnnxRule(_binary_rule("Div")),
    "Neg": OnnxRule(_neg_rule),
    "Relu": OnnxRule(_relu_rule),
    "MatMul": OnnxRule(_matmul_rule),
    "Gemm": OnnxRule(_gemm_rule, frozenset({"alpha", "beta", "transA", "transB"})),
    "Conv": OnnxRule(
        _conv_rule, frozenset({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    ),
    "AveragePool": OnnxRule(_average_pool_rule, _POOL | {"count_include_pad"}),
    "GlobalAveragePool": OnnxRule(_global_average_pool_rule),
    "MaxPool": OnnxRule(_max_pool_rule, _POOL | {"storage_order"}),
    "BatchNormalization": OnnxRule(
        _batch_norm_rule, frozenset({"epsilon", "momentum", "spatial", "is_test", "training_mode"})
    ),
    "Flatten": OnnxRule(_flatten_rule, frozenset({"axis"})),
    "Reshape": OnnxRule(_reshape_rule, frozenset({"allowzero", "shape"})),
    "Squeeze": OnnxRule(_squeeze_rule, frozenset({"axes"})),
    "Unsqueeze": OnnxRule(_unsqueeze_rule, frozenset({"axes"})),
    "Transpose": OnnxRule(_transpose_rule, frozenset({"perm"})),
    "Concat": OnnxRule(_concat_rule, frozenset({"axis"})),
    "Slice": OnnxRule(_slice_rule, frozenset({"starts", "ends", "axes"})),
    "Gather": OnnxRule(_gather_rule, frozenset({"axis"})),
    "Pad": OnnxRule(_pad_rule, frozenset({"mode", "pads", "value"})),
    "Identity": OnnxRule(_identity_rule),
    "Dropout": OnnxRule(_dropout_rule, frozenset({"ratio", "seed", "is_test"})),
    "Cast": OnnxRule(_cast_rule, frozenset({"to", "saturate"})),
    "Shape": OnnxRule(_shape_rule, frozenset({"start", "end"})),
    "Size": OnnxRule(_size_rule),
    "Constant": OnnxRule(
        _constant_rule, frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"})
    ),
    "ConstantOfShape": OnnxRule(_constant_of_shape_rule, frozenset({"value"})),
}


__all__ = [
    "BATCH",
    "FUNCTIONS",
    "METHODS",
    "MODULES",
    "ONNX",
    "ONNX_MAX_ELEMENTS",
    "ONNX_MAX_POOL_WINDOW",
    "SUPPORTED",
    "NodeRef",
    "OnnxNode",
    "OnnxRule",
    "OnnxTensor",
    "add_constant",
    "batch_norm",
    "check_finite",
    "check_size",
    "conv",
    "linear",
    "max_of",
    "module_rule",
    "normalization",
    "onnx_shape",
]
