"""Load an ONNX model made of the engine's operations as a torch ``nn.Sequential``.

Verification users exchange networks as ONNX files (VNN-COMP style). A *chain* (every node
consumes the previous node's output plus constant weights) becomes an ``nn.Sequential``; any
other graph goes to :mod:`relaxlab.engine.onnx_graph` (adds ``BatchNormalization``,
``AveragePool``, ``Add`` of two branches and ``Concat``). Supported operations of a chain:

- ``Gemm`` (``transA = 0``) and ``MatMul`` followed by an optional ``Add`` of a
  bias: ``nn.Linear``;
- ``Conv`` (2-d, symmetric padding, dilation 1, one group): ``nn.Conv2d``;
- ``Relu``: ``nn.ReLU``;
- ``Flatten`` (``axis = 1``) and ``Reshape`` to ``(batch, -1)``: ``nn.Flatten``;
- ``Sub`` / ``Div`` / ``Add`` / ``Mul`` by a per-channel constant (input
  normalisation): :class:`relaxlab.nn.Normalize`, consecutive ones merged;
- ``Identity`` and ``Dropout`` (inference): skipped; ``Constant`` nodes supply values.

Anything else is refused with an error naming the node, its index and its type.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from relaxlab.engine.network import UnsupportedNetworkError
from relaxlab.nn import Normalize


class OnnxLoadError(UnsupportedNetworkError):
    """An ONNX file the loader cannot turn into an ``nn.Sequential``."""


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _where(index: int, node: Any) -> str:
    label = f" {node.name!r}" if node.name else ""
    return f"ONNX node {index}{label} ({node.op_type})"


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """``nn.Linear`` with ``weight`` of shape ``(out, in)``."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, dtype=torch.float32)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
        if bias is not None:
            layer.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32).reshape(-1)))
    return layer


def _channel_vector(value: np.ndarray, where: str) -> np.ndarray:
    """A per-channel constant ``(C,)`` from shapes like ``()``, ``(C,)``, ``(1, C, 1, 1)``, ``(C, 1, 1)``."""
    squeezed = np.asarray(value, dtype=np.float64)
    if squeezed.size == 1:
        return squeezed.reshape(1)
    shape = squeezed.shape
    if len(shape) == 4 and shape[0] == 1 and shape[2] == 1 and shape[3] == 1:
        return squeezed.reshape(-1)
    if len(shape) == 3 and shape[1] == 1 and shape[2] == 1:
        return squeezed.reshape(-1)
    if len(shape) == 2 and shape[0] == 1:
        return squeezed.reshape(-1)
    if len(shape) == 1:
        return squeezed
    raise OnnxLoadError(
        f"{where}: constant of shape {shape} is not per-channel (expected (), (C,), (C,1,1) or (1,C,1,1))"
    )


def load_onnx(path: str | os.PathLike[str]) -> nn.Module:
    """Read an ONNX model and rebuild it as an ``nn.Sequential`` the engine accepts, or, when the
    nodes form a DAG (residual ``Add``, ``Concat``), as an :class:`~relaxlab.engine.onnx_graph.OnnxGraph`.

    :param path: the ``.onnx`` file.
    :return: the network (float32 weights, eval mode).
    :raises OnnxLoadError: for a file with unsupported operations.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(os.fspath(path))
    except Exception as error:  # onnx raises DecodeError and friends
        raise OnnxLoadError(f"cannot read ONNX file {os.fspath(path)!r}: {error}") from error
    graph = model.graph
    constants: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise OnnxLoadError(f"the ONNX graph must have exactly one (non-constant) input, found {inputs}")
    if len(graph.output) != 1:
        raise OnnxLoadError(f"the ONNX graph must have exactly one output, found {len(graph.output)}")
    if any(node.op_type in ("BatchNormalization", "AveragePool", "Concat") for node in graph.node):
        from relaxlab.engine.onnx_graph import load_onnx_graph

        return load_onnx_graph(model)
    current = inputs[0]
    modules: list[nn.Module] = []
    for index, node in enumerate(graph.node):
        where = _where(index, node)
        attrs = _attributes(node)
        if node.op_type == "Constant":
            value = attrs.get("value")
            if value is None:
                raise OnnxLoadError(f"{where}: only tensor-valued Constant nodes are supported")
            constants[node.output[0]] = numpy_helper.to_array(value)
            continue
        data = [name for name in node.input if name and name not in constants]
        if data != [current]:  # not a chain: a DAG (residual Add, Concat, ...)
            from relaxlab.engine.onnx_graph import load_onnx_graph

            return load_onnx_graph(model)
        const_inputs = [constants[name] for name in node.input if name in constants]
        modules.extend(_convert(node, attrs, const_inputs, modules, where, list(node.input).index(current)))
        current = node.output[0]
    if current != graph.output[0].name:
        raise OnnxLoadError(
            f"the chain ends at {current!r}, not at the graph output {graph.output[0].name!r}"
        )
    if not modules:
        raise OnnxLoadError("the ONNX graph has no layers")
    network = nn.Sequential(*modules)
    network.eval()
    return network


def _convert(
    node: Any,
    attrs: dict[str, Any],
    consts: Sequence[np.ndarray],
    previous: list[nn.Module],
    where: str,
    data_position: int,
) -> list[nn.Module]:
    """The modules for one node (possibly merging into ``previous[-1]``, then returning ``[]``)."""
    op = node.op_type
    if op in ("Identity", "Dropout"):
        return []
    if op == "Relu":
        return [nn.ReLU()]
    if op == "Flatten":
        if int(attrs.get("axis", 1)) != 1:
            raise OnnxLoadError(f"{where}: axis={attrs.get('axis')} (only axis=1 is supported)")
        return [nn.Flatten()]
    if op == "Reshape":
        if len(consts) != 1:
            raise OnnxLoadError(f"{where}: the target shape must be a constant")
        target = [int(v) for v in np.asarray(consts[0]).reshape(-1)]
        if len(target) != 2 or (target[1] != -1 and target[0] not in (-1, 0)):
            raise OnnxLoadError(f"{where}: reshape to {target}; only flattening to (batch, -1) is supported")
        return [nn.Flatten()]
    if op == "Gemm":
        if int(attrs.get("transA", 0)) != 0:
            raise OnnxLoadError(f"{where}: transA=1 is not supported")
        if len(consts) not in (1, 2) or data_position != 0:
            raise OnnxLoadError(f"{where}: expects Gemm(input, W[, b]) with constant W and b")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        weight = consts[0] if int(attrs.get("transB", 0)) else consts[0].T
        bias = consts[1] * beta if len(consts) == 2 else None
        if bias is not None and bias.size != weight.shape[0]:
            raise OnnxLoadError(
                f"{where}: bias of shape {bias.shape} does not match {weight.shape[0]} outputs"
            )
        return [_linear(weight * alpha, bias)]
    if op == "MatMul":
        if len(consts) != 1 or data_position != 0 or consts[0].ndim != 2:
            raise OnnxLoadError(f"{where}: expects MatMul(input, W) with a constant 2-d W")
        return [_linear(consts[0].T, None)]
    if op == "Conv":
        return [_conv(attrs, consts, where)]
    if op in ("Add", "Sub", "Mul", "Div"):
        return _elementwise(op, consts, previous, where, data_position)
    raise OnnxLoadError(
        f"{where} is not supported; the engine accepts Gemm, MatMul(+Add), Conv, Relu, Flatten, Reshape "
        "and per-channel Sub/Div/Add/Mul normalisation"
    )


def _conv(attrs: dict[str, Any], consts: Sequence[np.ndarray], where: str) -> nn.Conv2d:
    if len(consts) not in (1, 2):
        raise OnnxLoadError(f"{where}: expects Conv(input, W[, b]) with constant W and b")
    weight = consts[0]
    if weight.ndim != 4:
        raise OnnxLoadError(f"{where}: only 2-d convolutions are supported (weight shape {weight.shape})")
    if int(attrs.get("group", 1)) != 1:
        raise OnnxLoadError(f"{where}: group={attrs['group']} (only 1 is supported)")
    if any(int(d) != 1 for d in attrs.get("dilations", [1, 1])):
        raise OnnxLoadError(f"{where}: dilations={attrs['dilations']} (only 1 is supported)")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        raise OnnxLoadError(f"{where}: auto_pad={auto_pad} is not supported; export with explicit pads")
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise OnnxLoadError(f"{where}: asymmetric pads {pads} are not supported")
    strides = tuple(int(s) for s in attrs.get("strides", [1, 1]))
    out_channels, in_channels, k_h, k_w = weight.shape
    layer = nn.Conv2d(
        in_channels,
        out_channels,
        (k_h, k_w),
        stride=strides,  # type: ignore[arg-type]
        padding=(pads[0], pads[1]),
        bias=len(consts) == 2,
        dtype=torch.float32,
    )
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
        if len(consts) == 2:
            layer.bias.copy_(torch.from_numpy(np.array(consts[1], dtype=np.float32).reshape(-1)))
    return layer


def _elementwise(
    op: str, consts: Sequence[np.ndarray], previous: list[nn.Module], where: str, data_position: int
) -> list[nn.Module]:
    if len(consts) != 1:
        raise OnnxLoadError(f"{where}: expects one constant operand")
    if data_position != 0 and op in ("Sub", "Div"):
        raise OnnxLoadError(f"{where}: the constant must be the second operand of {op}")
    value = np.asarray(consts[0], dtype=np.float64)
    last = previous[-1] if previous else None
    # A bias added after MatMul/Gemm/Conv belongs to that layer.
    if op == "Add" and isinstance(last, (nn.Linear, nn.Conv2d)):
        out = last.out_features if isinstance(last, nn.Linear) else last.out_channels
        vector = value.reshape(-1) if isinstance(last, nn.Linear) else _channel_vector(value, where)
        if vector.size in (1, out):
            with torch.no_grad():
                extra = torch.from_numpy(np.array(np.broadcast_to(vector, (out,)), dtype=np.float32))
                if last.bias is None:
                    last.bias = nn.Parameter(extra.clone())
                else:
                    last.bias.add_(extra)
            return []
    vector = _channel_vector(value, where)
    if op == "Sub":
        mean, std = vector, np.ones_like(vector)
    elif op == "Add":
        mean, std = -vector, np.ones_like(vector)
    elif op == "Div":
        mean, std = np.zeros_like(vector), vector
    else:  # Mul
        if np.any(vector == 0):
            raise OnnxLoadError(f"{where}: multiplication by 0 is not an invertible normalisation")
        mean, std = np.zeros_like(vector), 1.0 / vector
    if np.any(std <= 0):
        raise OnnxLoadError(
            f"{where}: normalisation by a non-positive value {vector.tolist()} is not supported"
        )
    if isinstance(last, Normalize):
        # (( x - m1) / s1 - m2) / s2 = (x - (m1 + m2 s1)) / (s1 s2)
        m1 = last.mean.double().numpy()
        s1 = last.std.double().numpy()
        if m1.size != mean.size and 1 not in (m1.size, mean.size):
            raise OnnxLoadError(f"{where}: {mean.size} channels after a normalisation of {m1.size}")
        previous[-1] = Normalize((m1 + mean * s1).tolist(), (s1 * std).tolist())
        return []
    return [Normalize(mean.tolist(), std.tolist())]
