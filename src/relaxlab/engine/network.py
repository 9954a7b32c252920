"""The engine's view of a network: a DAG of operations in topological order.

A :class:`Network` is a tuple of :class:`Node`\\ s; node 0 is the :class:`~relaxlab.engine.ops.Input`,
the last node is the output, and each node holds one operation of :mod:`relaxlab.engine.ops`
and the indices of its inputs (earlier nodes). A chain (an ``nn.Sequential``) is a network whose
nodes form one path; nothing in the engine treats it differently.

:func:`relaxlab.engine.parse.parse_model` builds networks from torch modules, and
:mod:`relaxlab.engine.onnx` from ONNX files, both through the op table
(:mod:`relaxlab.engine.optable`), with a :class:`NetworkBuilder`.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from relaxlab.engine.ops import AffineOp, Input, Op, Relu, Shape, UnsupportedNetworkError


@attrs.frozen(eq=False)
class Node:
    """One operation of a :class:`Network`.

    :param name: where it comes from (for messages), e.g. ``"layer1.0.conv1"``.
    :param op: the operation.
    :param inputs: indices of the input nodes (all earlier in the order).
    """

    name: str
    op: Op
    inputs: tuple[int, ...]

    @property
    def out_shape(self) -> Shape:
        return self.op.out_shape


@attrs.frozen(eq=False)
class Network:
    """A parsed, validated ReLU network: operations in topological order, node 0 the input.

    :param nodes: the nodes; every input index points to an earlier node.
    :param input_shape: shape of one input (no batch dimension).
    """

    nodes: tuple[Node, ...]
    input_shape: Shape

    def __attrs_post_init__(self) -> None:
        if not self.nodes or not isinstance(self.nodes[0].op, Input):
            raise UnsupportedNetworkError("a network starts with its input node")
        if len(self.nodes) == 1:
            raise UnsupportedNetworkError(
                "the network has no layers; give at least one Linear or Conv2d layer"
            )
        for index, node in enumerate(self.nodes[1:], start=1):
            if not node.inputs or any(not 0 <= i < index for i in node.inputs):
                raise UnsupportedNetworkError(
                    f"node {index} ({node.name}) reads a node that is not before it"
                )

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape

    @property
    def output_dim(self) -> int:
        return math.prod(self.output_shape)

    @property
    def relus(self) -> tuple[int, ...]:
        """Indices of the ReLU nodes, in topological order."""
        return tuple(index for index, node in enumerate(self.nodes) if isinstance(node.op, Relu))

    def consumers(self) -> tuple[tuple[int, ...], ...]:
        """For each node, the nodes that read it (in order; a node read twice appears twice)."""
        readers: list[list[int]] = [[] for _ in self.nodes]
        for index, node in enumerate(self.nodes):
            for source in node.inputs:
                readers[source].append(index)
        return tuple(tuple(r) for r in readers)

    @property
    def is_chain(self) -> bool:
        """Every node reads the one before it."""
        return all(node.inputs == (index - 1,) for index, node in enumerate(self.nodes[1:], start=1))

    def forward(self, x: Tensor) -> Tensor:
        """Run the network on ``(B, *input_shape)``."""
        return self.values(x)[-1]

    def values(self, x: Tensor) -> list[Tensor]:
        """Every node's value on ``(B, *input_shape)``, in node order."""
        values: list[Tensor] = [x]
        for node in self.nodes[1:]:
            values.append(node.op.forward(*(values[i] for i in node.inputs)))
        return values

    def cast(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Network:
        """The network with every tensor moved to ``dtype`` and ``device`` (differentiably)."""

        def move(t: Tensor) -> Tensor:
            return t.to(
                dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype, device=device
            )

        return Network(tuple(attrs.evolve(n, op=n.op.cast(move)) for n in self.nodes), self.input_shape)

    def tensors(self) -> list[Tensor]:
        """Every tensor the operations hold."""
        return [t for node in self.nodes for t in node.op.tensors().values()]

    def describe(self, index: int) -> str:
        """``node 3 (fc1, Linear)`` for messages."""
        node = self.nodes[index]
        return f"node {index} ({node.name}, {type(node.op).__name__})"


class NetworkBuilder:
    """Collects nodes while a model or file is read, with shapes and (optionally) clean values.

    :param input_shape: shape of one input.
    :param dtype: dtype every floating tensor taken from the model is cast to (``None``: kept).
    :param device: device they are moved to (``None``: kept).
    :param default_dtype: dtype of constants the rules create (``None``: ``dtype``, else torch's default).
    :param clean: ``(B, *input_shape)`` a clean batch, computed through the nodes as they are
        added (``BatchNorm`` with batch statistics needs its input's values).
    """

    def __init__(
        self,
        input_shape: Shape,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        default_dtype: torch.dtype | None = None,
        clean: Tensor | None = None,
    ) -> None:
        self.dtype = dtype
        self.device = device
        self.default_dtype = dtype or default_dtype or torch.get_default_dtype()
        self.nodes: list[Node] = []
        self.clean = clean
        self.clean_values: list[Tensor] = []
        self.add("input", Input(tuple(int(s) for s in input_shape)), ())

    def cast(self, tensor: Tensor) -> Tensor:
        """``tensor`` in the network's dtype (floating tensors only) and on its device, differentiably."""
        dtype = self.dtype if self.dtype is not None and tensor.is_floating_point() else tensor.dtype
        return tensor.to(dtype=dtype, device=self.device)

    def add(self, name: str, op: Op, inputs: tuple[int, ...]) -> int:
        self.nodes.append(Node(name, op, inputs))
        if self.clean is not None:
            value = self.clean if not inputs else op.forward(*(self.clean_values[i] for i in inputs))
            self.clean_values.append(value)
        return len(self.nodes) - 1

    def shape(self, index: int) -> Shape:
        return self.nodes[index].out_shape

    def clean_value(self, index: int) -> Tensor | None:
        return self.clean_values[index] if self.clean is not None else None

    def build(self, output: int) -> Network:
        """The network whose output is node ``output`` (nodes no path to it uses are dropped)."""
        used = {output}
        for index in range(output, -1, -1):
            if index in used:
                used.update(self.nodes[index].inputs)
        keep = sorted(used | {0})
        if len(keep) == len(self.nodes):  # every node is used: the indices stay
            nodes = tuple(self.nodes)
        else:
            position = {old: new for new, old in enumerate(keep)}
            nodes = tuple(
                attrs.evolve(self.nodes[old], inputs=tuple(position[i] for i in self.nodes[old].inputs))
                for old in keep
            )
        if output != keep[-1]:
            raise UnsupportedNetworkError("the network's output must be its last computed node")
        return Network(nodes, self.nodes[0].out_shape)


def is_affine(op: Op) -> bool:
    """Whether the engine treats ``op`` as an affine map (everything but the input and ReLUs)."""
    return isinstance(op, AffineOp)


__all__ = ["Network", "NetworkBuilder", "Node", "UnsupportedNetworkError", "is_affine"]
