"""The graph engine: bounds of ``C·f(x)`` for ReLU networks that are DAGs (residual, concatenating).

A :class:`GraphNetwork` is a tuple of :class:`GraphNode` in topological order (node 0 is the
input); each node holds one operation (an affine layer of :mod:`relaxlab.engine.network` or
:mod:`relaxlab.engine.graph_layers`, a ReLU, an ``Add`` or a ``Cat``) and the indices of its
inputs. :func:`relaxlab.engine.graph_trace.parse_graph` builds one from a module with
``torch.fx``; :func:`parse_model` keeps ``nn.Sequential`` chains on the chain engine
(:mod:`relaxlab.engine.backsub`), which is unchanged, and sends everything else here.

Backsubstitution on a DAG: rows ``(B, S, *shape)`` on one node are pulled back through the
nodes in reverse topological order; a node's rows are the *sum* of what its consumers pulled
back to it (branch points accumulate), an ``Add`` passes its rows to both inputs, a ``Cat``
splits them, a ReLU applies the relaxation's lines (the same step as the chain engine), and
the rows that reach a *stop* node (the input box, or in interval mode the box after a ReLU)
are concretised on its box. The three modes of the chain engine carry over:

- ``backsub``: the input bounds of every ReLU by backsubstitution to the input box;
- ``interval``: by interval arithmetic, each ReLU passing ``[relu(l'), relu(u')]``,
  ``(l', u') = transform_bounds(l, u)``; the final specification by backsubstitution;
- ``fast`` (all slopes 0): interval arithmetic with the lines' offsets as the box after each
  ReLU, and the final specification concretised on those boxes.

"Interval arithmetic" means, as in the chain engine, the exact image of the affine sub-graph
between ReLUs (and the input) over the boxes at its sources: it is computed forward in
centre/radius form where that is exact (at most one non-diagonal layer on every path, and the
two sides of an ``Add`` depending on different sources), else by pulling ``[I; -I]`` back to
those boxes. For the usual residual block ``relu(x + bn(conv(relu(bn(conv(x))))))`` this is
per-node interval arithmetic (IBP).

Shapes: ``B`` batch, ``S`` specification rows, ``K`` network outputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor, nn

from relaxlab.core.relaxer import Relaxer
from relaxlab.engine.backsub import (
    DEFAULT_MAX_ELEMENTS,
    Mode,
    _check_box,
    _check_chunking,
    _check_lines,
    _chunk_rows,
    _concretize,
    _identity_rows,
    _relaxation_lines,
    _relu_backward,
    _resolve_mode,
    _spec_matrix,
    bound_network,
    default_max_elements,
)
from relaxlab.engine.graph_layers import AddNode, CatNode, InputNode
from relaxlab.engine.network import _CHAIN_TYPES, Network, ReluLayer, overrides_forward, parse_network

if TYPE_CHECKING:
    from relaxlab.core.relaxer import RelaxationTensors

Shape = tuple[int, ...]
Box = tuple[Tensor, Tensor]


@attrs.frozen(eq=False)
class GraphNode:
    """One operation of a :class:`GraphNetwork`.

    :param name: where it comes from (for messages), e.g. ``"layer1.0.conv1"``.
    :param op: the operation: an affine layer, :class:`~relaxlab.engine.network.ReluLayer`,
        :class:`~relaxlab.engine.graph_layers.AddNode`, ``CatNode`` or ``InputNode``.
    :param inputs: indices of the input nodes (earlier in the order).
    """

    name: str
    op: object
    inputs: tuple[int, ...]

    @property
    def out_shape(self) -> Shape:
        return self.op.out_shape  # type: ignore[attr-defined,no-any-return]


@attrs.frozen(eq=False)
class GraphNetwork:
    """A parsed, validated ReLU network whose layers form a DAG (nodes in topological order).

    :param nodes: node 0 is the input; the last node is the output.
    :param input_shape: shape of one input (no batch dimension).
    """

    nodes: tuple[GraphNode, ...]
    input_shape: Shape

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape

    @property
    def output_dim(self) -> int:
        return math.prod(self.output_shape)

    @property
    def relus(self) -> tuple[int, ...]:
        """Indices of the ReLU nodes, in topological order."""
        return tuple(index for index, node in enumerate(self.nodes) if isinstance(node.op, ReluLayer))

    def forward(self, x: Tensor) -> Tensor:
        """Run the network on ``(B, *input_shape)``."""
        return self.values(x)[-1]

    def values(self, x: Tensor) -> list[Tensor]:
        """Every node's value on ``(B, *input_shape)``, in node order."""
        values: list[Tensor] = []
        for node in self.nodes:
            if isinstance(node.op, InputNode):
                values.append(x)
            else:
                values.append(node.op.forward(*(values[i] for i in node.inputs)))  # type: ignore[attr-defined]
        return values


def _is_chain(model: nn.Module) -> bool:
    """Whether the chain engine takes ``model`` as it did before graphs existed (its fast path)."""
    if not isinstance(model, nn.Sequential) or overrides_forward(model, nn.Sequential):
        return False
    chain_types = (*_CHAIN_TYPES, nn.Sequential, nn.Identity)
    for module in model.modules():
        if module is model:
            continue
        base = next((kind for kind in chain_types if isinstance(module, kind)), None)
        if base is None or overrides_forward(module, base):
            return False
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            return False
    return True


def parse_model(
    model: nn.Module | Network | GraphNetwork,
    input_shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    clean: Tensor | None = None,
) -> Network | GraphNetwork:
    """A chain :class:`~relaxlab.engine.network.Network` for an ``nn.Sequential`` the chain engine
    accepts, else a :class:`GraphNetwork` traced with ``torch.fx``.

    :param model: any ``nn.Module`` (or an already parsed network, returned as is).
    :param input_shape: shape of one input, without the batch dimension.
    :param dtype: dtype to compute in (weights are cast, differentiably); default: the weights'.
    :param device: device to compute on; default: the weights'.
    :param clean: ``(B, *input_shape)`` the clean batch, needed when a ``BatchNorm`` normalises
        with batch statistics (train mode): its statistics on this batch make it affine.
    :raises UnsupportedNetworkError: naming the node and op the engine cannot bound.
    """
    if isinstance(model, (Network, GraphNetwork)):
        return model
    if _is_chain(model):
        return parse_network(model, input_shape, dtype=dtype, device=device)
    from relaxlab.engine.graph_trace import parse_graph

    return parse_graph(model, input_shape, dtype=dtype, device=device, clean=clean)


def _as_graph(network: GraphNetwork | nn.Module, lower: Tensor, clean: Tensor | None = None) -> GraphNetwork:
    if isinstance(network, GraphNetwork):
        return network
    from relaxlab.engine.graph_trace import parse_graph

    return parse_graph(network, tuple(lower.shape[1:]), dtype=lower.dtype, device=lower.device, clean=clean)


# Exactness of forward interval arithmetic at a node: None (not exact), or (is_box, sources):
# the node's set of values over the stop boxes is a box (is_box) or has an exactly computed
# bounding box, and depends on the stop nodes ``sources``.
_State = tuple[bool, frozenset[int]] | None


def _forward_states(net: GraphNetwork, relu_is_stop: bool) -> list[_State]:
    states: list[_State] = []
    for index, node in enumerate(net.nodes):
        op = node.op
        inputs = [states[i] for i in node.inputs]
        state: _State
        if isinstance(op, InputNode):
            state = (True, frozenset({index}))
        elif isinstance(op, ReluLayer):
            state = (True, frozenset({index})) if relu_is_stop else None
        elif isinstance(op, (AddNode, CatNode)):
            if any(s is None for s in inputs):
                state = None
            else:
                sources = [s[1] for s in inputs if s is not None]
                union = frozenset().union(*sources)
                disjoint = sum(len(s) for s in sources) == len(union)
                all_boxes = all(s[0] for s in inputs if s is not None)
                if disjoint:
                    state = (all_boxes, union)
                else:  # a Cat is still exact coordinate-wise; an Add of shared sources is not
                    state = (False, union) if isinstance(op, CatNode) else None
        elif getattr(op, "is_diagonal", False):
            state = inputs[0]
        else:  # one non-diagonal affine layer: exact on a box only
            state = (False, inputs[0][1]) if inputs[0] is not None and inputs[0][0] else None
        states.append(state)
    return states


class _Bounder:
    """One bound computation on a graph: boxes, lines and the backward pass."""

    def __init__(
        self,
        net: GraphNetwork,
        lower: Tensor,
        upper: Tensor,
        relaxation: Relaxer,
        mode: Mode,
        chunk_size: int | None,
        max_elements: int,
    ) -> None:
        self.net = net
        self.relaxation = relaxation
        self.mode = mode
        self.chunk_size = chunk_size
        self.max_elements = max_elements
        self.batch = lower.shape[0]
        self.widest = max(math.prod(node.out_shape) for node in net.nodes)
        self.states = _forward_states(net, relu_is_stop=mode != "backsub")
        #: boxes of stop nodes (the input; ReLU outputs in interval/fast mode) and forward boxes
        self.boxes: dict[int, Box] = {0: (lower, upper)}
        self.stops: set[int] = {0}
        self.lines: dict[int, RelaxationTensors] = {}
        self.pre: dict[int, Box] = {}

    def forward_box(self, index: int) -> Box:
        """The box of an exact-state node by centre/radius interval arithmetic (memoised)."""
        if index in self.boxes:
            return self.boxes[index]
        node = self.net.nodes[index]
        op = node.op
        parts = [self.forward_box(i) for i in node.inputs]
        if isinstance(op, (AddNode, CatNode)):
            box = (op.forward(*(p[0] for p in parts)), op.forward(*(p[1] for p in parts)))
        else:
            low, high = parts[0]
            centre, radius = (high + low) * 0.5, (high - low) * 0.5
            centre, radius = op.forward(centre), op.forward_abs(radius)  # type: ignore[attr-defined]
            box = (centre - radius, centre + radius)
        self.boxes[index] = box
        return box

    def node_box(self, index: int) -> Box:
        """Exact (interval mode) or backsubstituted (backsub mode) bounds of a node's output."""
        if self.states[index] is not None:
            return self.forward_box(index)
        shape = self.net.nodes[index].out_shape
        n = math.prod(shape)
        rows = _identity_rows(self.boxes[0][0], shape)
        bounds = self.rows_lower(index, rows, self.max_elements)
        return bounds[:, :n].reshape(-1, *shape), -bounds[:, n:].reshape(-1, *shape)

    def rows_lower(self, start: int, rows: Tensor, max_elements: int, final: bool = False) -> Tensor:
        """Lower bounds ``(B, R)`` of ``rows·z_start``, rows ``(B, R, *shape)``, in chunks.

        The rows stop at the boxes after the ReLUs in interval mode (intermediate bounds) and
        in fast mode, else only at the input box (``final`` in interval mode: through every ReLU).
        """
        stops = {0} if final and self.mode == "interval" else self.stops
        chunk = _chunk_rows(self.batch, self.widest, self.chunk_size, max_elements)
        return torch.cat(
            [
                self.pull_back(start, rows[:, first : first + chunk], stops)
                for first in range(0, rows.shape[1], chunk)
            ],
            dim=1,
        )

    def pull_back(self, start: int, coef: Tensor, stops: set[int]) -> Tensor:
        """Lower bound ``(B, S)`` of ``coef·z_start`` by backsubstitution to the boxes of ``stops``."""
        pending: dict[int, Tensor] = {start: coef}
        bias = coef.new_zeros(coef.shape[:2])
        nodes = self.net.nodes
        for index in range(start, -1, -1):
            current = pending.pop(index, None)
            if current is None:
                continue
            if index in stops:
                bias = _concretize(current, bias, *self.boxes[index])
                continue
            node = nodes[index]
            op = node.op
            if isinstance(op, ReluLayer):
                current, bias = _relu_backward(current, bias, self.lines[index])
                passed: tuple[Tensor, ...] = (current,)
            elif isinstance(op, AddNode):
                passed = (current, current)
            elif isinstance(op, CatNode):
                passed = op.split(current)
            else:
                current, layer_bias = op.backward(current)  # type: ignore[attr-defined]
                if layer_bias is not None:
                    bias = bias + layer_bias
                passed = (current,)
            for source, part in zip(node.inputs, passed, strict=True):
                pending[source] = pending[source] + part if source in pending else part
        return bias

    def relu_bounds(self) -> None:
        """Pre-activation bounds and lines of every ReLU (and the boxes after them)."""
        for index in self.net.relus:
            source = self.net.nodes[index].inputs[0]
            pre_lower, pre_upper = self.node_box(source)
            lines = _relaxation_lines(self.relaxation, pre_lower, pre_upper)
            _check_lines(lines, pre_lower, self.relaxation.name, len(self.lines))
            self.pre[index] = (pre_lower, pre_upper)
            self.lines[index] = lines
            if self.mode == "interval":
                t_lower, t_upper = self.relaxation.transform_bounds(pre_lower, pre_upper)
                self.boxes[index] = (torch.relu(t_lower), torch.relu(t_upper))
                self.stops.add(index)
            elif self.mode == "fast":
                self.boxes[index] = (lines.lower_offset, lines.upper_offset)
                self.stops.add(index)


def _bounder(
    network: GraphNetwork | nn.Module,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    mode: Mode,
    chunk_size: int | None,
    max_elements: int | None,
    clean: Tensor | None,
) -> _Bounder:
    net = _as_graph(network, lower, clean)
    _check_box(net, lower, upper)  # type: ignore[arg-type]
    resolved = _resolve_mode(relaxation, mode)
    _check_chunking(chunk_size, max_elements)
    budget = default_max_elements(lower.device) if max_elements is None else max_elements
    bounder = _Bounder(net, lower, upper, relaxation, resolved, chunk_size, budget)
    bounder.relu_bounds()
    return bounder


def graph_intermediate_bounds(
    network: GraphNetwork | nn.Module,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    clean: Tensor | None = None,
) -> tuple[list[Box], list[RelaxationTensors]]:
    """Pre-activation bounds and lines of every ReLU node, in node order (see ``intermediate_bounds``).

    :param clean: the clean batch, for ``BatchNorm`` in train mode (when ``network`` is a module).
    :return: ``[(l, u)]`` with shapes ``(B, *relu_shape)`` and the lines at those bounds.
    """
    bounder = _bounder(network, lower, upper, relaxation, mode, chunk_size, max_elements, clean)
    order = bounder.net.relus
    return [bounder.pre[i] for i in order], [bounder.lines[i] for i in order]


def bound_graph(
    network: GraphNetwork | nn.Module,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    C: Tensor | None = None,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    lower_only: bool = False,
    clean: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sound bounds of ``C·f(x)`` for all ``x`` in ``[lower, upper]``, ``f`` a DAG network.

    The arguments are those of :func:`relaxlab.engine.bound_network`, plus

    :param network: a :class:`GraphNetwork` or any module (traced with ``torch.fx``).
    :param clean: ``(B, *input_shape)`` the clean batch, for ``BatchNorm`` in train mode.
    :return: ``(lb, ub)``, each ``(B, S)``.
    """
    bounder = _bounder(network, lower, upper, relaxation, mode, chunk_size, max_elements, clean)
    net = bounder.net
    batch = lower.shape[0]
    spec = _spec_matrix(C, batch, net.output_dim, lower)
    specs = spec.shape[1]
    both = spec if lower_only else torch.cat([spec, -spec], dim=1)
    rows = both.reshape(batch, both.shape[1], *net.output_shape)
    bounds = bounder.rows_lower(len(net.nodes) - 1, rows, max_elements or DEFAULT_MAX_ELEMENTS, final=True)
    if lower_only:
        return bounds, torch.full_like(bounds, math.inf)
    return bounds[:, :specs], -bounds[:, specs:]


def bound_model(
    network: Network | GraphNetwork,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    C: Tensor | None = None,
    **options: object,
) -> tuple[Tensor, Tensor]:
    """:func:`bound_network` for a chain, :func:`bound_graph` for a graph (same keyword options)."""
    if isinstance(network, GraphNetwork):
        return bound_graph(network, lower, upper, relaxation, C, **options)  # type: ignore[arg-type]
    return bound_network(network, lower, upper, relaxation, C, **options)  # type: ignore[arg-type]


__all__ = [
    "GraphNetwork",
    "GraphNode",
    "bound_graph",
    "bound_model",
    "graph_intermediate_bounds",
    "parse_model",
]
