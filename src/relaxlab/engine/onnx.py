"""Read ONNX files into a :class:`~relaxlab.engine.network.Network`, through the op table.

Verification users exchange networks as ONNX files (VNN-COMP). :func:`read_onnx` reads one node
at a time through :data:`relaxlab.engine.optable.ONNX` (one rule per node type, built from the
same builder functions that torch modules use), folding constant subgraphs (initializers,
``Constant``, ``Shape`` -> ``Gather`` -> ``Concat`` chains) as it goes; :func:`load_onnx` wraps
the network in an ``nn.Module`` (:class:`OnnxModel`) whose ``forward`` runs it, for PGD,
``relaxlab verify`` and ``relaxlab bounds``, and which
:func:`~relaxlab.engine.parse.parse_model` reads without tracing.

A graph is read as the function of **one example** (its batch dimension 1): the engine evaluates
that function for every example of its batch. The input's first dimension is the batch when the
input has at least two dimensions and the first is symbolic or 1; the shape of one input
(:func:`onnx_input_shape`) is then the rest. A 1-d input (the competition's ``test`` networks)
is one example as it stands.

Whatever the reader cannot represent faithfully is refused with :class:`OnnxLoadError`, one line
naming the node (index, name, type) or the file, before any bound is computed: node types
without a rule, attributes a rule does not implement, settings it does not support, shapes that
do not fit, sizes beyond :data:`~relaxlab.engine.optable.ONNX_MAX_ELEMENTS`, NaN/inf weights,
and files that are not valid ONNX (a bit-flipped file included) — never a traceback.

A bias added after ``MatMul``/``Gemm``/``Conv`` (an ``Add`` of a constant) is merged into the
product's bias only where nothing else reads the product (:func:`fuse_biases`, on the finished
network: a dead ``Add`` is never merged, and a product that is also read elsewhere keeps its own
value).
"""

from __future__ import annotations

import os
from collections.abc import Container
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from relaxlab.engine.network import Network, NetworkBuilder
from relaxlab.engine.ops import Conv, Linear, Shape, Shift, UnsupportedNetworkError
from relaxlab.engine.optable import ONNX, OnnxNode, OnnxTensor, check_size, onnx_shape, reshape

__all__ = ["OnnxLoadError", "OnnxModel", "fuse_biases", "load_onnx", "onnx_input_shape", "read_onnx"]

_FLOAT, _DOUBLE = 1, 11  # TensorProto.FLOAT, TensorProto.DOUBLE


class OnnxLoadError(UnsupportedNetworkError):
    """An ONNX file the reader cannot turn into a network faithfully (one line naming the node or file)."""


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else type(error).__name__


def _where(index: int, node: Any) -> str:
    """``ONNX node 3 'fc1' (Gemm)``; a node without a name is named by its first output:
    ``ONNX node 3 (Gemm, unnamed, writes 'h')``."""
    kind = (
        node.op_type if isinstance(node.op_type, str) and node.op_type.isidentifier() else repr(node.op_type)
    )
    if node.name:
        return f"ONNX node {index} {node.name!r} ({kind})"
    written = next((name for name in node.output if name), None)
    return f"ONNX node {index} ({kind}, unnamed{f', writes {written!r}' if written else ''})"


def _load(path: str | os.PathLike[str], *, external: bool = True) -> Any:
    import onnx

    try:
        return onnx.load(os.fspath(path), load_external_data=external)
    except Exception as error:  # DecodeError, OSError, ValueError, ... for a file that is not ONNX
        raise OnnxLoadError(f"cannot read ONNX file {os.fspath(path)!r}: {_line(error)}") from error


def _array(tensor: Any, what: str) -> np.ndarray:
    from onnx import numpy_helper

    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as error:  # a tensor whose data does not fit its declared shape or type
        raise OnnxLoadError(f"{what} cannot be read: {_line(error)}") from error


def _attributes(node: Any, where: str) -> dict[str, Any]:
    """The node's attributes as Python values (tensors as arrays, strings decoded)."""
    import onnx

    values: dict[str, Any] = {}
    for attribute in node.attribute:
        if attribute.ref_attr_name:
            raise OnnxLoadError(f"{where}: attribute {attribute.name!r} refers to a function's attribute")
        try:
            value = onnx.helper.get_attribute_value(attribute)
        except Exception as error:
            raise OnnxLoadError(
                f"{where}: attribute {attribute.name!r} cannot be read: {_line(error)}"
            ) from error
        if isinstance(value, onnx.TensorProto):
            value = _array(value, f"{where}: attribute {attribute.name!r}")
        elif isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, list):
            if any(not isinstance(v, (int, float)) for v in value):
                raise OnnxLoadError(f"{where}: attribute {attribute.name!r} holds graphs, tensors or strings")
        elif not isinstance(value, (int, float)):
            raise OnnxLoadError(
                f"{where}: attribute {attribute.name!r} of type {type(value).__name__} is not supported"
            )
        values[attribute.name] = value
    return values


def _graph_input(graph: Any, constants: Container[str]) -> Any:
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise OnnxLoadError(
            f"the ONNX graph must have exactly one (non-constant) input, found "
            f"{[value.name for value in inputs]}"
        )
    return inputs[0]


def _input_layout(value: Any) -> tuple[Shape, bool]:
    """The shape of one input and whether the ONNX input has a batch dimension first."""
    tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor is None or not tensor.HasField("shape"):
        raise OnnxLoadError(f"the ONNX input {value.name!r} is not a tensor of known rank")
    sizes = [int(d.dim_value) if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if not sizes:
        raise OnnxLoadError(f"the ONNX input {value.name!r} is a scalar; the reader needs a tensor")
    batched = len(sizes) >= 2 and sizes[0] in (None, 1)
    shape = sizes[1:] if batched else sizes
    if any(s is None or s <= 0 for s in shape):
        raise OnnxLoadError(
            f"the ONNX input {value.name!r} has shape {sizes}: every dimension but the batch "
            "must have a fixed positive size"
        )
    fixed = [s for s in shape if s is not None]  # every one of them, after the check above
    try:
        check_size(fixed, f"the ONNX input {value.name!r}")
    except UnsupportedNetworkError as error:
        raise OnnxLoadError(str(error)) from None
    return tuple(int(s) for s in fixed), batched


def onnx_input_shape(path: str | os.PathLike[str]) -> Shape:
    """The shape of one input of an ONNX file (without the batch dimension where it has one)."""
    model = _load(path, external=False)
    constants = {init.name for init in model.graph.initializer}
    value = _graph_input(model.graph, constants)
    return _input_layout(value)[0]


def _opset(model: Any) -> int:
    versions = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if not versions:
        raise OnnxLoadError("the ONNX model declares no opset for the default domain")
    return int(versions[0])


def _needed(graph: Any, output: str) -> set[int]:
    """Indices of the nodes the output depends on (others are never read)."""
    wanted, needed = {output}, set()
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        if any(name in wanted for name in node.output):
            needed.add(index)
            wanted.update(name for name in node.input if name)
    return needed


class _Unread:
    """An output of a node that the reader does not compute (a mask, indices, running statistics)."""

    def __init__(self, where: str, position: int) -> None:
        self.where, self.position = where, position


def read_onnx(path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Network:
    """The :class:`Network` of an ONNX file.

    :param dtype: the dtype of its tensors; default: the file's (float32 or float64). Constants the
        reader derives (BatchNorm's scale and shift, ``alpha·B``, merged biases) are computed in
        float64 and rounded once.
    :raises OnnxLoadError: one line naming the node (index, name, type) or the file.
    """
    network, file_dtype = _read_exact(path)
    return _cast(network, dtype or file_dtype)


def _read_exact(path: str | os.PathLike[str]) -> tuple[Network, torch.dtype]:
    """The network in float64 and the file's dtype."""
    source = os.fspath(path)
    model = _load(path)
    try:
        return _read(model, source)
    except OnnxLoadError:
        raise
    except Exception as error:  # anything else a corrupted file provokes: one line, never a traceback
        raise OnnxLoadError(f"{source!r} cannot be read: {type(error).__name__}: {_line(error)}") from error


def _cast(network: Network, dtype: torch.dtype) -> Network:
    """``network`` in ``dtype``, refusing constants that overflow it."""
    cast = network.cast(dtype)
    for index, node in enumerate(cast.nodes):
        for field, tensor in node.op.tensors().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise OnnxLoadError(f"{network.describe(index)}: its {field} overflows {dtype}")
    return cast


def _read(model: Any, source: str) -> tuple[Network, torch.dtype]:
    graph = model.graph
    if len(graph.sparse_initializer):
        raise OnnxLoadError(f"{source}: sparse initializers are not supported")
    constants = {init.name: _array(init, f"initializer {init.name!r}") for init in graph.initializer}
    value = _graph_input(graph, constants)
    shape, batched = _input_layout(value)
    elem_type = value.type.tensor_type.elem_type
    if elem_type not in (_FLOAT, _DOUBLE):
        raise OnnxLoadError(
            f"the ONNX input {value.name!r} has element type {elem_type}; only float and double"
        )
    if len(graph.output) != 1:
        raise OnnxLoadError(f"the ONNX graph must have exactly one output, found {len(graph.output)}")
    output = graph.output[0].name
    opset = _opset(model)
    dtype = torch.float64 if elem_type == _DOUBLE else torch.float32
    builder = NetworkBuilder(shape, dtype=torch.float64)
    values: dict[str, Any] = dict(constants)
    values[value.name] = OnnxTensor(0, batched)
    for index in sorted(_needed(graph, output)):
        node = graph.node[index]
        where = _where(index, node)
        result = _read_node(builder, node, where, values, opset, dtype)
        for position, name in enumerate(node.output):
            if not name:
                continue
            if name in values:
                raise OnnxLoadError(f"{where} writes {name!r}, which is already defined")
            values[name] = result if position == 0 else _Unread(where, position)
    result = values.get(output)
    if not isinstance(result, OnnxTensor):
        raise OnnxLoadError(
            f"the graph output {output!r} "
            f"{'is not computed by any node' if result is None else 'does not depend on the input'}"
        )
    out_shape = onnx_shape(builder, result)
    try:
        if batched and out_shape and out_shape[0] == 1:
            result = OnnxTensor(_as_node(builder, result, out_shape[1:]), True)
        elif not batched:
            result = OnnxTensor(_as_node(builder, result, out_shape), False)
        network = fuse_biases(builder.build(result.node))
    except UnsupportedNetworkError as error:
        raise OnnxLoadError(f"{source}: {_line(error)}") from error
    return network, dtype


def _as_node(builder: NetworkBuilder, value: OnnxTensor, shape: Shape) -> int:
    return reshape(builder, value.node, tuple(shape), "output")


def _read_node(
    builder: NetworkBuilder, node: Any, where: str, values: dict[str, Any], opset: int, dtype: torch.dtype
) -> Any:
    if node.domain not in ("", "ai.onnx"):
        raise OnnxLoadError(f"{where}: operator domain {node.domain!r} is not supported")
    rule = ONNX.get(node.op_type)
    if rule is None:
        raise OnnxLoadError(f"{where} is not supported; the reader reads {', '.join(sorted(ONNX))}")
    attributes = _attributes(node, where)
    unknown = sorted(set(attributes) - rule.attributes)
    if unknown:
        raise OnnxLoadError(
            f"{where}: attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            "not supported (the reader would compute another function)"
        )
    inputs: list[Any] = []  # the values read (tensors, arrays, constants); None for an omitted input
    for name in node.input:
        if not name:
            inputs.append(None)
            continue
        value = values.get(name)
        if value is None:
            raise OnnxLoadError(f"{where} reads {name!r}, which no earlier node computes")
        if isinstance(value, _Unread):
            raise OnnxLoadError(
                f"{where} reads {name!r}, output {value.position} of {value.where}, which the "
                "reader does not compute (only inference outputs are supported)"
            )
        inputs.append(value)
    first = len(builder.nodes)
    label = node.name or (node.output[0] if node.output else f"node{first}")
    try:
        result = rule.build(builder, OnnxNode(where, label, tuple(inputs), attributes, opset))
        if isinstance(result, np.generic):  # numpy returns scalars for 0-d results
            result = np.asarray(result)
        for added in builder.nodes[first:]:
            check_size(added.out_shape, where)
            _check_finite(added.op, dtype, where)
        if isinstance(result, np.ndarray):
            check_size(result.shape, where)
    except OnnxLoadError:
        raise
    except UnsupportedNetworkError as error:
        message = _line(error)
        raise OnnxLoadError(message if message.startswith("ONNX node") else f"{where}: {message}") from error
    except Exception as error:  # a malformed node (hostile or corrupted file): one line, never a traceback
        raise OnnxLoadError(f"{where} cannot be read: {type(error).__name__}: {_line(error)}") from error
    if result is None:
        raise OnnxLoadError(f"{where} computes nothing")
    return result


def _check_finite(op: Any, dtype: torch.dtype, where: str) -> None:
    """Refuse, by the ONNX node, a constant the reader derived that overflows the file's dtype (``alpha·B``)."""
    for field, tensor in op.tensors().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.to(dtype)).all()):
            raise OnnxLoadError(f"{where}: its {field} overflows {dtype}")


def _merged_bias(op: Any, offset: Tensor) -> Tensor | None:
    """The bias of ``op`` after adding ``offset`` to its output, if ``offset`` is a bias for it."""
    if isinstance(op, Linear) and not op.per_example:
        width = op.out_shape[-1]
        padded = offset.reshape((1,) * (len(op.out_shape) - offset.dim()) + tuple(offset.shape))
        if any(s != 1 for s in padded.shape[:-1]):
            return None
    elif isinstance(op, Conv):
        width = op.out_shape[0]
        padded = offset.reshape((1,) * (3 - offset.dim()) + tuple(offset.shape))
        if tuple(padded.shape[1:]) != (1, 1):
            return None
    else:
        return None
    vector = padded.reshape(-1).expand(width)
    return vector.clone() if op.bias is None else op.bias + vector


def fuse_biases(network: Network) -> Network:
    """``network`` with each :class:`~relaxlab.engine.ops.Shift` after a ``Linear``/``Conv`` merged into
    its bias, where the shift is the only reader of the product (so no other node sees the change)."""
    nodes = list(network.nodes)
    readers = [list(r) for r in network.consumers()]
    merged: dict[int, int] = {}  # shift -> the node that now computes its value
    last = len(nodes) - 1
    for index, node in enumerate(nodes):
        if not isinstance(node.op, Shift):
            continue
        source = node.inputs[0]
        if readers[source] != [index]:
            continue
        if index == last and any(i not in merged for i in range(source + 1, index)):
            continue  # the product would not be the last node: the output must stay last
        bias = _merged_bias(nodes[source].op, node.op.offset)
        if bias is None:
            continue
        nodes[source] = attrs.evolve(nodes[source], op=nodes[source].op.evolve(bias=bias))
        merged[index] = source
        readers[source] = readers[index]
        for reader in readers[index]:
            nodes[reader] = attrs.evolve(
                nodes[reader], inputs=tuple(source if i == index else i for i in nodes[reader].inputs)
            )
    if not merged:
        return network
    keep = [i for i in range(len(nodes)) if i not in merged]
    position = {old: new for new, old in enumerate(keep)}
    renumbered = tuple(
        attrs.evolve(nodes[i], inputs=tuple(position[j] for j in nodes[i].inputs)) for i in keep
    )
    return Network(renumbered, network.input_shape)


class OnnxModel(nn.Module):
    """A network read from an ONNX file: ``forward`` runs it; :func:`~relaxlab.engine.parse.parse_model`
    takes its :attr:`network` as it is (no tracing).

    The operations' tensors are the module's buffers, so ``.double()``, ``.float()``, ``.to()``,
    ``state_dict`` and ``torch.func.functional_call`` act on the network. The module also keeps the
    reader's float64 constants: every cast (``.float()``, ``.double()``, ``.to(...)``) starts from
    them, so a float64 module computes the file's function without float32 rounding of derived
    constants (BatchNorm's scale, merged biases), whatever casts came before.

    :param network: the network with float64 constants (:func:`read_onnx` with ``dtype=torch.float64``).
    :param source: where it was read from, for messages.
    :param dtype: the dtype the module starts in (default: float64).
    """

    def __init__(self, network: Network, source: str = "", dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.source = source
        self.input_shape: Shape = network.input_shape
        self.output_shape: Shape = network.output_shape
        self._exact = network
        working = network if dtype is None else _cast(network, dtype)
        self._fields: list[tuple[str, ...]] = []
        skeleton = []
        for index, node in enumerate(working.nodes):
            held = node.op.tensors()
            for field, tensor in held.items():
                self.register_buffer(f"node{index}_{field}", tensor.detach().clone())
            self._fields.append(tuple(held))
            skeleton.append(attrs.evolve(node, op=node.op.evolve(**dict.fromkeys(held))) if held else node)
        self._skeleton = Network(tuple(skeleton), network.input_shape)

    def _apply(self, fn: Any, recurse: bool = True) -> OnnxModel:
        super()._apply(fn, recurse)
        for index, fields in enumerate(self._fields):  # the cast's dtype and device, from the exact values
            for field in fields:
                name = f"node{index}_{field}"
                current, exact = self._buffers[name], getattr(self._exact.nodes[index].op, field)
                if current is not None and current.is_floating_point() and exact.is_floating_point():
                    self._buffers[name] = exact.to(dtype=current.dtype, device=current.device)
        return self

    @property
    def network(self) -> Network:
        """The network with the module's current buffers."""
        nodes = []
        for index, (node, fields) in enumerate(zip(self._skeleton.nodes, self._fields, strict=True)):
            if fields:
                tensors = {field: getattr(self, f"node{index}_{field}") for field in fields}
                node = attrs.evolve(node, op=node.op.evolve(**tensors))
            nodes.append(node)
        return Network(tuple(nodes), self._skeleton.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.source or 'the ONNX network'} takes inputs of shape (batch, "
                f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        return self.network.forward(x)

    def extra_repr(self) -> str:
        return (
            f"{self.source!r}, input {self.input_shape}, output {self.output_shape}, "
            f"{len(self._skeleton.nodes) - 1} operations"
        )


def load_onnx(path: str | os.PathLike[str]) -> OnnxModel:
    """Read an ONNX file as a module whose ``forward`` runs its network (eval mode).

    :param path: the ``.onnx`` file.
    :return: an :class:`OnnxModel` taking ``(batch, *onnx_input_shape(path))``, in the file's dtype.
    :raises OnnxLoadError: one line naming the node or the file, for anything the reader cannot
        represent faithfully.
    """
    network, dtype = _read_exact(path)
    return OnnxModel(network, os.fspath(path), dtype).eval()
