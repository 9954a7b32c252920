"""Bounds of every neuron of a convolution by backsubstitution in *patches*.

The row of neuron ``(c, i, j)`` of a convolution's output, pulled back through the convolution,
is the kernel ``W[c]`` placed at the window of position ``(i, j)``: it is zero outside a small
receptive field. Backsubstitution with full maps (:mod:`relaxlab.engine.backsub`) multiplies
those zeros through every further layer; here each row is kept as its window only:

- a row is a *patch*: coefficients of shape ``(C, h, w)`` on a layer, together with the origin of
  its window (position ``(i, j)`` starts at ``(i·S - P, j·S - P)`` of that layer, ``S`` and ``P``
  the stride and padding accumulated so far);
- through a ReLU, the lines are read at the window (``F.unfold`` of the lines); the step is
  the same arithmetic as for full maps, with the windows in the batch dimension;
- through a convolution, a patch ``(C_out, h, w)`` becomes ``(C_in, (h - 1)·s + k, (w - 1)·s + k)``
  by a transposed convolution of the patch alone, with ``S ← S·s`` and ``P ← P·s + p``;
- at the input, the box is read at the windows the same way and the rows are concretised.

Positions of a window outside the layer (padding) read zero lines and a zero box: they add
nothing, exactly as the convolution's zero padding. The numbers equal those of full maps up to
float rounding (the same products, summed in another order).

Shapes: ``B`` batch, ``L`` window positions (the convolution's output height × width), ``G`` rows
per position (a sign and an output channel), ``K`` entries of a patch. A patch tensor is
``(B·L, G, K)``: the positions ride in the batch dimension, so that the ReLU step and the
concretisation of :mod:`relaxlab.engine.backsub` apply unchanged.

Applies where every segment between the convolution and the input box is one convolution (after
the diagonal layers next to the input, which move the box instead); elsewhere the caller uses
full maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from relaxlab.core.relaxer import RelaxationTensors
from relaxlab.engine.network import AffineLayer, ConvLayer, box_through_diagonal, transposed_conv

#: Rows per position pulled back together, at least (a budget below one row per position is exceeded).
_MIN_GROUPS = 8

ReluStep = Callable[[Tensor, Tensor, RelaxationTensors], tuple[Tensor, Tensor]]
Concretize = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def applies(segments: Sequence[Sequence[AffineLayer]], start: int, stop: int) -> bool:
    """Whether the rows of ``segments[start]``'s neurons can be pulled back to the input in patches.

    ``segments[stop]`` may begin with diagonal layers (they move the box); every segment from
    ``stop`` to ``start`` must otherwise be exactly one convolution.
    """
    if start <= stop:
        return False
    for index in range(stop, start + 1):
        layers = list(segments[index])
        if index == stop:
            while layers and layers[0].is_diagonal:
                layers.pop(0)
        if len(layers) != 1 or not isinstance(layers[0], ConvLayer):
            return False
    return True


def _windows(values: Tensor, size: tuple[int, int], stride: tuple[int, int], origin: tuple[int, int],
             count: tuple[int, int]) -> Tensor:
    """``values`` ``(B, C, H, W)`` read at ``count`` windows of ``size``: ``(B·L, C·h·w)``.

    Window ``(i, j)`` starts at ``(i·S_h - P_h, j·S_w - P_w)``; positions outside the map read 0.
    """
    (h, w), (s_h, s_w), (p_h, p_w), (n_h, n_w) = size, stride, origin, count
    height, width = values.shape[-2:]
    # Pad (or crop, with negative amounts) so that exactly n_h x n_w windows fit.
    right_h, right_w = (n_h - 1) * s_h + h - p_h - height, (n_w - 1) * s_w + w - p_w - width
    padded = F.pad(values, (p_w, right_w, p_h, right_h))
    columns = F.unfold(padded, (h, w), stride=(s_h, s_w))  # (B, C·h·w, L)
    return columns.transpose(1, 2).reshape(-1, columns.shape[1])


def _lines_at(lines: RelaxationTensors, **window: tuple[int, int]) -> RelaxationTensors:
    """The lines read at the windows; fields that are one tensor stay one tensor."""
    read: dict[int, Tensor] = {}

    def at(value: Tensor) -> Tensor:
        if id(value) not in read:
            read[id(value)] = _windows(value, **window)
        return read[id(value)]

    return RelaxationTensors(
        at(lines.lower_slope), at(lines.lower_offset), at(lines.upper_slope), at(lines.upper_offset), lines.zeros
    )


def _transfer(conv: ConvLayer, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """The matrix ``(C_out·h·w, C_in·h'·w')`` that pulls a patch back through ``conv``."""
    channels = conv.out_shape[0]
    units = torch.eye(channels * size[0] * size[1], dtype=conv.weight.dtype, device=conv.weight.device)
    moved = transposed_conv(units.reshape(-1, channels, *size), conv.weight, conv.stride, (0, 0), new_size)
    return moved.reshape(units.shape[0], -1)


def patch_bounds(
    segments: Sequence[Sequence[AffineLayer]],
    lines: Sequence[RelaxationTensors],
    start: int,
    stop: int,
    lower: Tensor,
    upper: Tensor,
    max_elements: int,
    relu_step: ReluStep,
    concretize: Concretize,
) -> Tensor:
    """Lower bounds ``(B, 2n)`` of the rows ``[I; -I]`` over the neurons of ``segments[start]``.

    :param lower: ``(B, *input_shape)`` box at the input of ``segments[stop]``; ``upper`` likewise.
    :param lines: ``lines[i]`` relaxes the ReLU after ``segments[i]``.
    :param max_elements: budget for one patch tensor ``(B·L, G, K)``.
    :param relu_step: the ReLU step of full backsubstitution (rows ``(N, G, K)``, lines ``(N, K)``).
    :param concretize: the concretisation of full backsubstitution.
    """
    lower, upper, layers = box_through_diagonal(segments[stop], lower, upper)
    convs: list[ConvLayer] = [layers[0]] + [segments[i][0] for i in range(stop + 1, start + 1)]  # type: ignore[list-item]
    top = convs[-1]
    channels, n_h, n_w = top.out_shape
    batch, positions = lower.shape[0], n_h * n_w
    # Patch geometry on the input of each convolution, from the top down: size, stride, origin.
    geometry: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = []
    size, stride, origin = (1, 1), (1, 1), (0, 0)
    widest = 1
    for conv in reversed(convs):
        k_h, k_w = conv.weight.shape[-2:]
        size = ((size[0] - 1) * conv.stride[0] + k_h, (size[1] - 1) * conv.stride[1] + k_w)
        origin = (origin[0] * conv.stride[0] + conv.padding[0], origin[1] * conv.stride[1] + conv.padding[1])
        stride = (stride[0] * conv.stride[0], stride[1] * conv.stride[1])
        geometry.append((size, stride, origin))
        widest = max(widest, conv.in_shape[0] * size[0] * size[1])
    count = (n_h, n_w)
    # The lines of each ReLU between the convolutions, read at their windows once for all rows.
    relu_lines = [
        _lines_at(lines[stop + depth], size=geometry[len(convs) - 2 - depth][0],
                  stride=geometry[len(convs) - 2 - depth][1], origin=geometry[len(convs) - 2 - depth][2],
                  count=count)
        for depth in range(len(convs) - 1)
    ]
    box_size, box_stride, box_origin = geometry[-1]
    box_lower = _windows(lower, box_size, box_stride, box_origin, count)
    box_upper = _windows(upper, box_size, box_stride, box_origin, count)
    # A patch through a convolution is a linear map of its K entries: one (K_in, K_out) matrix
    # per convolution (the transposed convolution of each unit patch), applied as a matmul.
    transfers = {
        depth: _transfer(convs[depth], geometry[len(convs) - 2 - depth][0], geometry[len(convs) - 1 - depth][0])
        for depth in range(len(convs) - 1)
    }
    groups = 2 * channels
    # At least a few rows per position: the lines read at the windows are as large as one row.
    chunk = max(_MIN_GROUPS, max_elements // max(1, batch * positions * widest))
    weight = top.weight.reshape(channels, -1)
    results = []
    for first in range(0, groups, chunk):
        rows = torch.arange(first, min(groups, first + chunk), device=lower.device)
        signs = torch.where(rows < channels, 1.0, -1.0).to(weight.dtype)
        kernel = weight[rows % channels] * signs.unsqueeze(1)  # (G, K)
        # The rows are the same for every example and position until the first ReLU step
        # broadcasts them (its sign split then runs on the kernel, not on every copy).
        coef = kernel.unsqueeze(0)
        if top.bias is not None:
            bias = (top.bias[rows % channels] * signs).unsqueeze(0)
        else:
            bias = coef.new_zeros(1, len(rows))
        for depth in range(len(convs) - 2, -1, -1):
            coef, bias = relu_step(coef, bias, relu_lines[depth])
            conv = convs[depth]
            (h, w), _, _ = geometry[len(convs) - 2 - depth]
            new_h, new_w = geometry[len(convs) - 1 - depth][0]
            if conv.bias is not None:
                bias = bias + coef @ conv.bias.repeat_interleave(h * w)
            coef = coef @ transfers[depth]
        results.append(concretize(coef, bias, box_lower, box_upper))
    bounds = torch.cat(results, dim=1)  # (B·L, 2C), position-major
    return bounds.reshape(batch, positions, groups).transpose(1, 2).reshape(batch, groups * positions)

