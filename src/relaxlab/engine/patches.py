"""Bounds of every neuron of a convolutional node by backsubstitution in *patches*.

The row of neuron ``(c, i, j)`` of a convolutional node is zero outside a small receptive
field on every earlier node. Full maps (:mod:`relaxlab.engine.bounder`) carry those zeros
through every layer; here each row is kept as its window only:

- a row on a node is a *patch*: coefficients of shape ``(C, h, w)``, together with the window's
  geometry, shared by all rows of the computation: position ``(i, j)`` of the top node starts
  its window at ``(i·S - O, j·S - O)`` of that node (``S`` the stride, ``O`` the origin);
- through a :class:`~relaxlab.engine.ops.PatchOp` (convolutions, per-channel scales and shifts)
  a patch is mapped by the operation's ``patch_linear`` and the window grows by
  ``patch_geometry``; the constant an operation adds is read at the window (zero outside the map);
- through a ReLU, the lines are read at the window (``F.unfold``); the step is the same as for
  full maps (:func:`relaxlab.engine.relu_step.relu_backward`), with the windows in the batch
  dimension; through a sum, each operand gets the patch;
- where two paths meet (a residual connection), their windows are aligned (same stride: the
  union of the windows, zero-padded) and summed;
- at the input box (moved through leading diagonal layers), the box is read at the windows and
  the rows concretised.

Positions of a window outside a map (padding) read zero lines, constants and boxes: they add
nothing, exactly as zero padding. The numbers equal those of full maps up to float rounding.
A padded convolution puts coefficients on such positions of its input's window; a ReLU step or
a box clears them, but a second convolution would carry them into the map (its transfer matrix
knows no padding), so a path with two convolutions between ReLUs whose upper one is padded
(``Conv(padding=1)`` after ``AvgPool2d(3, 1, 1)``, say) is left to full maps (:func:`_plan`).

Shapes: ``B`` batch, ``L`` positions of the top node (height × width), ``G`` rows per position
(a sign and a channel), ``K`` entries of a patch. A patch tensor is ``(N, G, K)`` with ``N = B·L``,
or ``N = 1`` while the rows are still the same for every example and position.

Used for the intermediate bounds of a node when every node between it and the input box is a
patch operation, a ReLU or a sum, with three-dimensional maps, and when the patches are
smaller than full maps (:func:`applies`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from relaxlab.core.relaxer import RelaxationTensors
from relaxlab.engine.network import Network
from relaxlab.engine.ops import Box, PatchOp, Relu, Sum
from relaxlab.engine.relu_step import concretize, relu_backward

#: Rows per position pulled back together, at least (a budget below one row per position is exceeded).
_MIN_GROUPS = 8

Pair = tuple[int, int]
Geometry = tuple[Pair, Pair, Pair]  # size, stride, origin


def windows(values: Tensor, geometry: Geometry, count: Pair) -> Tensor:
    """``values`` ``(b, C, H, W)`` read at ``count`` windows: ``(b·L, C·h·w)``, zero outside the map."""
    (h, w), (s_h, s_w), (p_h, p_w) = geometry
    n_h, n_w = count
    height, width = values.shape[-2:]
    # Rows -p_h .. (n_h - 1)·s_h + h - p_h of the map are read (columns likewise); pad with zeros
    # wherever that range leaves the map, then cut it out.
    end_h, end_w = (n_h - 1) * s_h + h - p_h, (n_w - 1) * s_w + w - p_w
    top, left = max(0, p_h), max(0, p_w)
    padded = F.pad(values, (left, max(0, end_w - width), top, max(0, end_h - height)))
    padded = padded[..., top - p_h : top + end_h, left - p_w : left + end_w]
    columns = F.unfold(padded, (h, w), stride=(s_h, s_w))  # (b, C·h·w, L)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def _union(a: Geometry, b: Geometry) -> Geometry | None:
    """The smallest window holding both (same stride), or ``None``."""
    if a[1] != b[1]:
        return None
    origin = (max(a[2][0], b[2][0]), max(a[2][1], b[2][1]))
    end = (max(a[0][0] - a[2][0], b[0][0] - b[2][0]), max(a[0][1] - a[2][1], b[0][1] - b[2][1]))
    return ((end[0] + origin[0], end[1] + origin[1]), a[1], origin)


def _embed(patches: Tensor, channels: int, inner: Geometry, outer: Geometry) -> Tensor:
    """Patches on window ``inner`` written into the larger window ``outer`` (zeros elsewhere)."""
    if inner == outer:
        return patches
    (h, w), _, (o_h, o_w) = inner
    (big_h, big_w), _, (big_oh, big_ow) = outer
    top, left = big_oh - o_h, big_ow - o_w
    shaped = patches.reshape(*patches.shape[:2], channels, h, w)
    padded = F.pad(shaped, (left, big_w - w - left, top, big_h - h - top))
    return padded.reshape(*patches.shape[:2], -1)


def _plan(net: Network, stops: Mapping[int, Box], index: int) -> tuple[dict[int, Geometry], list[int]] | None:
    """Geometry of every node between ``index`` and the input box, in reverse order, or ``None``."""
    top_shape = net.nodes[index].out_shape
    if len(top_shape) != 3 or index in stops:
        return None
    geometry: dict[int, Geometry] = {index: ((1, 1), (1, 1), (0, 0))}
    # spill[i]: the rows on node i may have coefficients outside its map (put there by a padded
    # convolution and not yet cleared by a ReLU or a box): no convolution may pull them back.
    spill: dict[int, bool] = {}
    order: list[int] = []
    for node_index in range(index, -1, -1):
        if node_index not in geometry:
            continue
        order.append(node_index)
        node = net.nodes[node_index]
        if len(node.out_shape) != 3:
            return None
        if node_index in stops:
            continue
        op = node.op
        here = geometry[node_index]
        spilled = spill.get(node_index, False)
        if isinstance(op, PatchOp) and len(node.inputs) == 1:
            if not getattr(op, "per_channel", True):
                return None
            diagonal = getattr(op, "diagonal", False)
            if spilled and not diagonal:
                return None
            below = op.patch_geometry(*here)
            spills = spilled if diagonal else any(getattr(op, "padding", (0, 0)))
        elif isinstance(op, Relu | Sum):
            below = here
            spills = spilled and isinstance(op, Sum)
        else:
            return None
        for source in node.inputs:
            spill[source] = spill.get(source, False) or spills
            merged = below if source not in geometry else _union(geometry[source], below)
            if merged is None:
                return None
            geometry[source] = merged
    if not any(i in stops for i in order):
        return None
    return geometry, order


def applies(net: Network, stops: Mapping[int, Box], index: int) -> bool:
    """Whether the rows of ``index``'s neurons go back to the input box in patches, and patches are smaller.

    Every node between must be a patch operation, a ReLU or a sum on ``(C, H, W)`` maps, paths that
    meet must have the same stride, and the patches summed over the nodes must be no larger than
    the maps they stand for (else full maps cost less).
    """
    plan = _plan(net, stops, index)
    if plan is None:
        return False
    geometry, order = plan
    patch = sum(net.nodes[i].out_shape[0] * geometry[i][0][0] * geometry[i][0][1] for i in order)
    full = sum(math.prod(net.nodes[i].out_shape) for i in order)
    return patch <= full


def _lines_at(lines: RelaxationTensors, geometry: Geometry, count: Pair) -> RelaxationTensors:
    """The lines read at the windows; fields that are one tensor stay one tensor."""
    read: dict[int, Tensor] = {}

    def at(value: Tensor) -> Tensor:
        if id(value) not in read:
            read[id(value)] = windows(value, geometry, count)
        return read[id(value)]

    return RelaxationTensors(
        at(lines.lower_slope),
        at(lines.lower_offset),
        at(lines.upper_slope),
        at(lines.upper_offset),
        lines.zeros,
    )


def _add_constant(bias: Tensor, patches: Tensor, constant: Tensor, batch: int, positions: int) -> Tensor:
    """``bias + Σ_k patches·constant`` with ``constant`` ``(L, K)`` read at the windows; bias ``(B·L, G)``."""
    groups = patches.shape[1]
    if patches.shape[0] == 1:
        extra = (constant @ patches[0].T).reshape(1, positions, groups)
    else:
        # one batched product per window position of every example: the constant is repeated per
        # example (G times smaller than the patches), where einsum would copy the patches position-major
        per_row = constant.unsqueeze(0).expand(batch, -1, -1).reshape(batch * positions, -1, 1)
        extra = torch.bmm(patches, per_row).reshape(batch, positions, groups)
    return (bias.reshape(batch, positions, groups) + extra).reshape(batch * positions, groups)


def patch_bounds(
    net: Network,
    stops: Mapping[int, Box],
    lines: Mapping[int, RelaxationTensors],
    lower: Tensor,
    max_elements: int,
    index: int,
) -> Tensor:
    """Lower bounds ``(B, 2n)`` of the rows ``[I; -I]`` over the neurons of node ``index``: ``stops`` the
    boxes where rows stop (the input's among them), ``lines`` the ReLUs', ``lower`` the input's lower
    bound (its shape and batch)."""
    plan = _plan(net, stops, index)
    assert plan is not None
    geometry, order = plan
    channels, n_h, n_w = net.nodes[index].out_shape
    count = (n_h, n_w)
    batch, positions = lower.shape[0], n_h * n_w
    # What every chunk reads: lines and boxes at the windows, constants at the windows, geometries of
    # each edge (the operand's window before alignment).
    relu_lines = {
        i: _lines_at(lines[i], geometry[i], count)
        for i in order
        if isinstance(net.nodes[i].op, Relu) and i not in stops
    }
    boxes = {
        i: (windows(stops[i][0], geometry[i], count), windows(stops[i][1], geometry[i], count))
        for i in order
        if i in stops
    }
    constants: dict[int, Tensor] = {}
    edge: dict[int, Geometry] = {}
    for i in order:
        op = net.nodes[i].op
        if i in stops:
            continue
        if isinstance(op, PatchOp):
            offset = op.offset_map()
            if offset is not None:
                constants[i] = windows(offset.unsqueeze(0), geometry[i], count)
            edge[i] = op.patch_geometry(*geometry[i])
        else:
            edge[i] = geometry[i]
    widest = max(net.nodes[i].out_shape[0] * geometry[i][0][0] * geometry[i][0][1] for i in order)
    groups = 2 * channels
    chunk = max(_MIN_GROUPS, max_elements // max(1, batch * positions * widest))
    dtype, device = lower.dtype, lower.device
    results = []
    for first in range(0, groups, chunk):
        rows = torch.arange(first, min(groups, first + chunk), device=device)
        signs = torch.where(rows < channels, 1.0, -1.0).to(dtype)
        start = torch.zeros(len(rows), channels, dtype=dtype, device=device)
        start[torch.arange(len(rows), device=device), rows % channels] = signs
        pending: dict[int, list[tuple[Tensor, Geometry]]] = {index: [(start.unsqueeze(0), geometry[index])]}
        bias = lower.new_zeros(batch * positions, len(rows))
        reached = []
        for i in order:
            node = net.nodes[i]
            parts = pending.pop(i)
            width = node.out_shape[0]
            current = (
                parts[0][0]
                if len(parts) == 1 and parts[0][1] == geometry[i]
                # a sum of tensors: parts is never empty
                else cast(Tensor, sum(_embed(p, width, g, geometry[i]) for p, g in parts))
            )
            if i in stops:
                reached.append((current, i))
                continue
            op = node.op
            if isinstance(op, Relu):
                current, bias = relu_backward(current, bias, relu_lines[i])
                passed = [(current, geometry[i])]
            elif isinstance(op, Sum):
                passed = [(current if c == 1.0 else current * c, geometry[i]) for c in op.coefficients]
            else:
                assert isinstance(op, PatchOp)
                if i in constants:
                    bias = _add_constant(bias, current, constants[i], batch, positions)
                current = op.patch_linear(current, geometry[i][0], edge[i][0])
                passed = [(current, edge[i])]
            for source, part in zip(node.inputs, passed, strict=True):
                pending.setdefault(source, []).append(part)
        for current, i in reached:  # the constants are complete only now
            bias = concretize(current, bias, *boxes[i])
        results.append(bias)
    bounds = torch.cat(results, dim=1)  # (B·L, 2C), position-major
    return bounds.reshape(batch, positions, groups).transpose(1, 2).reshape(batch, groups * positions)
