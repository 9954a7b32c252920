"""The engine: sound bounds of ``C·f(x)`` over an input box, for any network and relaxation.

One engine over one graph (:class:`~relaxlab.engine.network.Network`; a chain is a graph with one
path). The relaxation says how bounds propagate (its ``intermediate`` and ``final`` fields,
:func:`propagation`), and the engine runs what it says; it never looks at a relaxation's name:

- **interval**: each ReLU passes the box ``[relu(l'), relu(u')]``, ``(l', u') =
  transform_bounds(l, u)``; the affine parts between ReLUs are mapped exactly (the *exact image*
  below). With ``intermediate = "interval"`` only the ReLUs' input bounds come from intervals;
- **fast**: a relaxation whose lines all have slope 0 (``is_interval``, IBP) stops
  backsubstitution at every ReLU; the box after a ReLU is then its lines' offsets
  ``[lower_offset, upper_offset]``, and the whole computation is interval arithmetic (the same
  numbers as backsubstitution, up to rounding);
- **backsub**: rows of a linear function of a node are pulled back through the graph to the
  input box (DeepPoly/CROWN): an affine node maps its rows with its ``backward``, a ReLU
  replaces ``y`` by the lower or upper line of its relaxation (by the sign of the row), a node
  read by several others sums what they pull back to it. Rows that reach a *stop* (the input; the
  boxes after ReLUs in interval and fast mode) are concretised on its box;
- **forward**: every node carries a lower and an upper affine form of the input's error terms,
  ``L(ε) <= z <= U(ε)`` for ``ε`` in ``[-1, 1]^n`` (linear bound propagation, Lyu et al.'s LBP;
  the forms share their linear part wherever the lines of every ReLU before them are parallel,
  which makes them a hybrid zonotope: the linear part the zonotope's, the gap between the forms
  the box part that later layers carry as ``|W|·r``, as the paper's code computes hBox). A ReLU
  maps the forms with its lines (the lower line on the lower form where its slope is positive);
  the final rows are first pulled back through the affine nodes after the last ReLUs (specification
  elision) and then applied to the forms there.

Exact images: between stops, a node whose value set over the stop boxes is computed exactly by
interval arithmetic in centre/radius form (at most one non-diagonal operation on every path from
a stop, and the operands of a sum depending on different stops) gets its box that way; that *is*
backsubstitution through those nodes, only cheaper. Otherwise rows ``[I; -I]`` are pulled back.

Around the stops: a stop followed by a chain of diagonal operations (normalisation, flatten)
moves its box forward through them, and a convolution right after such a box takes the rows in
polyphase order (no interleaving or cropping of the largest tensor). Rows are pulled back in
chunks of at most ``max_elements`` entries; the intermediate rows ``[I; -I]`` are built once and
shared by the batch until the first ReLU step.

Shapes: ``B`` batch, ``S`` specification rows, ``K`` network outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import attrs
import torch
from torch import Tensor, nn

from relaxlab.core.relaxer import RelaxationTensors, Relaxer
from relaxlab.engine import patches as patch_rows
from relaxlab.engine.network import Network
from relaxlab.engine.ops import AffineOp, Box, Conv, Input, Linear, Relu
from relaxlab.engine.parse import parse_model
from relaxlab.engine.relu_step import concretize, relu_backward

#: Default cap on the elements of one coefficient tensor ``(B, rows, n)`` on CUDA (256 MiB in float32).
DEFAULT_MAX_ELEMENTS = 1 << 26
#: Default on the CPU: 8 MiB in float32. Rows pulled back in cache-sized chunks run 2-2.4x faster
#: than in 256 MiB ones on the development CPU (full CROWN and DeepZ, docs/performance.md).
DEFAULT_MAX_ELEMENTS_CPU = 1 << 21

Mode = Literal["auto", "backsub", "interval", "fast", "forward"]

#: ``(relu node index, pre-activation lower, upper) -> {parameter name: (B, *shape) values}``: the
#: relaxation's parameters per neuron at a ReLU, asked once per ReLU and bound computation.
ParameterSource = Callable[[int, Tensor, Tensor], Mapping[str, Tensor]]
MODES = ("auto", "backsub", "interval", "fast", "forward")
#: How a relaxation may obtain intermediate bounds, and the final bound.
INTERMEDIATE = ("backsub", "interval", "forward")
FINAL = ("backsub", "forward")


def default_max_elements(device: torch.device) -> int:
    """The default ``max_elements`` for the intermediate specifications on ``device``.

    The final specification (a few rows per example) is chunked at ``DEFAULT_MAX_ELEMENTS``
    on every device: splitting its handful of rows measured slower.
    """
    return DEFAULT_MAX_ELEMENTS_CPU if device.type == "cpu" else DEFAULT_MAX_ELEMENTS


class Propagation(NamedTuple):
    """How one bound computation runs: ``intermediate`` and ``final`` each one of the modes above.
    (A named tuple: ``torch.compile`` traces its construction, which it does not for attrs classes.)"""

    intermediate: str
    final: str


def propagation(relaxation: Relaxer, mode: Mode = "auto") -> Propagation:
    """What the relaxation declares (``mode="auto"``), or a forced mode for intermediate bounds.

    ``"fast"`` (interval arithmetic with the lines' offsets) applies to both stages and needs a
    relaxation whose lines all have slope 0; ``"backsub"``, ``"interval"``, ``"forward"`` force the
    intermediate bounds only (``"backsub"`` on IBP runs the slow path, which is how the fast path is
    tested); the final stage then follows the relaxation.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    final = relaxation.final
    if final not in FINAL:
        raise ValueError(f"relaxation {relaxation.name!r} has final={final!r}; expected one of {FINAL}")
    if mode == "fast" or (mode == "auto" and relaxation.is_interval):
        if not relaxation.is_interval:
            raise ValueError(
                f"mode='fast' needs a relaxation whose lines all have slope 0; {relaxation.name!r} is not one"
            )
        return Propagation("fast", "fast")
    intermediate = relaxation.intermediate if mode == "auto" else mode
    if intermediate not in INTERMEDIATE:
        raise ValueError(
            f"relaxation {relaxation.name!r} has intermediate={intermediate!r}; expected one of {INTERMEDIATE}"
        )
    return Propagation(intermediate, final)


def check_chunking(chunk_size: int | None, max_elements: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    if max_elements is not None and (
        isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1
    ):
        raise ValueError(f"max_elements must be a positive number of tensor entries, got {max_elements!r}")


def identity_rows(like: Tensor, shape: tuple[int, ...], keep: Tensor | None = None) -> Tensor:
    """Rows ``[I; -I]`` over the neurons of ``shape`` (only those ``keep`` indexes, if given), as
    ``(1, 2n, *shape)``: one copy for the whole batch until the first ReLU step broadcasts it."""
    eye = torch.eye(math.prod(shape), dtype=like.dtype, device=like.device)
    if keep is not None:
        eye = eye[keep]
    return torch.cat([eye, -eye], dim=0).reshape(1, 2 * eye.shape[0], *shape)


def split_rows(bounds: Tensor, shape: tuple[int, ...]) -> Box:
    """Bounds ``(l, u)`` of the neurons of ``shape`` from the lower bounds of the rows ``[I; -I]``."""
    n = math.prod(shape)
    return bounds[:, :n].reshape(-1, *shape), -bounds[:, n:].reshape(-1, *shape)


# Exactness of forward interval arithmetic at a node: None (not exact), or (is_box, sources): the
# node's value set over the stop boxes is a box (is_box) or has an exactly computed bounding box,
# and depends on the stops ``sources``.
_State = tuple[bool, frozenset[int]] | None


def exact_states(net: Network, stops: frozenset[int]) -> list[_State]:
    """Which nodes interval arithmetic from the boxes of ``stops`` bounds exactly (see the module docstring)."""
    states: list[_State] = []
    for index, node in enumerate(net.nodes):
        op = node.op
        inputs = [states[i] for i in node.inputs]
        state: _State
        if index in stops:
            state = (True, frozenset({index}))
        elif isinstance(op, Relu | Input) or any(s is None for s in inputs):
            state = None
        elif len(inputs) > 1:
            sources = [s[1] for s in inputs if s is not None]
            union = frozenset().union(*sources)
            all_boxes = all(s[0] for s in inputs if s is not None)
            if sum(len(s) for s in sources) == len(union):  # independent operands
                state = (all_boxes, union)
            else:  # a concatenation is still exact coordinate-wise; a sum of shared sources is not
                state = (False, union) if getattr(op, "diagonal", False) else None
        elif getattr(op, "diagonal", False):
            state = inputs[0]
        else:  # one non-diagonal affine map: exact on a box only
            state = (False, inputs[0][1]) if inputs[0] is not None and inputs[0][0] else None
        states.append(state)
    return states


@attrs.define(eq=False)
class _Stop:
    """Where rows are concretised: a node's box, or a convolution's input box in polyphase order."""

    lower: Tensor
    upper: Tensor
    phases: bool = False


class _Stops(NamedTuple):
    """The effective stops of one set of stops (:meth:`Bounder.effective_stops`): which nodes they are
    (``plan``: node -> how its box is made, from which node) is known at once; each one's box is made
    on first use (:meth:`Bounder.stop_at`) and kept in ``made``. Plain data: it holds no reference to
    the Bounder, so that no reference cycle keeps a step's autograd graph alive after the step (and
    a named tuple, which ``torch.compile`` traces)."""

    plan: dict[int, tuple[str, int]]
    made: dict[int, _Stop]


class Bounder:
    """One bound computation on a network: boxes, lines, forms and rows.

    :param net: the network.
    :param lower: ``(B, *input_shape)`` input lower bounds; ``upper`` likewise.
    :param relaxation: the ReLU relaxation (:class:`~relaxlab.core.relaxer.Relaxer`).
    :param how: :func:`propagation` of the relaxation.
    :param chunk_size: rows pulled back at once (default: as many as ``max_elements`` allows).
    :param max_elements: budget for one coefficient tensor of intermediate rows.
    :param patches: pull the rows of convolutional nodes back in patches where the graph allows.
    :param sparse: skip the rows of neurons that interval arithmetic proves stable with exact lines.
    :param rigorous: widen every bound the computation makes (pre-activation bounds, the boxes rows
        stop at, the final bounds) by a bound on its floating-point rounding error
        (:meth:`rounding_margin`), so that the bounds hold in the arithmetic used, not only in the reals.
    :param parameters: per-neuron parameter values of the relaxation at each ReLU
        (:data:`ParameterSource`, e.g. :mod:`relaxlab.engine.optimise`); default its own values.
    """

    def __init__(
        self,
        net: Network,
        lower: Tensor,
        upper: Tensor,
        relaxation: Relaxer,
        how: Propagation,
        *,
        chunk_size: int | None = None,
        max_elements: int | None = None,
        patches: bool = True,
        sparse: bool = False,
        rigorous: bool = False,
        parameters: ParameterSource | None = None,
    ) -> None:
        self.net = net
        self.parameters = parameters
        self.relaxation = relaxation
        self.how = how
        self.chunk_size = chunk_size
        self.max_elements = default_max_elements(lower.device) if max_elements is None else max_elements
        self.use_patches = patches
        self.sparse = sparse
        self.batch = lower.shape[0]
        self.consumers = net.consumers()
        relu_stops = how.intermediate in ("interval", "fast")
        self.stops = frozenset({0, *net.relus}) if relu_stops else frozenset({0})
        self.states = exact_states(net, self.stops)
        self.boxes: dict[int, Box] = {0: (lower, upper)}
        self.pre: dict[int, Box] = {}
        self.lines: dict[int, RelaxationTensors] = {}
        self._forms: dict[int, _Forms] = {}
        self._relu_boxes: dict[int, Box] | None = None
        self._stop_cache: dict[frozenset[int], _Stops] = {}
        self.rigorous = rigorous
        self._magnitudes: dict[int, Tensor] = {}
        self._depths: dict[int, int] = {}
        self.compute_intermediate()

    @property
    def input_box(self) -> Box:
        return self.boxes[0]

    # -- intermediate bounds ------------------------------------------------------------------------

    def compute_intermediate(self) -> None:
        """Pre-activation bounds and lines of every ReLU (and the boxes after them where they stop rows)."""
        for index in self.net.relus:
            source = self.net.nodes[index].inputs[0]
            pre_lower, pre_upper = self.node_bounds(source)
            if self.rigorous:
                margin = self.rounding_margin(source)
                pre_lower, pre_upper = pre_lower - margin, pre_upper + margin
            values = self.values_at(index, pre_lower, pre_upper)
            lines = self.relu_lines(pre_lower, pre_upper, values, index)
            self.pre[index] = (pre_lower, pre_upper)
            self.lines[index] = lines
            if self.how.intermediate == "interval":
                t_lower, t_upper = self.relu_box(pre_lower, pre_upper, values)
                self.boxes[index] = (torch.relu(t_lower), torch.relu(t_upper))
            elif self.how.intermediate == "fast":
                self.boxes[index] = (lines.lower_offset, lines.upper_offset)

    def values_at(self, index: int, lower: Tensor, upper: Tensor) -> Mapping[str, Tensor] | None:
        """The per-neuron parameter values at ReLU ``index`` (``None``: the relaxation's own)."""
        return None if self.parameters is None else self.parameters(index, lower, upper)

    def relu_lines(
        self, lower: Tensor, upper: Tensor, values: Mapping[str, Tensor] | None, node: int
    ) -> RelaxationTensors:
        """The relaxation's lines on ``[lower, upper]`` (the one place the engine asks for them), for the
        ReLU of ``node`` (named when the relaxation returns lines of another shape than the bounds'):
        with per-neuron ``values`` only when given (a hand-written relaxer need not take them)."""
        got = _call(self.relaxation.coefficients, lower, upper, values)
        if not isinstance(got, RelaxationTensors):  # a hand-written relaxer may return any object with
            got = RelaxationTensors(  # the four fields (and perhaps ``zeros``)
                got.lower_slope,
                got.lower_offset,
                got.upper_slope,
                got.upper_offset,
                frozenset(getattr(got, "zeros", frozenset())),
            )
        for field in ("lower_slope", "lower_offset", "upper_slope", "upper_offset"):
            value = getattr(got, field)
            if value.shape != lower.shape:
                raise ValueError(
                    f"relaxation {self.relaxation.name!r} returned {field} of shape "
                    f"{tuple(value.shape)} at {self.net.describe(node)} whose bounds have shape "
                    f"{tuple(lower.shape)}; coefficients() must keep the shape"
                )
        return got

    def relu_box(self, lower: Tensor, upper: Tensor, values: Mapping[str, Tensor] | None) -> Box:
        """The bounds the relaxation's lines are evaluated on (its ``transform_bounds``), ``values`` as in
        :meth:`relu_lines`."""
        return _call(self.relaxation.transform_bounds, lower, upper, values)

    def node_bounds(self, index: int) -> Box:
        """Bounds of a node's output by the intermediate mode (exact images where they apply)."""
        if self.states[index] is not None:
            return self.exact_box(index)
        if self.how.intermediate == "forward":
            return self.forms(index).concretize()
        shape = self.net.nodes[index].out_shape
        if self.how.intermediate == "backsub" and self.use_patches:
            stops = self.patch_stops()
            if patch_rows.applies(self.net, stops, index):
                bounds = patch_rows.patch_bounds(
                    self.net, stops, self.lines, self.input_box[0], self.max_elements, index
                )
                return split_rows(bounds, shape)
        if self.how.intermediate == "backsub" and self.sparse:
            reference = self.stable_reference(index)
            if reference is not None and bool(reference[2].any()):
                return self._sparse_box(index, reference)
        rows = identity_rows(self.input_box[0], shape)
        return split_rows(self.rows_lower(index, rows, self.stops, self.max_elements), shape)

    def patch_stops(self) -> dict[int, Box]:
        """The boxes where rows stop, for the patch path (which leaves polyphase stops alone)."""
        stops = self.effective_stops(self.stops)
        boxes = {}
        for index, (kind, _) in stops.plan.items():
            if kind != "phases":
                stop = self.stop_at(stops, index)
                assert stop is not None
                boxes[index] = (stop.lower, stop.upper)
        return boxes

    def exact_box(self, index: int) -> Box:
        """The box of a node with an exact state (memoised), by interval arithmetic in centre/radius form."""
        return self._interval_box(index, self.boxes)

    def _interval_box(self, index: int, boxes: dict[int, Box]) -> Box:
        """The interval image of node ``index`` from ``boxes`` (memoised there), its affine operations
        mapping the boxes of their inputs. A method, not a recursive closure: a closure that calls
        itself is a reference cycle, which would keep the Bounder and its autograd graph alive until
        the cyclic collector runs."""
        if index not in boxes:
            node = self.net.nodes[index]
            assert isinstance(node.op, AffineOp)
            boxes[index] = node.op.interval(*(self._interval_box(i, boxes) for i in node.inputs))
        return boxes[index]

    # -- sparse rows ------------------------------------------------------------------------------------

    def stable_reference(self, index: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """Interval bounds of a node from the boxes ``[relu(l), relu(u)]`` after every earlier ReLU, and
        which of its neurons need no rows (stable in every example, with the ReLU itself as lines)."""
        relus = frozenset({0, *self.pre})
        states = exact_states(self.net, relus)
        if states[index] is None:
            return None
        if self._relu_boxes is None:
            self._relu_boxes = {0: self.input_box}
        boxes = self._relu_boxes
        for relu, (low, high) in self.pre.items():
            boxes.setdefault(relu, (low.relu(), high.relu()))
        ref_lower, ref_upper = self._interval_box(index, boxes)
        with torch.no_grad():
            got = self.relu_lines(ref_lower.detach(), ref_upper.detach(), None, index)
            zero = [value == 0 for value in got.tensors]
            negative = (ref_upper <= 0) & zero[0] & zero[1] & zero[2] & zero[3]
            one = [got.lower_slope == 1, got.upper_slope == 1]
            positive = (ref_lower >= 0) & one[0] & zero[1] & one[1] & zero[3]
            skip = (negative | positive).flatten(1).all(dim=0)
        return ref_lower, ref_upper, skip

    def _sparse_box(self, index: int, reference: tuple[Tensor, Tensor, Tensor]) -> Box:
        ref_lower, ref_upper, skip = reference
        keep = (~skip).nonzero().squeeze(1)
        kept = keep.numel()
        if kept == 0:
            return ref_lower, ref_upper
        shape = self.net.nodes[index].out_shape
        rows = identity_rows(self.input_box[0], shape, keep)
        bounds = self.rows_lower(index, rows, self.stops, self.max_elements)
        pre_lower = ref_lower.flatten(1).index_copy(1, keep, bounds[:, :kept])
        pre_upper = ref_upper.flatten(1).index_copy(1, keep, -bounds[:, kept:])
        return pre_lower.reshape(ref_lower.shape), pre_upper.reshape(ref_upper.shape)

    # -- backsubstitution -------------------------------------------------------------------------------

    def effective_stops(self, stops: frozenset[int]) -> _Stops:
        """The boxes rows are concretised on: each stop's, moved forward through the chain of diagonal
        operations that only it reads (they map a box onto a box), and a convolution right after such a
        box in polyphase order. Stops themselves stay (rows starting before the chain reach them).

        Which nodes are stops is decided here; their boxes are computed when rows first reach them
        (rows from the final layer of an interval computation reach only the last stop)."""
        key = frozenset(s for s in stops if s in self.boxes)
        if key in self._stop_cache:
            return self._stop_cache[key]
        plan: dict[int, tuple[str, int]] = {}
        for stop in sorted(key):
            plan[stop] = ("box", stop)
            current = stop
            while len(self.consumers[current]) == 1:
                nxt = self.consumers[current][0]
                op = self.net.nodes[nxt].op
                if not (isinstance(op, AffineOp) and op.diagonal and len(self.net.nodes[nxt].inputs) == 1):
                    break
                plan[nxt] = ("diagonal", current)
                current = nxt
            if len(self.consumers[current]) == 1:
                nxt = self.consumers[current][0]
                op = self.net.nodes[nxt].op
                if isinstance(op, Conv) and op.has_phases:
                    plan[nxt] = ("phases", current)
        result = self._stop_cache[key] = _Stops(plan, {})
        return result

    def stop_at(self, stops: _Stops, index: int) -> _Stop | None:
        """The box rows reaching node ``index`` are concretised on (``None``: not a stop), made once."""
        if index not in stops.plan:
            return None
        made = stops.made.get(index)
        if made is None:
            kind, source = stops.plan[index]
            made = stops.made[index] = self._make_stop(index, kind, source, stops)
        return made

    def _make_stop(self, index: int, kind: str, source: int, stops: _Stops) -> _Stop:
        """The box of one effective stop (see :meth:`effective_stops`) from the stop before it."""
        if kind == "box":
            return _Stop(*self.boxes[index])
        before = self.stop_at(stops, source)
        assert before is not None
        op = self.net.nodes[index].op
        if kind == "phases":
            assert isinstance(op, Conv)
            return _Stop(op.phase_layout(before.lower), op.phase_layout(before.upper), phases=True)
        low, high = op.forward(before.lower), op.forward(before.upper)
        lower, upper = torch.minimum(low, high), torch.maximum(low, high)
        if self.rigorous:
            margin = self.rounding_margin(index)
            lower, upper = lower - margin, upper + margin
        return _Stop(lower, upper)

    def _widest(self, start: int, first: int) -> int:
        return max(math.prod(node.out_shape) for node in self.net.nodes[first : start + 1])

    def rows_lower(self, start: int, rows: Tensor, stops: frozenset[int], max_elements: int) -> Tensor:
        """Lower bounds ``(B, R)`` of ``rows·z_start`` (rows ``(B or 1, R, *shape)``), pulled back to the
        boxes of ``stops``, in chunks."""
        where = self.effective_stops(stops)
        first = min(where.plan)
        widest = self._widest(start, first)
        chunk = self.chunk_size or max(1, max_elements // max(1, self.batch * widest))
        results = [
            self.pull_back(start, rows[:, k : k + chunk], where) for k in range(0, rows.shape[1], chunk)
        ]
        return torch.cat(results, dim=1)

    def pull_back(self, start: int, rows: Tensor, stops: _Stops) -> Tensor:
        """Lower bound ``(B, S)`` of ``rows·z_start`` by backsubstitution to the boxes of ``stops``."""
        pending: dict[int, Tensor] = {start: rows}
        bias: Tensor = rows.new_zeros(rows.shape[:2])
        nodes = self.net.nodes
        for index in range(start, -1, -1):
            current = pending.pop(index, None)
            if current is None:
                continue
            stop = self.stop_at(stops, index)
            if stop is not None:
                if stop.phases:
                    op = nodes[index].op
                    assert isinstance(op, Conv)
                    current, layer_bias = op.backward_phases(current)
                    if layer_bias is not None:
                        bias = bias + layer_bias
                bias = concretize(current, bias, stop.lower, stop.upper)
                continue
            node = nodes[index]
            op = node.op
            if isinstance(op, Relu):
                current, bias = relu_backward(current, bias, self.lines[index])
                passed: Sequence[Tensor | None] = (current,)
            else:
                assert isinstance(op, AffineOp), f"rows reached {self.net.describe(index)} without a box"
                passed, layer_bias = op.backward(current)
                if layer_bias is not None:
                    bias = bias + layer_bias
            for source, part in zip(node.inputs, passed, strict=True):
                if part is not None:
                    pending[source] = pending[source] + part if source in pending else part
        return bias

    # -- forward forms -------------------------------------------------------------------------------

    def forms(self, index: int) -> _Forms:
        """The lower and upper affine forms of a node's output in the input's error terms (memoised)."""
        if index in self._forms:
            return self._forms[index]
        node = self.net.nodes[index]
        op = node.op
        if isinstance(op, Input):
            lower, upper = self.input_box
            centre, radius = (upper + lower) * 0.5, (upper - lower) * 0.5
            n = math.prod(op.out_shape)
            eye = torch.eye(n, dtype=radius.dtype, device=radius.device).reshape(1, n, *op.out_shape)
            gens = eye * radius.unsqueeze(1)
            forms = _Forms(gens, gens, centre, centre)
        elif isinstance(op, Relu):
            source = self.forms(node.inputs[0])
            if index not in self.lines:  # forward intermediate bounds are read off the forms
                pre = source.concretize()
                self.pre[index] = pre
                self.lines[index] = self.relu_lines(*pre, self.values_at(index, *pre), index)
            forms = source.relu(self.lines[index])
        else:
            assert isinstance(op, AffineOp)
            forms = _Forms.affine(op, [self.forms(i) for i in node.inputs])
        self._forms[index] = forms
        return forms

    def final_forward(self, rows: Tensor) -> Tensor:
        """Lower bounds ``(B, S)`` of ``rows·z_out``: rows pulled back through the affine nodes after the
        last ReLUs (elision), then applied to the forms where they arrive (ReLU outputs, the input)."""
        pending: dict[int, Tensor] = {len(self.net.nodes) - 1: rows}
        bias: Tensor = rows.new_zeros(rows.shape[0], rows.shape[1])
        total_gens: Tensor | None = None
        for index in range(len(self.net.nodes) - 1, -1, -1):
            current = pending.pop(index, None)
            if current is None:
                continue
            node = self.net.nodes[index]
            op = node.op
            if isinstance(op, Relu | Input):
                gens, constant = self.forms(index).apply(current)
                bias = bias + constant
                total_gens = gens if total_gens is None else total_gens + gens
                continue
            assert isinstance(op, AffineOp)
            passed, layer_bias = op.backward(current)
            if layer_bias is not None:
                bias = bias + layer_bias
            for source, part in zip(node.inputs, passed, strict=True):
                if part is not None:
                    pending[source] = pending[source] + part if source in pending else part
        assert total_gens is not None
        return bias - total_gens.abs().sum(-1)

    # -- rounding -----------------------------------------------------------------------------------

    def magnitude(self, index: int) -> Tensor:
        """``(B, *shape)``: a bound on the magnitude of every term the computation of a node's bounds
        sums, the same computation on absolute values: the input box's largest ``|x|``; an affine node
        ``|L|(A) + |offset|``; a ReLU ``max|slope|·A + max|offset|`` (and its box's ends, where rows
        stop there)."""
        if index not in self._magnitudes:
            node = self.net.nodes[index]
            op = node.op
            if isinstance(op, Input):
                lower, upper = self.input_box
                value = torch.maximum(lower.abs(), upper.abs())
            elif isinstance(op, Relu):
                lines = self.lines[index]
                slope = torch.maximum(lines.lower_slope.abs(), lines.upper_slope.abs())
                offset = torch.maximum(lines.lower_offset.abs(), lines.upper_offset.abs())
                value = slope * self.magnitude(node.inputs[0]) + offset
                if index in self.boxes:
                    low, high = self.boxes[index]
                    value = torch.maximum(value, torch.maximum(low.abs(), high.abs()))
            else:
                assert isinstance(op, AffineOp)
                inputs = [self.magnitude(i) for i in node.inputs]
                offset = op.forward(*(torch.zeros_like(a) for a in inputs)).abs()
                value = op.linear_abs(*(a.unsqueeze(1) for a in inputs)).squeeze(1) + offset
            self._magnitudes[index] = value.detach()
        return self._magnitudes[index]

    def depth(self, index: int) -> int:
        """The roundings a term of a node's bound undergoes on its longest path: a product and the
        terms of each sum (a node's fan-in) per operation, the line evaluations at each ReLU."""
        if index not in self._depths:
            node = self.net.nodes[index]
            op = node.op
            below = max((self.depth(i) for i in node.inputs), default=0)
            if isinstance(op, Input):
                fan_in = 0
            elif isinstance(op, Relu):
                fan_in = 6
            elif isinstance(op, Linear):
                fan_in = int(op.weight.shape[-1]) + 2
            elif isinstance(op, Conv):
                fan_in = int(math.prod(op.weight.shape[1:])) + 2
            else:
                fan_in = len(node.inputs) + 2
            self._depths[index] = below + fan_in
        return self._depths[index]

    def _gamma(self, index: int) -> float:
        """``2·γ_K``, ``K`` the node's depth plus the sum over the input box and the constants."""
        unit = 2.0**-53 if self.input_box[0].dtype == torch.float64 else 2.0**-24
        count = self.depth(index) + math.prod(self.net.input_shape) + 4
        if count * unit >= 0.5:
            return math.inf
        return 2.0 * count * unit / (1.0 - count * unit)

    def rounding_margin(self, index: int) -> Tensor:
        """``(B, *shape)``: a bound on the rounding error of a node's computed bounds, ``2·γ_K·A``
        (Higham's bound for sums and products, ``A`` the :meth:`magnitude`, ``K`` the :meth:`depth`)."""
        return self._gamma(index) * self.magnitude(index)

    # -- the final bound -----------------------------------------------------------------------------

    def bound(self, spec: Tensor, lower_only: bool, max_elements: int | None = None) -> Box:
        """Bounds ``(B, S)`` of ``spec·f(x)``, ``spec`` ``(B, S, K)``; ``ub`` is ``+inf`` with ``lower_only``."""
        batch, specs = spec.shape[:2]
        both = spec if lower_only else torch.cat([spec, -spec], dim=1)
        rows = both.reshape(batch, both.shape[1], *self.net.output_shape)
        out = len(self.net.nodes) - 1
        if self.how.final == "forward":
            bounds = self.final_forward(rows)
        else:
            stops = self.stops if self.how.final == "fast" else frozenset({0})
            bounds = self.rows_lower(out, rows, stops, max_elements or DEFAULT_MAX_ELEMENTS)
        if self.rigorous:
            magnitude = (rows.abs().flatten(2) @ self.magnitude(out).flatten(1).unsqueeze(-1)).squeeze(-1)
            bounds = bounds - self._gamma(out) * magnitude
        if lower_only:
            return bounds, torch.full_like(bounds, math.inf)
        return bounds[:, :specs], -bounds[:, specs:]


def _call(
    method: Callable[..., Any], lower: Tensor, upper: Tensor, values: Mapping[str, Tensor] | None
) -> Any:
    """``method(lower, upper)``, with ``values=`` only when given."""
    return method(lower, upper) if values is None else method(lower, upper, values=values)


@attrs.define(eq=False)
class _Forms:
    """``lower_gens·ε + lower_const <= z <= upper_gens·ε + upper_const`` for ``ε`` in ``[-1, 1]^n``.

    Generators are ``(B, n, *shape)``, constants ``(B, *shape)``; ``lower_gens is upper_gens`` when
    the two forms share their linear part (a hybrid zonotope: the gap is a box part).
    """

    lower_gens: Tensor
    upper_gens: Tensor
    lower_const: Tensor
    upper_const: Tensor

    @property
    def shared(self) -> bool:
        return self.lower_gens is self.upper_gens

    def concretize(self) -> Box:
        lower = self.lower_const - self.lower_gens.abs().sum(1)
        return lower, self.upper_const + self.upper_gens.abs().sum(1)

    @staticmethod
    def affine(op: AffineOp, inputs: list[_Forms]) -> _Forms:
        centres = [(f.upper_const + f.lower_const) * 0.5 for f in inputs]
        radii = [((f.upper_const - f.lower_const) * 0.5).unsqueeze(1) for f in inputs]
        centre, radius = op.forward(*centres), op.linear_abs(*radii).squeeze(1)
        if all(f.shared for f in inputs):
            gens = op.linear(*(f.lower_gens for f in inputs))
            return _Forms(gens, gens, centre - radius, centre + radius)
        mids = [(f.upper_gens + f.lower_gens) * 0.5 if not f.shared else f.lower_gens for f in inputs]
        halves = [
            (f.upper_gens - f.lower_gens) * 0.5 if not f.shared else torch.zeros_like(f.lower_gens)
            for f in inputs
        ]
        mid, half = op.linear(*mids), op.linear_abs(*halves)
        return _Forms(mid - half, mid + half, centre - radius, centre + radius)

    def relu(self, lines: RelaxationTensors) -> _Forms:
        lower_slope, upper_slope = lines.lower_slope, lines.upper_slope
        if lower_slope is not upper_slope and torch.equal(lower_slope, upper_slope):
            upper_slope = lower_slope
        low_pos, low_neg = _signs(lower_slope)
        up_pos, up_neg = _signs(upper_slope)
        lower_const = _mix(low_pos, self.lower_const, low_neg, self.upper_const) + lines.lower_offset
        upper_const = _mix(up_pos, self.upper_const, up_neg, self.lower_const) + lines.upper_offset
        if self.shared and lower_slope is upper_slope:
            gens = self.lower_gens * lower_slope.unsqueeze(1)
            return _Forms(gens, gens, lower_const, upper_const)
        lower_gens = _mix(_lift(low_pos), self.lower_gens, _lift(low_neg), self.upper_gens)
        upper_gens = _mix(_lift(up_pos), self.upper_gens, _lift(up_neg), self.lower_gens)
        return _Forms(lower_gens, upper_gens, lower_const, upper_const)

    def apply(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Lower form of ``rows·z`` (rows ``(B, S, *shape)``): generators ``(B, S, n)`` and constant ``(B, S)``."""
        positive, negative = rows.clamp(min=0), rows.clamp(max=0)
        flat_rows = positive.flatten(2), negative.flatten(2)
        lower_gens, upper_gens = self.lower_gens.flatten(2), self.upper_gens.flatten(2)
        if self.shared:
            gens = rows.flatten(2) @ lower_gens.transpose(1, 2)
        else:
            gens = flat_rows[0] @ lower_gens.transpose(1, 2) + flat_rows[1] @ upper_gens.transpose(1, 2)
        constant = (
            flat_rows[0] @ self.lower_const.flatten(1).unsqueeze(-1)
            + flat_rows[1] @ self.upper_const.flatten(1).unsqueeze(-1)
        ).squeeze(-1)
        return gens, constant


def _signs(slope: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(max(slope, 0), min(slope, 0))``, the second ``None`` when no slope is negative."""
    if bool((slope >= 0).all()):
        return slope, None
    return slope.clamp(min=0), slope.clamp(max=0)


def _lift(value: Tensor | None) -> Tensor | None:
    return None if value is None else value.unsqueeze(1)


def _mix(a: Tensor | None, x: Tensor, b: Tensor | None, y: Tensor) -> Tensor:
    """``a·x + b·y`` with absent factors left out."""
    assert a is not None
    return a * x if b is None else a * x + b * y


# -- entry points ---------------------------------------------------------------------------------


def _check_box(net: Network, lower: Tensor, upper: Tensor) -> None:
    if lower.shape != upper.shape:
        raise ValueError(
            f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} must have the same shape"
        )
    if tuple(lower.shape[1:]) != net.input_shape:
        raise ValueError(
            f"input bounds have shape {tuple(lower.shape)} but the network takes (batch, {net.input_shape})"
        )
    if lower.dtype != upper.dtype or not lower.is_floating_point():
        raise ValueError("lower and upper must be floating-point tensors of the same dtype")


def spec_matrix(spec: Tensor | None, batch: int, outputs: int, like: Tensor) -> Tensor:
    """``C`` as ``(B, S, K)`` (the identity by default; a shared ``(S, K)`` expanded)."""
    if spec is None:
        eye = torch.eye(outputs, dtype=like.dtype, device=like.device)
        return eye.unsqueeze(0).expand(batch, outputs, outputs)
    if spec.dim() == 2:
        spec = spec.unsqueeze(0).expand(batch, *spec.shape)
    if spec.dim() != 3 or spec.shape[0] != batch or spec.shape[2] != outputs:
        raise ValueError(
            f"C must have shape (batch={batch}, specs, outputs={outputs}) or (specs, {outputs}); "
            f"got {tuple(spec.shape)}"
        )
    return spec.to(dtype=like.dtype, device=like.device)


def bounder(
    network: Network | nn.Module,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    patches: bool = True,
    sparse: bool = False,
    clean: Tensor | None = None,
    rigorous: bool = False,
    parameters: ParameterSource | None = None,
) -> Bounder:
    """A :class:`Bounder` with the intermediate bounds computed (the model parsed once, if it is a module).

    :param network: a :class:`Network` or any module :func:`~relaxlab.engine.parse.parse_model`
        accepts (parsed for ``lower``'s shape, dtype and device).
    :param clean: the clean batch, for ``BatchNorm`` in train mode (when ``network`` is a module).
    """
    net = (
        network
        if isinstance(network, Network)
        else parse_model(network, tuple(lower.shape[1:]), dtype=lower.dtype, device=lower.device, clean=clean)
    )
    _check_box(net, lower, upper)
    how = propagation(relaxation, mode)
    check_chunking(chunk_size, max_elements)
    return Bounder(
        net,
        lower,
        upper,
        relaxation,
        how,
        chunk_size=chunk_size,
        max_elements=max_elements,
        patches=patches,
        sparse=sparse,
        rigorous=rigorous,
        parameters=parameters,
    )


def intermediate_bounds(
    network: Network | nn.Module,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    patches: bool = True,
    sparse: bool = False,
    clean: Tensor | None = None,
) -> tuple[list[Box], list[RelaxationTensors]]:
    """Pre-activation bounds and relaxation lines of every ReLU, in node order.

    :param network: a parsed :class:`Network` or a module (parsed for ``lower``'s shape).
    :param lower: ``(B, *input_shape)`` input lower bounds; ``upper`` likewise.
    :param relaxation: any object with the relaxation contract (:class:`Relaxer`).
    :param mode: ``"auto"`` (from the relaxation), or force ``"backsub"`` / ``"interval"`` /
        ``"forward"`` for the intermediate bounds (``"fast"``: interval arithmetic with the lines'
        offsets as the box after each ReLU, for relaxations whose slopes are all 0).
    :param patches: backsubstitute the neurons of convolutional nodes in patches where the graph
        allows it (:mod:`relaxlab.engine.patches`; the same numbers up to rounding).
    :param sparse: with backsubstitution, skip the rows of neurons that interval arithmetic from
        the previous ReLUs' boxes ``[relu(l), relu(u)]`` proves stable for every example of the
        batch *and* whose lines there are the ReLU itself (``y = 0`` or ``y = x``); they keep the
        interval bounds. The result equals the full computation whenever backsubstitution would
        also have found them stable; otherwise the exact ReLU replaces a relaxed one (other
        numbers, still sound: seen for App. H relaxations whose backsubstitution is looser than
        intervals, e.g. CROWN-0-C). Off by default.
    :return: ``[(l, u)]`` with shapes ``(B, *relu_shape)`` and the lines at those bounds, one per ReLU.
    """
    run = bounder(
        network,
        lower,
        upper,
        relaxation,
        mode=mode,
        chunk_size=chunk_size,
        max_elements=max_elements,
        patches=patches,
        sparse=sparse,
        clean=clean,
    )
    order = run.net.relus
    return [run.pre[i] for i in order], [run.lines[i] for i in order]


def bound_network(
    network: Network | nn.Module,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    C: Tensor | None = None,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    lower_only: bool = False,
    patches: bool = True,
    sparse: bool = False,
    clean: Tensor | None = None,
) -> Box:
    """Sound lower and upper bounds of ``C·f(x)`` for all ``x`` in ``[lower, upper]``.

    :param network: a parsed :class:`Network` or a module (parsed for ``lower``'s shape, dtype
        and device; ``clean`` is the clean batch for ``BatchNorm`` in train mode).
    :param lower: ``(B, *input_shape)`` input lower bounds.
    :param upper: ``(B, *input_shape)`` input upper bounds.
    :param relaxation: the ReLU relaxation (an object with the :class:`Relaxer` contract).
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows over the ``K`` outputs; default the
        identity. Backsubstitution starts from these rows (elision of the last affine layers).
    :param mode: see :func:`intermediate_bounds` and :func:`propagation`.
    :param chunk_size: rows of intermediate specifications pulled back at once; default: as
        many as fit in ``max_elements`` coefficient entries.
    :param max_elements: budget for one coefficient tensor ``(B, rows, n)``, in elements; default
        :func:`default_max_elements` for intermediate specifications (``2^21`` on the CPU, where
        cache-sized chunks are faster, ``2^26`` elsewhere) and ``2^26`` for the final one.
    :param lower_only: skip the upper bounds of the final specification (half the work of
        the final pass); ``ub`` is then ``+inf``, a trivially sound upper bound.
    :param patches: see :func:`intermediate_bounds`.
    :param sparse: see :func:`intermediate_bounds`.
    :return: ``(lb, ub)``, each ``(B, S)``.
    """
    run = bounder(
        network,
        lower,
        upper,
        relaxation,
        mode=mode,
        chunk_size=chunk_size,
        max_elements=max_elements,
        patches=patches,
        sparse=sparse,
        clean=clean,
    )
    spec = spec_matrix(C, lower.shape[0], run.net.output_dim, lower)
    return run.bound(spec, lower_only, max_elements)
