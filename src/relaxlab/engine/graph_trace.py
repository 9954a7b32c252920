"""Trace a module with ``torch.fx`` into a :class:`~relaxlab.engine.graph.GraphNetwork`.

Supported (anything else is refused with :class:`UnsupportedNetworkError` naming the op and
the node):

- modules ``Linear``, ``Conv2d`` (zero padding, dilation 1, any stride and groups),
  ``BatchNorm1d``/``BatchNorm2d`` (eval mode with running statistics: ``x·scale + shift``
  per channel; otherwise the clean batch's statistics make it that affine layer),
  ``AvgPool2d`` (a depthwise convolution with kernel ``1/(k_h·k_w)``; no ``ceil_mode``, and
  ``count_include_pad`` unless there is no padding), ``Flatten``, ``ReLU``,
  :class:`relaxlab.nn.Normalize`, ``Identity``, ``Dropout`` (eval mode or ``p = 0``);
- functions ``F.relu``/``torch.relu``/``.relu()``, ``+`` / ``torch.add`` of two tensors
  (residual connections, ``+=`` included), ``torch.cat(..., dim=1)``, ``torch.flatten``,
  ``.view``/``.reshape``/``.flatten`` that keep the batch dimension first, ``.size()``/``.shape``
  (for computing a shape), ``.contiguous()``.

A subclass of a supported module that overrides ``forward`` is not taken for its base class:
``fx`` traces into its ``forward``, and only what that trace contains is bounded (an
unsupported op inside is refused naming the module).

Single-layer modules are converted by the chain parser (:func:`relaxlab.engine.network.parse_network`),
so the checks (shapes, NaN/inf weights) and the layer objects are the chain engine's.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.engine.graph import GraphNetwork, GraphNode
from relaxlab.engine.graph_layers import (
    AddNode,
    CatNode,
    ChannelAffineLayer,
    GroupConvLayer,
    InputNode,
    channel_view,
)
from relaxlab.engine.network import (
    FlattenLayer,
    ReluLayer,
    UnsupportedNetworkError,
    check_hooks,
    overrides_forward,
    parse_network,
)
from relaxlab.nn import Normalize

Shape = tuple[int, ...]

#: Modules the graph engine converts itself (fx keeps them as leaves unless they override forward).
_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.ReLU,
    Normalize,
    nn.Identity,
    nn.Dropout,
)
_SUPPORTED = (
    "Linear, Conv2d, BatchNorm1d/2d, AvgPool2d, Flatten/view/reshape, ReLU, relaxlab.nn.Normalize, "
    "Identity, Dropout, + of two branches and torch.cat along channels"
)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)


def _leaf_base(module: nn.Module) -> type[nn.Module] | None:
    """The supported type ``module`` is an unmodified instance of, if any."""
    for base in _LEAVES:
        if isinstance(module, base):
            return None if overrides_forward(module, base) else base
    return None


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _LEAVES):
            return _leaf_base(m) is not None
        return super().is_leaf_module(m, module_qualified_name)


class _Batch:
    """The batch dimension, as ``x.size(0)`` gives it while tracing."""

    def __repr__(self) -> str:
        return "batch"


BATCH = _Batch()


def _module_context(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    name = getattr(kind, "__name__", str(kind))
    return f" inside model.{path} ({name}, traced into its forward)"


def _function_name(target: Any) -> str:
    if isinstance(target, str):
        return f".{target}()"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name


class _Builder:
    """Converts fx nodes one by one, keeping the node list, shapes and (optionally) clean values."""

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype | None,
        device: torch.device | None,
        clean: Tensor | None,
    ) -> None:
        self.model = model
        self.dtype = dtype
        self.device = device
        self.clean = clean
        self.nodes: list[GraphNode] = []
        self.clean_values: list[Tensor] = []

    def cast(self, tensor: Tensor) -> Tensor:
        return tensor.to(dtype=self.dtype if self.dtype is not None else tensor.dtype, device=self.device)

    def add(self, name: str, op: object, inputs: tuple[int, ...]) -> int:
        self.nodes.append(GraphNode(name, op, inputs))
        if self.clean is not None:
            if isinstance(op, InputNode):
                value = self.clean
            else:
                value = op.forward(*(self.clean_values[i] for i in inputs))  # type: ignore[attr-defined]
            self.clean_values.append(value)
        return len(self.nodes) - 1

    def shape(self, index: int) -> Shape:
        return self.nodes[index].out_shape

    # -- modules -------------------------------------------------------------------------------

    def module(self, node: torch.fx.Node, where: str, source: int) -> int:
        module = self.model.get_submodule(str(node.target))
        kind = type(module).__name__
        where = f"{where} (model.{node.target}) ({kind})"
        base = _leaf_base(module)
        shape = self.shape(source)
        if base is None:
            raise UnsupportedNetworkError(
                f"{where} is not supported: this module type has no bound propagation rule. "
                f"The graph engine accepts {_SUPPORTED}."
            )
        if base in (nn.Identity,):
            return source
        if base is nn.Dropout:
            if module.training and module.p > 0:  # type: ignore[operator]
                raise UnsupportedNetworkError(
                    f"{where} is random in training mode; bound the network in eval mode (model.eval())"
                )
            return source
        if base in (nn.BatchNorm1d, nn.BatchNorm2d):
            return self.add(str(node.target), self.batch_norm(module, shape, where, source), (source,))
        if base is nn.AvgPool2d:
            return self.add(str(node.target), self.avg_pool(module, shape, where), (source,))
        if base is nn.Conv2d and module.groups != 1:  # type: ignore[union-attr]
            return self.add(str(node.target), self.group_conv(module, shape, where), (source,))
        if base is nn.Flatten and (module.start_dim, module.end_dim) != (1, -1):  # type: ignore[union-attr]
            return self.add(
                str(node.target), self.flatten(shape, module.start_dim, module.end_dim, where), (source,)
            )  # type: ignore[arg-type]
        # Linear, Conv2d, Flatten(1, -1), ReLU, Normalize: the chain parser's layer and checks.
        try:
            chain = parse_network(nn.Sequential(module), shape, dtype=self.dtype, device=self.device)
        except UnsupportedNetworkError as error:
            message = str(error).replace(f"layer 0 (model.0) ({kind})", where)
            raise UnsupportedNetworkError(message) from None
        return self.add(str(node.target), chain.layers[0], (source,))

    def batch_norm(self, module: nn.Module, shape: Shape, where: str, source: int) -> ChannelAffineLayer:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        expected = 1 if isinstance(module, nn.BatchNorm1d) else 3
        if len(shape) not in ((1, 2) if expected == 1 else (3,)) or shape[0] != module.num_features:
            raise UnsupportedNetworkError(
                f"{where} expects {module.num_features} channels (dimension 1) but receives inputs of shape "
                f"{shape}"
            )
        uses_batch = module.training or module.running_mean is None
        if uses_batch:
            if self.clean is None:
                raise UnsupportedNetworkError(
                    f"{where} normalises with batch statistics (train mode); give the clean batch "
                    "(compute_bounds does) or call model.eval()"
                )
            value = self.clean_values[source]
            dims = [0, *range(2, value.dim())]
            mean = value.mean(dim=dims)
            var = value.var(dim=dims, unbiased=False)
        else:
            mean, var = self.cast(module.running_mean), self.cast(module.running_var)  # type: ignore[arg-type]
        weight = self.cast(module.weight) if module.weight is not None else torch.ones_like(mean)
        bias = self.cast(module.bias) if module.bias is not None else torch.zeros_like(mean)
        scale = weight / torch.sqrt(var + module.eps)
        shift = bias - mean * scale
        for tensor, what in ((scale, "scale (weight / sqrt(var + eps))"), (shift, "shift")):
            if not bool(torch.isfinite(tensor.detach()).all()):
                raise UnsupportedNetworkError(f"{where} {what} contains NaN/inf values")
        return ChannelAffineLayer(channel_view(scale, shape), channel_view(shift, shape), shape, shape)

    def avg_pool(self, module: nn.Module, shape: Shape, where: str) -> GroupConvLayer:
        assert isinstance(module, nn.AvgPool2d)

        def pair(value: Any) -> tuple[int, int]:
            return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))

        kernel = pair(module.kernel_size)
        stride = pair(module.stride if module.stride is not None else module.kernel_size)
        padding = pair(module.padding)
        if module.ceil_mode:
            raise UnsupportedNetworkError(f"{where}: ceil_mode=True is not supported")
        if not module.count_include_pad and padding != (0, 0):
            raise UnsupportedNetworkError(f"{where}: count_include_pad=False with padding is not supported")
        if len(shape) != 3:
            raise UnsupportedNetworkError(f"{where} expects (C, H, W) inputs, receives {shape}")
        channels, height, width = shape
        out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
        out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
        if out_h <= 0 or out_w <= 0:
            raise UnsupportedNetworkError(f"{where} kernel {kernel} does not fit the input {shape}")
        divisor = module.divisor_override or kernel[0] * kernel[1]
        reference = next(self.model.parameters(), None)
        dtype = self.dtype or (reference.dtype if reference is not None else torch.get_default_dtype())
        device = self.device or (reference.device if reference is not None else None)
        weight = torch.full((channels, 1, *kernel), 1.0 / divisor, dtype=dtype, device=device)
        return GroupConvLayer(weight, None, stride, padding, channels, shape, (channels, out_h, out_w))

    def group_conv(self, module: nn.Module, shape: Shape, where: str) -> GroupConvLayer:
        assert isinstance(module, nn.Conv2d)
        # The chain parser checks everything but groups: let it check a groups=1 twin of the shapes.
        twin = nn.Conv2d(
            shape[0] if len(shape) == 3 else module.in_channels,
            module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            module.stride,  # type: ignore[arg-type]
            module.padding,  # type: ignore[arg-type]
            module.dilation,  # type: ignore[arg-type]
            bias=False,
            padding_mode=module.padding_mode,
        )
        if len(shape) != 3 or shape[0] != module.in_channels:
            raise UnsupportedNetworkError(
                f"{where} expects inputs of shape ({module.in_channels}, H, W) but receives {shape}"
            )
        try:
            layer = parse_network(nn.Sequential(twin), shape).layers[0]
        except UnsupportedNetworkError as error:
            message = str(error).replace("layer 0 (model.0) (Conv2d)", where)
            raise UnsupportedNetworkError(message) from None
        for tensor, what in ((module.weight, "weight"), (module.bias, "bias")):
            if tensor is not None and not bool(torch.isfinite(tensor.detach()).all()):
                raise UnsupportedNetworkError(f"{where} {what} contains NaN/inf values")
        return GroupConvLayer(
            self.cast(module.weight),
            None if module.bias is None else self.cast(module.bias),
            layer.stride,  # type: ignore[union-attr]
            layer.padding,  # type: ignore[union-attr]
            module.groups,
            shape,
            layer.out_shape,
        )

    # -- reshapes ------------------------------------------------------------------------------

    def flatten(self, shape: Shape, start: int, end: int, where: str) -> FlattenLayer:
        """``flatten(start_dim, end_dim)`` on batched tensors (dimension 0 is the batch)."""
        full = (None, *shape)
        ndim = len(full)
        start, end = start % ndim, end % ndim
        if start == 0:
            raise UnsupportedNetworkError(f"{where}: flattening the batch dimension is not supported")
        out = (*shape[: start - 1], math.prod(shape[start - 1 : end]), *shape[end:])
        return FlattenLayer(shape, out)

    def reshape(self, shape: Shape, target: list[Any], where: str) -> FlattenLayer:
        """``view``/``reshape`` to ``target`` whose first entry is the batch (``x.size(0)`` or ``-1``)."""
        numel = math.prod(shape)
        first, rest = (target[0], target[1:]) if target else (None, [])
        if any(type(v) is not int for v in rest):
            raise UnsupportedNetworkError(
                f"{where}: reshape to {target}: only the first entry may be the batch"
            )
        if first is BATCH:
            known = math.prod(v for v in rest if v != -1)
            if rest.count(-1) > 1 or (rest.count(-1) == 0 and known != numel) or known == 0 or numel % known:
                raise UnsupportedNetworkError(f"{where}: cannot reshape {shape} per example to {target}")
            out = tuple(numel // known if v == -1 else v for v in rest)
        elif first == -1 and -1 not in rest and math.prod(rest) == numel:
            out = tuple(rest)
        else:
            raise UnsupportedNetworkError(
                f"{where}: reshape to {target} does not keep the batch dimension first; use "
                "x.view(x.size(0), ...) or x.flatten(1)"
            )
        return FlattenLayer(shape, out)


def _resolve(env: dict[torch.fx.Node, Any], value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return env[value]
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(env, v) for v in value)
    return value


class _Tensor(int):
    """A node index in the :class:`GraphNetwork` (distinguished from plain ints of shapes)."""


def parse_graph(
    model: nn.Module,
    input_shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    clean: Tensor | None = None,
) -> GraphNetwork:
    """Trace ``model`` with ``torch.fx`` and convert it into a :class:`GraphNetwork`.

    :param model: any ``nn.Module`` that ``torch.fx`` can trace (no data-dependent control flow).
    :param input_shape: shape of one input, without the batch dimension.
    :param dtype: dtype to compute in (weights are cast, differentiably); default: the weights'.
    :param device: device to compute on; default: the weights'.
    :param clean: ``(B, *input_shape)`` clean batch for ``BatchNorm`` layers that use batch
        statistics (train mode); its values are computed through the graph as it is built.
    :raises UnsupportedNetworkError: naming the node and op that cannot be bounded.
    """
    check_hooks(model)  # fx traces forward() only: hooks would be silently left out
    shape: Shape = tuple(int(s) for s in input_shape)
    try:
        graph = _Tracer().trace(model)
    except UnsupportedNetworkError:
        raise
    except Exception as error:  # fx raises TraceError, TypeError, ... on data-dependent code
        raise UnsupportedNetworkError(
            f"{type(model).__name__} cannot be traced with torch.fx ({type(error).__name__}: {error}); "
            "the engine bounds nn.Sequential chains and fx-traceable modules"
        ) from error
    batch_statistics = any(
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and (module.training or module.running_mean is None)
        for module in model.modules()
    )
    if not batch_statistics:
        clean = None  # no layer needs the clean values
    elif clean is not None:
        clean = clean.to(dtype=dtype if dtype is not None else clean.dtype, device=device)
    builder = _Builder(model, dtype, device, clean)
    env: dict[torch.fx.Node, Any] = {}
    output: Any = None
    for node in graph.nodes:
        where = f"node {node.name!r}"
        if node.op == "placeholder":
            if builder.nodes:
                raise UnsupportedNetworkError(f"{where}: the network must take exactly one input")
            env[node] = _Tensor(builder.add("input", InputNode(shape), ()))
        elif node.op == "output":
            output = _resolve(env, node.args[0])
        elif node.op == "get_attr":
            raise UnsupportedNetworkError(
                f"{where}{_module_context(node)} reads the tensor model.{node.target} inside forward; "
                f"only modules and functions on the input are supported ({_SUPPORTED})"
            )
        else:
            env[node] = _convert(
                builder, node, where, _resolve(env, node.args), _resolve(env, dict(node.kwargs))
            )
    if not isinstance(output, _Tensor):
        raise UnsupportedNetworkError("the network must return one tensor")
    if int(output) == 0:
        raise UnsupportedNetworkError("the network has no layers; give at least one Linear or Conv2d layer")
    if int(output) != len(builder.nodes) - 1:
        raise UnsupportedNetworkError("the network's output must be its last computed node")
    return GraphNetwork(tuple(builder.nodes), shape)


def _tensor_arg(value: Any, where: str) -> _Tensor:
    if not isinstance(value, _Tensor):
        raise UnsupportedNetworkError(
            f"{where}: operand {value!r} is not a tensor computed from the input (constants are not supported)"
        )
    return value


def _convert(builder: _Builder, node: torch.fx.Node, where: str, args: Any, kwargs: dict[str, Any]) -> Any:
    target = node.target
    if node.op == "call_module":
        return _Tensor(builder.module(node, where, _tensor_arg(args[0], where)))
    context = _module_context(node)
    label = f"{where} ({_function_name(target)}){context}"
    if node.op == "call_method":
        return _method(builder, node.name, str(target), label, args, kwargs)
    handler = _FUNCTIONS.get(target)  # type: ignore[arg-type]
    if handler is None:
        raise UnsupportedNetworkError(
            f"{label} is not supported: no bound propagation rule. The graph engine accepts {_SUPPORTED}."
        )
    return handler(builder, label, node.name, args, kwargs)


def _relu(builder: _Builder, label: str, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    source = _tensor_arg(args[0], label)
    shape = builder.shape(source)
    return _Tensor(builder.add(name, ReluLayer(shape, shape), (source,)))


def _add(builder: _Builder, label: str, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    if len(args) != 2 or set(kwargs) - {"alpha"} or kwargs.get("alpha", 1) != 1:
        raise UnsupportedNetworkError(f"{label}: only the plain sum of two tensors is supported")
    a, b = (_tensor_arg(v, label) for v in args)
    if builder.shape(a) != builder.shape(b):
        raise UnsupportedNetworkError(
            f"{label}: adds shapes {builder.shape(a)} and {builder.shape(b)}; broadcasting is not supported"
        )
    return _Tensor(builder.add(name, AddNode(builder.shape(a)), (a, b)))


def _cat(builder: _Builder, label: str, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    parts = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    sources = [_tensor_arg(v, label) for v in parts]
    shapes = [builder.shape(s) for s in sources]
    if dim not in (1, 1 - (len(shapes[0]) + 1)) or any(s[1:] != shapes[0][1:] for s in shapes):
        raise UnsupportedNetworkError(
            f"{label}: only concatenation along dimension 1 (channels) of equal-shaped tensors is "
            f"supported (dim={dim}, shapes {shapes})"
        )
    sizes = tuple(s[0] for s in shapes)
    out = (sum(sizes), *shapes[0][1:])
    return _Tensor(builder.add(name, CatNode(sizes, out), tuple(sources)))


def _flatten(builder: _Builder, label: str, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    source = _tensor_arg(args[0], label)
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return _Tensor(builder.add(name, builder.flatten(builder.shape(source), start, end, label), (source,)))


def _getitem(builder: _Builder, label: str, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    container, key = args
    if isinstance(container, (tuple, list)):
        return container[key]
    raise UnsupportedNetworkError(f"{label}: indexing a tensor is not supported")


def _getattr(builder: _Builder, label: str, name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    value, attribute = args[0], args[1]
    if isinstance(value, _Tensor) and attribute == "shape":
        return (BATCH, *builder.shape(value))
    raise UnsupportedNetworkError(f"{label}: attribute {attribute!r} is not supported")


_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    **{function: _relu for function in _RELU_FUNCTIONS},
    **{function: _add for function in _ADD_FUNCTIONS},
    **{function: _cat for function in _CAT_FUNCTIONS},
    torch.flatten: _flatten,
    operator.getitem: _getitem,
    getattr: _getattr,
}


def _method(builder: _Builder, name: str, method: str, label: str, args: Any, kwargs: dict[str, Any]) -> Any:
    source = _tensor_arg(args[0], label)
    shape = builder.shape(source)
    if method in ("relu", "relu_"):
        return _relu(builder, label, name, args, kwargs)
    if method == "contiguous":
        return source
    if method == "size":
        full = (BATCH, *shape)
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        return full if dim is None else full[dim]
    if method == "flatten":
        return _flatten(builder, label, name, args, kwargs)
    if method in ("view", "reshape"):
        target = list(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else list(args[1:])
        return _Tensor(builder.add(name, builder.reshape(shape, target, label), (source,)))
    raise UnsupportedNetworkError(
        f"{label} is not supported: no bound propagation rule. The graph engine accepts {_SUPPORTED}."
    )
