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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    values = tensor.detach()
    if bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all()):
        return
    bad = int((~torch.isfinite(values)).sum())
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


def linear(builder: NetworkBuilder, source: int, weight: Tensor, bias: Tensor | None, where: str, name: str) -> int:
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
    op = Linear(builder.cast(weight), None if bias is None else builder.cast(bias), shape, (*shape[:-1], out_features))
    return builder.add(name, op, (source,))


def _linear_module(builder: NetworkBuilder, module: nn.Linear, source: int, where: str, name: str) -> int:
    return linear(builder, source, module.weight, module.bias, f"{where} (Linear)", name)


def conv(builder: NetworkBuilder, source: int, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
         padding: tuple[int, int], groups: int, where: str, name: str) -> int:
    """A 2-d convolution with symmetric zero padding."""
    shape = builder.shape(source)
    out_channels, per_group, k_h, k_w = weight.shape
    if len(shape) != 3 or shape[0] != per_group * groups:
        raise UnsupportedNetworkError(
            f"{where} expects inputs of shape ({per_group * groups}, H, W) but receives {shape}; check the input "
            "shape or the layer order"
        )
    if min(*stride) < 1 or min(*padding) < 0:
        raise UnsupportedNetworkError(f"{where}: stride {stride} and padding {padding} must be positive / non-negative")
    out_h = (shape[1] + 2 * padding[0] - k_h) // stride[0] + 1
    out_w = (shape[2] + 2 * padding[1] - k_w) // stride[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise UnsupportedNetworkError(f"{where} kernel {(k_h, k_w)} does not fit the input {shape}")
    check_finite(weight, f"{where} weight")
    if bias is not None:
        check_finite(bias, f"{where} bias")
    op = Conv(builder.cast(weight), None if bias is None else builder.cast(bias), stride, padding, groups, shape,
              (out_channels, out_h, out_w))
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
            raise _unsupported(where, "padding='same' with an even kernel or a stride; give explicit integer padding")
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
        raise UnsupportedNetworkError(f"{where}: flattening the batch dimension is not supported; use start_dim=1")
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


def _unflatten_module(builder: NetworkBuilder, module: nn.Unflatten, source: int, where: str, name: str) -> int:
    shape = builder.shape(source)
    dim = module.dim - 1 if module.dim > 0 else module.dim % (len(shape) + 1) - 1
    sizes = tuple(int(s) for s in module.unflattened_size)
    if dim < 0 or math.prod(sizes) != shape[dim]:
        raise UnsupportedNetworkError(f"{where} (Unflatten): cannot unflatten {shape} at dim {module.dim} to {sizes}")
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
    try:
        result = torch.broadcast_shapes(tuple(constant.shape), shape)
    except RuntimeError:
        result = None
    if result != shape:
        raise UnsupportedNetworkError(
            f"{where}: a constant of shape {tuple(constant.shape)} does not broadcast onto inputs of shape {shape} "
            "without changing their shape; only such constants are supported"
        )


def _normalize_module(builder: NetworkBuilder, module: Normalize, source: int, where: str, name: str) -> int:
    where = f"{where} (Normalize)"
    shape = builder.shape(source)
    mean, std = module.mean.reshape(-1), module.std.reshape(-1)
    channels = shape[0] if shape else 1
    if mean.numel() not in (1, channels):
        raise UnsupportedNetworkError(f"{where} has {mean.numel()} channels but its input {shape} has {channels}")
    check_finite(mean, f"{where} mean")
    check_finite(std, f"{where} std")
    view = (-1, *([1] * (len(shape) - 1))) if mean.numel() > 1 else (1,) * max(len(shape), 1)
    shifted = shift(builder, source, -mean.reshape(view), where, f"{name}.mean")
    return scale(builder, shifted, std.reshape(view), True, where, name)


def batch_norm(builder: NetworkBuilder, module: nn.modules.batchnorm._BatchNorm, source: int, where: str,
               name: str) -> int:
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
        mean, var = builder.cast(module.running_mean), builder.cast(module.running_var)  # type: ignore[arg-type]
    weight = builder.cast(module.weight) if module.weight is not None else torch.ones_like(mean)
    bias = builder.cast(module.bias) if module.bias is not None else torch.zeros_like(mean)
    factor = weight / torch.sqrt(var + module.eps)
    offset = bias - mean * factor
    for tensor, what in ((factor, "scale (weight / sqrt(var + eps))"), (offset, "shift")):
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise UnsupportedNetworkError(f"{where} {what} contains NaN/inf values")
    scaled = builder.add(f"{name}.scale", Scale(channel_view(factor, shape), False, shape), (source,))
    return builder.add(name, Shift(channel_view(offset, shape), shape), (scaled,))


def _pool_geometry(shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   where: str) -> tuple[int, int]:
    if len(shape) != 3:
        raise UnsupportedNetworkError(f"{where} expects (C, H, W) inputs, receives {shape}")
    out_h = (shape[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (shape[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if out_h <= 0 or out_w <= 0 or min(*stride) < 1:
        raise UnsupportedNetworkError(f"{where} kernel {kernel} does not fit the input {shape}")
    return out_h, out_w


def avg_pool(builder: NetworkBuilder, source: int, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], divisor: int, where: str, name: str) -> int:
    """Average pooling as a depthwise convolution with the fixed kernel ``1/divisor``."""
    shape = builder.shape(source)
    _pool_geometry(shape, kernel, stride, padding, where)
    weight = torch.full((shape[0], 1, *kernel), 1.0 / divisor, dtype=builder.default_dtype)
    return conv(builder, source, weight, None, stride, padding, shape[0], where, name)


def _avg_pool_module(builder: NetworkBuilder, module: nn.AvgPool2d, source: int, where: str, name: str) -> int:
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


def max_pool(builder: NetworkBuilder, source: int, kernel: tuple[int, int], stride: tuple[int, int],
             where: str, name: str) -> int:
    """Max pooling without padding: one strided selection per window entry, then :func:`max_of`."""
    shape = builder.shape(source)
    out_h, out_w = _pool_geometry(shape, kernel, stride, (0, 0), where)
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            starts = (0, i, j)
            stops = (shape[0], i + (out_h - 1) * stride[0] + 1, j + (out_w - 1) * stride[1] + 1)
            steps = (1, stride[0], stride[1])
            taps.append(builder.add(f"{name}.tap{i}_{j}", Slice(starts, stops, steps, shape,
                                                                (shape[0], out_h, out_w)), (source,)))
    if len(taps) == 1:
        return taps[0]
    return max_of(builder, taps, name)


def _max_pool_module(builder: NetworkBuilder, module: nn.MaxPool2d, source: int, where: str, name: str) -> int:
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


def pad(builder: NetworkBuilder, source: int, pads: tuple[int, ...], value: float, where: str, name: str) -> int:
    """Constant padding (``F.pad`` order: last dimension first), non-negative amounts."""
    shape = builder.shape(source)
    if len(pads) % 2 or len(pads) // 2 > len(shape) or any(p < 0 for p in pads):
        raise UnsupportedNetworkError(f"{where}: pads {pads} must be non-negative pairs over the input's {shape}")
    if not math.isfinite(value):
        raise UnsupportedNetworkError(f"{where}: padding value {value} is not finite")
    out = list(shape)
    for k in range(len(pads) // 2):
        out[-1 - k] += pads[2 * k] + pads[2 * k + 1]
    if not any(pads):
        return source
    return builder.add(name, Pad(tuple(pads), float(value), shape, tuple(out)), (source,))


def _pad_module(builder: NetworkBuilder, module: nn.modules.padding._ConstantPadNd, source: int, where: str,
                name: str) -> int:
    return pad(builder, source, tuple(int(p) for p in module.padding), float(module.value),
               f"{where} ({type(module).__name__})", name)


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


def _relu_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    return NodeRef(relu(builder, _tensor_arg(args[0], where), name))


def _sum_call(sign: float) -> CallRule:
    def rule(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
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
            scaled = b if factor == 1.0 else scale(builder, b, _constant(builder, factor), False, where, f"{name}.neg")
            return NodeRef(shift(builder, scaled, _constant(builder, float(a)), where, name))
        raise UnsupportedNetworkError(f"{where}: operands {a!r}, {b!r}: only tensors from the input and finite numbers")

    return rule


def _mul_call(divide: bool) -> CallRule:
    def rule(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
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


def _neg_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    return NodeRef(scale(builder, _tensor_arg(args[0], where), _constant(builder, -1.0), False, where, name))


def _cat_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    parts = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    sources = [_tensor_arg(v, where) for v in parts]
    shapes = [builder.shape(s) for s in sources]
    ndim = len(shapes[0]) + 1
    if not isinstance(dim, int) or not -ndim <= dim < ndim or dim % ndim == 0:
        raise UnsupportedNetworkError(f"{where}: concatenation along dim={dim} (the batch) is not supported")
    axis = dim % ndim - 1
    if any(len(s) != len(shapes[0]) or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
           for s in shapes):
        raise UnsupportedNetworkError(f"{where}: concatenates tensors of shapes {shapes} along dim {dim}")
    sizes = tuple(s[axis] for s in shapes)
    out = (*shapes[0][:axis], sum(sizes), *shapes[0][axis + 1:])
    if len(sources) == 1:
        return sources[0]
    return NodeRef(builder.add(name, Cat(axis, sizes, out), tuple(sources)))


def _flatten_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
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


def _reshape_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    source = _tensor_arg(args[0], where)
    target = list(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else list(args[1:])
    if not target and "shape" in kwargs:
        target = list(kwargs["shape"])
    return NodeRef(reshape(builder, source, _reshape_target(builder.shape(source), target, where), name))


def _permute_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
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


def _transpose_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str,
                    name: str) -> Any:
    source = _tensor_arg(args[0], where)
    ndim = len(builder.shape(source)) + 1
    a, b = (args[1], args[2]) if len(args) == 3 else (kwargs.get("dim0"), kwargs.get("dim1"))
    if not (isinstance(a, int) and isinstance(b, int)) or 0 in (a % ndim, b % ndim):
        raise UnsupportedNetworkError(f"{where}: transpose({a}, {b}) must keep the batch dimension first")
    order = list(range(ndim))
    order[a % ndim], order[b % ndim] = order[b % ndim], order[a % ndim]
    return NodeRef(transpose(builder, source, tuple(d - 1 for d in order[1:]), name))


def _squeeze_call(unsqueeze: bool) -> CallRule:
    def rule(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
        source = _tensor_arg(args[0], where)
        shape = list(builder.shape(source))
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        ndim = len(shape) + 1 + (1 if unsqueeze else 0)
        if not isinstance(dim, int) or dim % ndim == 0:
            raise UnsupportedNetworkError(f"{where}: {'un' if unsqueeze else ''}squeeze(dim={dim!r}) must name a "
                                          "per-example dimension")
        axis = dim % ndim - 1
        if unsqueeze:
            shape.insert(axis, 1)
        elif shape[axis] == 1:
            shape.pop(axis)
        return NodeRef(reshape(builder, source, tuple(shape), name))

    return rule


def _same_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    return _tensor_arg(args[0], where)


def _size_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    full = (BATCH, *builder.shape(_tensor_arg(args[0], where)))
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return full if dim is None else full[dim]


def _getitem_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
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
    if not keys or keys[0] != slice(None) or len(keys) - 1 > len(shape) or \
            any(not isinstance(k, slice) and k is not Ellipsis for k in keys):
        raise UnsupportedNetworkError(f"{where}: only slicing that keeps the batch dimension is supported (x[:, a:b])")
    rest = list(keys[1:])
    if Ellipsis in rest:
        at = rest.index(Ellipsis)
        rest = rest[:at] + [slice(None)] * (len(shape) - len(rest) + 1) + rest[at + 1:]
    rest += [slice(None)] * (len(shape) - len(rest))
    starts, stops, steps, out = [], [], [], []
    for size, piece in zip(shape, rest, strict=True):
        start, stop, step = piece.indices(size)
        if step < 1:
            raise UnsupportedNetworkError(f"{where}: negative slice steps are not supported")
        count = max(0, (stop - start + step - 1) // step)
        if count == 0:
            raise UnsupportedNetworkError(f"{where}: the slice {piece} of a dimension of size {size} is empty")
        starts.append(start)
        stops.append(stop)
        steps.append(step)
        out.append(count)
    if tuple(out) == shape:
        return source
    return builder.add(name, Slice(tuple(starts), tuple(stops), tuple(steps), shape, tuple(out)), (source,))


def _getattr_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    value, attribute = args[0], args[1]
    if isinstance(value, NodeRef) and attribute == "shape":
        return (BATCH, *builder.shape(value))
    raise UnsupportedNetworkError(f"{where}: attribute {attribute!r} is not supported")


def _pool_args(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    values = dict(zip(names, args[1:], strict=False))
    values.update(kwargs)
    return values


def _max_pool_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    source = _tensor_arg(args[0], where)
    options = _pool_args(args, kwargs, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))
    kernel = _pair(options["kernel_size"], "kernel_size", where)
    stride = _pair(options.get("stride") or options["kernel_size"], "stride", where)
    if _pair(options.get("padding", 0), "padding", where) != (0, 0) or \
            _pair(options.get("dilation", 1), "dilation", where) != (1, 1) or options.get("ceil_mode") or \
            options.get("return_indices"):
        raise UnsupportedNetworkError(f"{where}: max pooling with padding, dilation, ceil_mode or indices is not supported")
    return NodeRef(max_pool(builder, source, kernel, stride, where, name))


def _avg_pool_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    source = _tensor_arg(args[0], where)
    options = _pool_args(args, kwargs, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                        "divisor_override"))
    kernel = _pair(options["kernel_size"], "kernel_size", where)
    stride = _pair(options.get("stride") or options["kernel_size"], "stride", where)
    padding = _pair(options.get("padding", 0), "padding", where)
    if options.get("ceil_mode") or (options.get("count_include_pad", True) is False and padding != (0, 0)):
        raise UnsupportedNetworkError(f"{where}: ceil_mode, or count_include_pad=False with padding, is not supported")
    divisor = options.get("divisor_override") or kernel[0] * kernel[1]
    return NodeRef(avg_pool(builder, source, kernel, stride, padding, divisor, where, name))


def _pad_call(builder: NetworkBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, name: str) -> Any:
    source = _tensor_arg(args[0], where)
    options = _pool_args(args, kwargs, ("pad", "mode", "value"))
    if options.get("mode", "constant") != "constant":
        raise UnsupportedNetworkError(f"{where}: padding mode {options['mode']!r} (only 'constant')")
    value = options.get("value")
    return NodeRef(pad(builder, source, tuple(int(p) for p in options["pad"]), 0.0 if value is None else float(value),
                       where, name))


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
VIEW_FUNCTIONS = frozenset({torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                            torch.unsqueeze, operator.getitem})


__all__ = [
    "BATCH",
    "FUNCTIONS",
    "METHODS",
    "MODULES",
    "NodeRef",
    "SUPPORTED",
    "batch_norm",
    "check_finite",
    "conv",
    "linear",
    "max_of",
    "module_rule",
]
