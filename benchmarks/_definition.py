"""IBP, CROWN and CROWN-IBP written densely from their definitions: a third opinion for the comparisons.

Nothing of relaxlab's engine is used. A model is traced with ``torch.fx`` (``relaxlab.nn.Normalize``
and torch's layers as leaves) into a DAG of flat nodes: the input, affine maps ``z = W a + b``
(``W`` is the Jacobian, read off by running the layer on the unit vectors; every supported layer
is affine: Linear, Conv2d, BatchNorm in eval mode, AvgPool2d, Flatten, Normalize, Identity), sums of two nodes, and ReLUs. Then, for a batch of input boxes:

- **IBP** (Gowal et al. 2018): intervals node by node; an affine map sends centre ``c`` and
  radius ``r`` to ``W c + b`` and ``|W| r``, a sum adds intervals, a ReLU clamps both ends;
  the final specification ``C`` is folded into the last affine map first.
- **CROWN** (Zhang et al. 2018, backward mode as in Xu et al. 2020): the pre-activation bounds of
  every ReLU, in topological order, are the CROWN bounds of the sub-network before it, obtained
  by backsubstituting the identity rows; ReLU lines for ``l < 0 < u``: upper ``λ(x - l)`` with
  ``λ = u / (u - l)``, lower ``x`` if ``u > -l`` else ``0``; ``y = 0`` if ``u <= 0``, ``y = x``
  if ``l >= 0``. A lower bound of ``A·z`` takes the lower line where a coefficient is
  positive and the upper line where it is negative; rows reaching the input are concretised on
  the box. A node's rows are the sum of what its consumers pulled back to it.
- **CROWN-IBP**: IBP's pre-activation bounds, then CROWN's backsubstitution of ``C`` only.

Everything is dense float64 matrices: meant for networks with at most a few thousand neurons.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.nn import Normalize

_AFFINE_MODULES = (
    nn.Linear,
    nn.Conv2d,
    nn.modules.batchnorm._BatchNorm,
    nn.AvgPool2d,
    nn.Flatten,
    Normalize,
    nn.Identity,
)


class Tracer(torch.fx.Tracer):
    """torch's layers and ``relaxlab.nn.Normalize`` are leaves; everything else is traced into."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, module_qualified_name)


def is_relu(node: torch.fx.Node, root: nn.Module) -> bool:
    """Whether an fx node of ``root``'s graph is a ReLU (module, function or method)."""
    if node.op == "call_module":
        return isinstance(root.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu)
    return node.op == "call_method" and node.target == "relu"


class DenseNetwork:
    """A model as dense nodes ``("input",)``, ``("affine", src, W, b)``, ``("add", a, b)``, ``("relu", src)``."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        if model.training:
            raise ValueError("the dense reference bounds models in eval mode only")
        graph = Tracer().trace(model)
        self.nodes: list[tuple] = []
        index: dict[torch.fx.Node, int] = {}
        shapes: dict[int, tuple[int, ...]] = {}
        for node in graph.nodes:
            if node.op == "placeholder":
                index[node] = self._add(("input",))
                shapes[index[node]] = tuple(input_shape)
            elif node.op == "output":
                self.output = index[node.args[0]]
            elif is_relu(node, model):
                src = index[node.args[0]]
                index[node] = self._add(("relu", src))
                shapes[index[node]] = shapes[src]
            elif node.op == "call_function" and node.target in (operator.add, torch.add):
                a, b = (index[arg] for arg in node.args)
                index[node] = self._add(("add", a, b))
                shapes[index[node]] = shapes[a]
            else:
                src = index[node.args[0]]
                fn = self._affine_function(node, model)
                W, b, out_shape = self._jacobian(fn, shapes[src])
                index[node] = self._add(("affine", src, W, b))
                shapes[index[node]] = out_shape
        self.shapes = shapes

    def _add(self, node: tuple) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    @staticmethod
    def _affine_function(node: torch.fx.Node, root: nn.Module) -> Callable[[Tensor], Tensor]:
        if node.op == "call_module":
            module = root.get_submodule(str(node.target))
            if not isinstance(module, _AFFINE_MODULES):
                raise ValueError(f"the dense reference does not know {type(module).__name__}")
            return module
        if node.op == "call_function" and node.target is torch.flatten:
            return lambda x: torch.flatten(x, *node.args[1:], **node.kwargs)
        if node.op == "call_method" and node.target == "flatten":
            return lambda x: x.flatten(*node.args[1:], **node.kwargs)
        raise ValueError(f"the dense reference does not know {node.op} {node.target}")

    @staticmethod
    def _jacobian(
        fn: Callable[[Tensor], Tensor], shape: tuple[int, ...]
    ) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        n = math.prod(shape)
        with torch.no_grad():
            zero = fn(torch.zeros(1, *shape, dtype=torch.float64))
            basis = fn(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
        b = zero.reshape(-1)
        W = (basis.reshape(n, -1) - b).T.contiguous()
        return W, b, tuple(zero.shape[1:])

    # -----------------------------------------------------------------------------------------

    def ibp(
        self, lower: Tensor, upper: Tensor, C: Tensor | None = None, *, exact_segments: bool = False
    ) -> tuple[list, Tensor, Tensor]:
        """Interval arithmetic: ``(pre-activation boxes per ReLU, lb, ub)`` of ``C·f``.

        Per node (IBP's definition), or with ``exact_segments`` the exact interval image of the
        affine sub-graph between the ReLUs (and the input): each node is kept as an affine form
        ``Σ_s W_s a_s + b`` of the boxes ``a_s`` after the ReLUs it depends on, concretised only at a
        ReLU. The two agree when every path between ReLUs has at most one non-diagonal layer and
        the sides of a sum depend on different ReLUs; the second is never looser.
        """
        batch = lower.shape[0]
        boxes: dict[int, tuple[Tensor, Tensor]] = {}
        forms: dict[int, tuple[dict[int, Tensor], Tensor]] = {}
        pre: list[tuple[Tensor, Tensor]] = []

        def concretise(form: tuple[dict[int, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
            weights, bias = form
            centre = bias.expand(batch, *bias.shape[-1:]).clone()
            radius = torch.zeros_like(centre)
            for stop, W in weights.items():
                lo, hi = boxes[stop]
                pattern = "bij,bj->bi" if W.dim() == 3 else "ij,bj->bi"  # W is (B, S, n) once C is folded in
                centre = centre + torch.einsum(pattern, W, (hi + lo) / 2)
                radius = radius + torch.einsum(pattern, W.abs(), (hi - lo) / 2)
            return centre - radius, centre + radius

        last = len(self.nodes) - 1
        for i, node in enumerate(self.nodes):
            kind = node[0]
            if kind in ("input", "relu"):
                if kind == "input":
                    boxes[i] = (lower.reshape(batch, -1), upper.reshape(batch, -1))
                else:
                    lo, hi = concretise(forms[node[1]])
                    pre.append((lo, hi))
                    boxes[i] = (lo.clamp_min(0), hi.clamp_min(0))
                n = boxes[i][0].shape[1]
                forms[i] = ({i: torch.eye(n, dtype=lower.dtype)}, lower.new_zeros(n))
                continue
            if kind == "affine":
                _, src, W, b = node
                if i == self.output == last and C is not None:
                    W, b = C @ W, C @ b  # the specification folded into the last affine map
                weights, bias = forms[src]
                form = ({stop: W @ V for stop, V in weights.items()}, W @ bias + b)
            else:
                (wa, ba), (wb, bb) = forms[node[1]], forms[node[2]]
                merged = dict(wa)
                for stop, V in wb.items():
                    merged[stop] = merged[stop] + V if stop in merged else V
                form = (merged, ba + bb)
            if not exact_segments:  # IBP: every node is concretised and restarts from its own box
                boxes[i] = concretise(form)
                n = boxes[i][0].shape[1]
                form = ({i: torch.eye(n, dtype=lower.dtype)}, lower.new_zeros(n))
            forms[i] = form
        return pre, *concretise(forms[self.output])

    @staticmethod
    def crown_lines(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """CROWN's ``(lower slope, lower offset, upper slope, upper offset)`` at ``[lo, hi]``."""
        negative, positive = hi <= 0, lo >= 0
        unstable = ~negative & ~positive
        lam = torch.where(unstable, hi / torch.where(unstable, hi - lo, 1.0), positive.to(lo.dtype))
        upper_offset = torch.where(unstable, -lam * lo, 0.0)
        lower_slope = torch.where(unstable, (hi > -lo).to(lo.dtype), positive.to(lo.dtype))
        return lower_slope, torch.zeros_like(lo), lam, upper_offset

    def _backsub(self, start: int, rows: Tensor, lines: dict, lower: Tensor, upper: Tensor) -> Tensor:
        """Lower bound ``(B, R)`` of ``rows·z_start`` (rows ``(B, R, n_start)``)."""
        pending = {start: rows}
        bias = rows.new_zeros(rows.shape[:2])
        for i in range(start, -1, -1):
            A = pending.pop(i, None)
            if A is None:
                continue
            node = self.nodes[i]
            kind = node[0]
            if kind == "input":
                lo, hi = lower.reshape(lower.shape[0], -1), upper.reshape(upper.shape[0], -1)
                bias = (
                    bias
                    + torch.einsum("brn,bn->br", A.clamp_min(0), lo)
                    + torch.einsum("brn,bn->br", A.clamp_max(0), hi)
                )
                continue
            if kind == "affine":
                _, src, W, b = node
                bias = bias + A @ b
                passed = [(src, A @ W)]
            elif kind == "add":
                passed = [(node[1], A), (node[2], A)]
            else:
                ls, lo_off, us, up_off = lines[i]
                pos, neg = A.clamp_min(0), A.clamp_max(0)
                bias = (
                    bias + torch.einsum("brn,bn->br", pos, lo_off) + torch.einsum("brn,bn->br", neg, up_off)
                )
                passed = [(node[1], pos * ls.unsqueeze(1) + neg * us.unsqueeze(1))]
            for src, part in passed:
                pending[src] = pending[src] + part if src in pending else part
        return bias

    def _bounds(
        self, start: int, rows: Tensor, lines: dict, lower: Tensor, upper: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self._backsub(start, rows, lines, lower, upper), -self._backsub(
            start, -rows, lines, lower, upper
        )

    def crown(
        self,
        lower: Tensor,
        upper: Tensor,
        C: Tensor | None = None,
        *,
        interval_intermediate: bool = False,
        exact_segments: bool = False,
    ) -> tuple[list, Tensor, Tensor]:
        """CROWN (or, with ``interval_intermediate``, CROWN-IBP): ``(pre-activation boxes, lb, ub)``.

        :param exact_segments: CROWN-IBP's intermediate bounds by :meth:`ibp` with ``exact_segments``.
        """
        batch = lower.shape[0]
        ibp_pre = self.ibp(lower, upper, exact_segments=exact_segments)[0] if interval_intermediate else None
        lines: dict[int, tuple[Tensor, ...]] = {}
        pre: list[tuple[Tensor, Tensor]] = []
        for i, node in enumerate(self.nodes):
            if node[0] != "relu":
                continue
            src = node[1]
            if ibp_pre is not None:
                lo, hi = ibp_pre[len(pre)]
            else:
                n = math.prod(self.shapes[src])
                eye = torch.eye(n, dtype=lower.dtype).expand(batch, n, n)
                lo, hi = self._bounds(src, eye, lines, lower, upper)
            pre.append((lo, hi))
            lines[i] = self.crown_lines(lo, hi)
        n_out = math.prod(self.shapes[self.output])
        rows = torch.eye(n_out, dtype=lower.dtype).expand(batch, n_out, n_out) if C is None else C
        return pre, *self._bounds(self.output, rows, lines, lower, upper)
