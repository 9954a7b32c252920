"""Backsubstitution: bounds of ``C·f(x)`` over an input box, for any ReLU relaxation.

Shapes: ``B`` batch, ``S`` specification rows, ``K`` network outputs, ``n`` neurons
of a layer (a layer's neurons may have a shape such as ``(C, H, W)``).

The engine receives the relaxation *object* (never a name) and uses only its
contract (:class:`Relaxer`): ``intermediate``, ``is_interval``,
``transform_bounds`` and ``coefficients``. Three ways to run, picked from the
relaxation:

- ``intermediate == "backsub"``: the input bounds ``[l, u]`` of every ReLU layer
  come from full backsubstitution to the input box (DeepPoly/CROWN style);
- ``intermediate == "interval"``: they come from interval arithmetic, each ReLU
  passing the box ``[relu(l'), relu(u')]`` with ``(l', u') = transform_bounds(l, u)``;
  only the final specification is backsubstituted (CROWN-IBP (R) style);
- ``is_interval`` (every line has slope 0): backsubstitution would stop at each
  ReLU, so the *interval fast path* propagates the box ``[lower_offset, upper_offset]``
  of the lines forward instead; it gives the same numbers up to float rounding.

Lower and upper bounds share one routine: an upper bound of ``c·z`` is minus the
lower bound of ``(-c)·z``, so the rows ``[C; -C]`` are pulled back together.

Between two ReLUs (a *segment* of affine layers) the exact image of a box is
computed in centre/radius form when the segment has at most one non-diagonal layer
(``Linear`` or ``Conv2d``; ``Normalize`` and ``Flatten`` are diagonal): then
interval arithmetic *is* backsubstitution through the segment. Otherwise the
segment is backsubstituted explicitly.

Specifications of intermediate layers (one row per neuron, two with the sign
trick) are processed in chunks of at most ``chunk_size`` rows, so the coefficient
tensor ``(B, rows, n)`` stays within a memory budget even for convolutional layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from relaxlab.core.relaxer import RelaxationTensors, Relaxer
from relaxlab.engine import patches as patch_path
from relaxlab.engine.network import (
    AffineLayer,
    ConvLayer,
    LinearLayer,
    Network,
    box_through_diagonal,
    parse_network,
)

#: Default cap on the elements of one coefficient tensor ``(B, rows, n)`` on CUDA (256 MiB in float32).
DEFAULT_MAX_ELEMENTS = 1 << 26
#: Default on the CPU: 8 MiB in float32. Rows pulled back in cache-sized chunks run 2-2.4x faster
#: than in 256 MiB ones on the development CPU (full CROWN and DeepZ, docs/performance.md).
DEFAULT_MAX_ELEMENTS_CPU = 1 << 21


def default_max_elements(device: torch.device) -> int:
    """The default ``max_elements`` for the intermediate specifications on ``device``.

    The final specification (a few rows per example) is chunked at ``DEFAULT_MAX_ELEMENTS``
    on every device: splitting its handful of rows measured slower.
    """
    return DEFAULT_MAX_ELEMENTS_CPU if device.type == "cpu" else DEFAULT_MAX_ELEMENTS


Mode = Literal["auto", "backsub", "interval", "fast"]


def _matvec(coef: Tensor, vector: Tensor) -> Tensor:
    """``(B, S, *shape) · (B, *shape) -> (B, S)``: one batched matrix-vector product.

    Rows shared by the batch (``(1, S, *shape)``) take one matrix product, written out: a
    broadcasting ``matmul`` picks its kernel by the grad mode, and the bounds must not.
    """
    if coef.shape[0] == 1 and vector.shape[0] != 1:
        return vector.flatten(1) @ coef[0].flatten(1).T
    return (coef.flatten(2) @ vector.flatten(1).unsqueeze(-1)).squeeze(-1)


def _concretize(coef: Tensor, bias: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Lower bound of ``coef·z + bias`` over the box ``lower <= z <= upper``.

    Positive coefficients take the lower end, negative ones the upper end:
    ``coef·upper + max(coef, 0)·(lower - upper)``, the same sum in one pass fewer.
    """
    return bias + _matvec(coef, upper) + _matvec(coef.clamp(min=0), lower - upper)


def _segment_backward(segment: Sequence[AffineLayer], coef: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    for layer in reversed(segment):
        coef, layer_bias = layer.backward(coef)
        if layer_bias is not None:
            bias = bias + layer_bias
    return coef, bias


def _relu_backward(coef: Tensor, bias: Tensor, lines: RelaxationTensors) -> tuple[Tensor, Tensor]:
    """Pull lower-bound rows back through a ReLU with the relaxation's lines (:func:`_relu_step`).

    Under autograd the step is one :class:`_ReluStep` node: it saves the rows and the lines and
    nothing else, and writes its gradient in a few fused passes (instead of saving the sign split
    and a product of the rows' size, and taking one pass per elementary operation).
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _ReluStep.apply(coef, bias, *lines.tensors, lines.zeros)
    return _relu_step(coef, bias, lines)


def _relu_step(coef: Tensor, bias: Tensor, lines: RelaxationTensors) -> tuple[Tensor, Tensor]:
    """Pull lower-bound rows back through a ReLU with the relaxation's lines.

    To *lower*-bound ``coef·y``, a positive coefficient takes the lower line of ``y``
    and a negative one the upper line: with ``pos = max(coef, 0)``, ``neg = min(coef, 0)``,
    the new rows are ``pos·λ_l + neg·λ_u`` and the constant ``pos·b_l + neg·b_u``.

    The coefficients ``(B, S, n)`` are the largest tensors of a backward pass, so the
    work is arranged to touch them as few times as the lines allow: equal slopes need
    no sign split; a zero offset drops its product; ``coef = pos + neg`` lets one of
    ``pos``/``neg`` stand for both (``pos·λ_l + neg·λ_u = coef·λ_u + pos·(λ_l - λ_u)``).
    Without autograd the split is updated in place.
    """
    zeros = lines.zeros
    lower_slope, upper_slope = lines.lower_slope, lines.upper_slope
    lower_offset, upper_offset = lines.lower_offset, lines.upper_offset
    same_slopes = lower_slope is upper_slope
    # Rows shared by the whole batch (shape (1, S, n)) broadcast against the lines; the in-place
    # update needs rows of the full batch.
    inplace = not torch.is_grad_enabled() and coef.shape[0] == lower_slope.shape[0]
    # Split on the side whose offset is non-zero (CROWN: upper offsets only, so neg).
    use_neg = "lower_offset" in zeros and "upper_offset" not in zeros
    if "lower_offset" in zeros and "upper_offset" in zeros:
        split = None
    elif same_slopes and lower_offset is upper_offset:
        split = None
        bias = bias + _matvec(coef, upper_offset)
    else:
        split = coef.clamp(max=0) if use_neg else coef.clamp(min=0)
        if use_neg:  # pos·0 + neg·b_u
            bias = bias + _matvec(split, upper_offset)
        elif "upper_offset" in zeros:  # pos·b_l + neg·0
            bias = bias + _matvec(split, lower_offset)
        else:  # coef·b_u + pos·(b_l - b_u)
            bias = bias + _matvec(coef, upper_offset) + _matvec(split, lower_offset - upper_offset)
    if same_slopes:
        return coef * lower_slope.unsqueeze(1), bias
    if split is None:
        split = coef.clamp(max=0) if use_neg else coef.clamp(min=0)
    # pos·λ_l + neg·λ_u = coef·λ_u + pos·(λ_l - λ_u) = coef·λ_l + neg·(λ_u - λ_l)
    base, other = (lower_slope, upper_slope) if use_neg else (upper_slope, lower_slope)
    difference = (other - base).unsqueeze(1)
    # The same operations in both branches, so that bounds do not depend on the grad mode.
    if inplace:
        return split.mul_(difference).addcmul_(coef, base.unsqueeze(1)), bias
    if not torch.is_grad_enabled():  # rows shared by the batch: the product is the first full tensor
        return (split * difference).addcmul_(coef, base.unsqueeze(1)), bias
    return torch.addcmul(split * difference, coef, base.unsqueeze(1)), bias


class _ReluStep(torch.autograd.Function):
    """:func:`_relu_step` as one autograd node, with its gradient written out.

    With ``A`` the slope every row takes, ``D`` the slope difference on the split side (rows
    ``split = coef·[side]``), ``a`` the offset every row takes and ``d`` the offset difference on
    the split side (each possibly absent), the step is
    ``new = coef·A + split·D`` and ``bias' = bias + Σ coef·a + Σ split·d``, so

    - ``∂coef = g·A + [side]·(g·D + g_b·d) + g_b·a``;
    - ``∂A = Σ_rows g·coef``, ``∂D = Σ_rows g·split``, ``∂a = Σ_rows g_b·coef``, ``∂d = Σ_rows g_b·split``,

    mapped back to the four coefficients of the lines. The side's mask is ``coef >= 0`` (``<= 0``),
    the subgradient ``clamp`` takes. The forward pass is :func:`_relu_step` itself (the same
    numbers as without autograd, bitwise).
    """

    @staticmethod
    def forward(ctx, coef, bias, lower_slope, lower_offset, upper_slope, upper_offset, zeros):  # type: ignore[override]
        lines = RelaxationTensors(lower_slope, lower_offset, upper_slope, upper_offset, zeros)
        new, new_bias = _relu_step(coef, bias, lines)
        ctx.save_for_backward(coef, lower_slope, lower_offset, upper_slope, upper_offset)
        ctx.zeros = zeros
        ctx.shared_bias = bias.shape[0] != new_bias.shape[0]
        return new, new_bias

    @staticmethod
    def backward(ctx, grad_new, grad_bias):  # type: ignore[override]
        coef, *inputs = ctx.saved_tensors
        zeros, rows_shape, shape = ctx.zeros, coef.shape, inputs[0].shape
        # first[j]: the first coefficient passed as the same tensor as coefficient j (equal lines
        # may share one); the flat copies keep that sharing, and its gradient is returned once.
        first = [next(i for i in range(4) if inputs[i] is inputs[j]) for j in range(4)]
        flat = [t.flatten(1) for t in inputs]  # lines (N, K); rows below (N, G, K)
        lower_slope, lower_offset, upper_slope, upper_offset = (flat[first[j]] for j in range(4))
        coef, grad_new = coef.flatten(2), grad_new.flatten(2)  # autograd passes zeros for unused outputs
        same_slopes = lower_slope is upper_slope
        use_neg = "lower_offset" in zeros and "upper_offset" not in zeros
        # The roles, as _relu_step assigns them: (tensor, coefficient names it stands for with signs).
        if "lower_offset" in zeros and "upper_offset" in zeros:
            every_offset, split_offset = None, None
        elif same_slopes and lower_offset is upper_offset:
            every_offset, split_offset = ((upper_offset, ((3, 1.0),)), None)
        elif use_neg:
            every_offset, split_offset = None, (upper_offset, ((3, 1.0),))
        elif "upper_offset" in zeros:
            every_offset, split_offset = None, (lower_offset, ((1, 1.0),))
        else:
            every_offset = (upper_offset, ((3, 1.0),))  # a = b_u, d = b_l - b_u
            split_offset = (lower_offset - upper_offset, ((1, 1.0), (3, -1.0)))
        if same_slopes:
            every_slope, split_slope = (lower_slope, ((0, 1.0),)), None
        elif use_neg:  # A = λ_l, D = λ_u - λ_l
            every_slope, split_slope = (lower_slope, ((0, 1.0),)), (upper_slope - lower_slope, ((2, 1.0), (0, -1.0)))
        else:  # A = λ_u, D = λ_l - λ_u
            every_slope, split_slope = (upper_slope, ((2, 1.0),)), (lower_slope - upper_slope, ((0, 1.0), (2, -1.0)))
        bias_grad = grad_bias.unsqueeze(-1)  # (N, G, 1)
        needs_split = split_slope is not None or split_offset is not None
        mask = (coef <= 0 if use_neg else coef >= 0) if needs_split else None
        # ∂coef, in place on one tensor of the rows' size.
        grad_coef = grad_new * every_slope[0].unsqueeze(1)
        if split_slope is not None or split_offset is not None:
            if split_slope is not None:
                on_side = grad_new * split_slope[0].unsqueeze(1)
                if split_offset is not None:
                    on_side.addcmul_(bias_grad, split_offset[0].unsqueeze(1))
            else:
                on_side = bias_grad * split_offset[0].unsqueeze(1)
            grad_coef.add_(on_side.mul_(mask))
        if every_offset is not None:
            grad_coef.addcmul_(bias_grad, every_offset[0].unsqueeze(1))
        if grad_coef.shape != coef.shape:  # rows shared by the batch
            grad_coef = grad_coef.sum(0, keepdim=True)
        grad_coef = grad_coef.reshape(rows_shape)
        # Gradients of the four coefficients (summed over the rows).
        grads: list[Tensor | None] = [None, None, None, None]

        def add(roles: tuple[int, float], value: Tensor) -> None:
            for index, sign in roles:
                part = value if sign == 1.0 else -value
                grads[index] = part if grads[index] is None else grads[index] + part

        product = grad_new * coef  # (N, G, K)
        add(every_slope[1], product.sum(1))
        if split_slope is not None:
            add(split_slope[1], product.mul_(mask).sum(1))
        if every_offset is not None:
            add(every_offset[1], (grad_bias.unsqueeze(1) @ coef.expand(grad_bias.shape[0], *coef.shape[1:])).squeeze(1))
        if split_offset is not None:
            split = coef * mask
            add(split_offset[1], (grad_bias.unsqueeze(1) @ split.expand(grad_bias.shape[0], *split.shape[1:])).squeeze(1))
        for j in range(4):  # a tensor passed for two coefficients gets its gradient once
            if first[j] != j and grads[j] is not None:
                grads[first[j]] = grads[j] if grads[first[j]] is None else grads[first[j]] + grads[j]
                grads[j] = None
        grads = [None if g is None else g.reshape(shape) for g in grads]
        grad_rest = grad_bias.sum(0, keepdim=True) if ctx.shared_bias else grad_bias
        return (grad_coef, grad_rest, *grads, None)


def _pull_back(
    segments: Sequence[Sequence[AffineLayer]],
    lines: Sequence[RelaxationTensors],
    start: int,
    stop: int,
    coef: Tensor,
    bias: Tensor,
) -> tuple[Tensor, Tensor]:
    """Pull rows on the output of ``segments[start]`` back to the input of ``segments[stop]``.

    ``lines[i]`` relaxes the ReLU between ``segments[i]`` and ``segments[i + 1]``.
    """
    for index in range(start, stop - 1, -1):
        coef, bias = _segment_backward(segments[index], coef, bias)
        if index > stop:
            coef, bias = _relu_backward(coef, bias, lines[index - 1])
    return coef, bias


def _chunk_rows(batch: int, widest: int, chunk_size: int | None, max_elements: int) -> int:
    if chunk_size is not None:
        return chunk_size
    return max(1, max_elements // max(1, batch * widest))


def _check_chunking(chunk_size: int | None, max_elements: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    if max_elements is not None and (
        isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1
    ):
        raise ValueError(f"max_elements must be a positive number of tensor entries, got {max_elements!r}")


def _widest(segments: Sequence[Sequence[AffineLayer]], start: int, stop: int, input_numel: int) -> int:
    widest = input_numel
    for segment in segments[stop : start + 1]:
        for layer in segment:
            widest = max(widest, math.prod(layer.in_shape), math.prod(layer.out_shape))
    return widest


def _rows_lower(
    segments: Sequence[Sequence[AffineLayer]],
    lines: Sequence[RelaxationTensors],
    start: int,
    stop: int,
    rows: Tensor,
    lower: Tensor,
    upper: Tensor,
    chunk: int,
    elide: bool,
) -> Tensor:
    """Lower bounds ``(B, R)`` of ``rows·z`` (``rows`` of shape ``(B, R, *out_shape)``), ``z`` the
    output of ``segments[start]``, over the box ``[lower, upper]`` at the input of ``segments[stop]``.

    With ``elide``, a trailing ``Linear`` layer of ``segments[start]`` is merged into the rows first
    (``rows @ W``), which is the specification elision of Gowal et al.
    """
    segments = list(segments)
    if elide and segments[start] and isinstance(segments[start][-1], LinearLayer):
        elided: LinearLayer | None = segments[start][-1]
        segments[start] = segments[start][:-1]
    else:
        elided = None
    lower, upper, segments[stop] = box_through_diagonal(segments[stop], lower, upper)
    # A convolution next to the box is pulled back in polyphase order and the box is laid out
    # to match (concretisation sums over positions, so their order is free): this saves
    # interleaving and cropping the largest coefficient tensor.
    first_conv: ConvLayer | None = None
    if segments[stop] and isinstance(segments[stop][0], ConvLayer):
        first_conv = segments[stop][0]
        segments[stop] = segments[stop][1:]
        lower, upper = first_conv.phase_layout(lower), first_conv.phase_layout(upper)
    local = segments[: start + 1]
    results = []
    for first in range(0, rows.shape[1], chunk):
        coef = rows[:, first : first + chunk]
        bias = coef.new_zeros(coef.shape[:2])
        if elided is not None:
            coef, layer_bias = elided.backward(coef)
            if layer_bias is not None:
                bias = bias + layer_bias
        coef, bias = _pull_back(local, lines, start, stop, coef, bias)
        if first_conv is not None:
            coef, layer_bias = first_conv.backward_phases(coef)
            if layer_bias is not None:
                bias = bias + layer_bias
        results.append(_concretize(coef, bias, lower, upper))
    return torch.cat(results, dim=1)


def _identity_rows(like: Tensor, shape: tuple[int, ...], keep: Tensor | None = None) -> Tensor:
    """Rows ``[I; -I]`` over the neurons of ``shape`` (only those ``keep`` indexes, if given), as
    ``(1, 2n, *shape)``.

    One copy for the whole batch: the affine layers before the first ReLU step pull back the
    same rows for every example, and that step broadcasts them against each example's lines.
    """
    eye = torch.eye(math.prod(shape), dtype=like.dtype, device=like.device)
    if keep is not None:
        eye = eye[keep]
    return torch.cat([eye, -eye], dim=0).reshape(1, 2 * eye.shape[0], *shape)


def _neuron_rows_lower(
    segments: Sequence[Sequence[AffineLayer]],
    lines: Sequence[RelaxationTensors],
    index: int,
    shape: tuple[int, ...],
    lower: Tensor,
    upper: Tensor,
    chunk_size: int | None,
    max_elements: int,
    keep: Tensor | None = None,
) -> Tensor:
    """Lower bounds ``(B, 2n)`` of the rows ``[I; -I]`` over the neurons of ``segments[index]``
    (only those ``keep`` indexes, if given), backsubstituted as full maps to the input box."""
    rows = _identity_rows(lower, shape, keep)
    widest = _widest(segments, index, 0, math.prod(lower.shape[1:]))
    chunk = _chunk_rows(lower.shape[0], widest, chunk_size, max_elements)
    return _rows_lower(segments, lines, index, 0, rows, lower, upper, chunk, elide=True)


def _segment_box(
    segments: Sequence[Sequence[AffineLayer]],
    index: int,
    lower: Tensor,
    upper: Tensor,
    chunk_size: int | None,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """Exact bounds of the output of ``segments[index]`` over a box at its input."""
    segment = segments[index]
    if sum(not layer.is_diagonal for layer in segment) <= 1:
        # One non-diagonal map of a box: centre/radius interval arithmetic is exact.
        # The factor 1/2 of centre and radius is applied on the smaller side of the
        # segment (it commutes with the linear part; the offsets are doubled instead).
        if not segment:
            return lower, upper
        halve_first = math.prod(segment[0].in_shape) <= math.prod(segment[-1].out_shape)
        if halve_first:
            centre, radius, scale = (upper + lower) * 0.5, (upper - lower) * 0.5, 1.0
        else:
            centre, radius, scale = upper + lower, upper - lower, 2.0
        for layer in segment:
            centre, radius = layer.forward(centre, scale), layer.forward_abs(radius)
        if halve_first:
            return centre - radius, centre + radius
        return (centre - radius).mul_(0.5), (centre + radius).mul_(0.5)
    out_shape = segment[-1].out_shape
    n = math.prod(out_shape)
    rows = _identity_rows(lower, out_shape)
    widest = _widest(segments, index, index, math.prod(lower.shape[1:]))
    chunk = _chunk_rows(lower.shape[0], widest, chunk_size, max_elements)
    bounds = _rows_lower(segments, [], index, index, rows, lower, upper, chunk, elide=True)
    return bounds[:, :n].reshape(-1, *out_shape), -bounds[:, n:].reshape(-1, *out_shape)


def _split_rows(bounds: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Bounds ``(l, u)`` of the neurons of ``shape`` from the lower bounds of the rows ``[I; -I]``."""
    n = math.prod(shape)
    return bounds[:, :n].reshape(-1, *shape), -bounds[:, n:].reshape(-1, *shape)


def _stable_reference(
    segments: Sequence[Sequence[AffineLayer]],
    index: int,
    previous: tuple[Tensor, Tensor],
    relaxation: Relaxer,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Interval bounds of the neurons of ``segments[index]`` and which of them need no rows.

    The box ``[relu(l), relu(u)]`` holds the previous ReLU's outputs whatever the relaxation, and
    the segment's exact interval image of it bounds the neurons soundly. A neuron needs no row
    when these bounds prove it stable in every example and the relaxation's lines there are the
    ReLU itself. ``None`` when the reference would cost a backsubstitution of its own (a
    segment with more than one non-diagonal layer).
    """
    if sum(not layer.is_diagonal for layer in segments[index]) > 1:
        return None
    ref_lower, ref_upper = _segment_box(segments, index, previous[0].relu(), previous[1].relu(), None, 1)
    with torch.no_grad():
        got = _relaxation_lines(relaxation, ref_lower.detach(), ref_upper.detach())
        zero = [value == 0 for value in got.tensors]
        negative = (ref_upper <= 0) & zero[0] & zero[1] & zero[2] & zero[3]
        one = [got.lower_slope == 1, got.upper_slope == 1]
        positive = (ref_lower >= 0) & one[0] & zero[1] & one[1] & zero[3]
        skip = (negative | positive).flatten(1).all(dim=0)
    return ref_lower, ref_upper, skip


def _sparse_box(
    segments: Sequence[Sequence[AffineLayer]],
    lines: Sequence[RelaxationTensors],
    index: int,
    shape: tuple[int, ...],
    reference: tuple[Tensor, Tensor, Tensor],
    lower: Tensor,
    upper: Tensor,
    chunk_size: int | None,
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """Bounds of the neurons of ``segments[index]``: rows for the neurons ``reference`` keeps,
    its interval bounds for the others."""
    ref_lower, ref_upper, skip = reference
    keep = (~skip).nonzero().squeeze(1)
    kept = keep.numel()
    if kept == 0:
        return ref_lower, ref_upper
    bounds = _neuron_rows_lower(segments, lines, index, shape, lower, upper, chunk_size, max_elements, keep)
    pre_lower = ref_lower.flatten(1).index_copy(1, keep, bounds[:, :kept])
    pre_upper = ref_upper.flatten(1).index_copy(1, keep, -bounds[:, kept:])
    return pre_lower.reshape(ref_lower.shape), pre_upper.reshape(ref_upper.shape)


def _relaxation_lines(relaxation: Relaxer, lower: Tensor, upper: Tensor) -> RelaxationTensors:
    """The relaxation's lines at ``[lower, upper]``, with its optional hints."""
    got = relaxation.coefficients(lower, upper)
    if isinstance(got, RelaxationTensors):
        return got
    # A hand-written relaxer may return any object with the four fields (and perhaps ``zeros``).
    return RelaxationTensors(got.lower_slope, got.lower_offset, got.upper_slope, got.upper_offset,
                             frozenset(getattr(got, "zeros", frozenset())))


def _check_lines(lines: RelaxationTensors, like: Tensor, name: str, index: int) -> None:
    for field in ("lower_slope", "lower_offset", "upper_slope", "upper_offset"):
        value = getattr(lines, field)
        if value.shape != like.shape:
            raise ValueError(
                f"relaxation {name!r} returned {field} of shape {tuple(value.shape)} for ReLU layer "
                f"{index} whose bounds have shape {tuple(like.shape)}; coefficients() must keep the shape"
            )


def intermediate_bounds(
    network: Network | nn.Sequential,
    lower: Tensor,
    upper: Tensor,
    relaxation: Relaxer,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    patches: bool = True,
    sparse: bool = False,
) -> tuple[list[tuple[Tensor, Tensor]], list[RelaxationTensors]]:
    """Pre-activation bounds and relaxation lines of every ReLU layer.

    :param network: a parsed :class:`Network` or an ``nn.Sequential`` (parsed for ``lower``'s shape).
    :param lower: ``(B, *input_shape)`` input lower bounds; ``upper`` likewise.
    :param relaxation: any object with the relaxation contract (:class:`Relaxer`).
    :param mode: ``"auto"`` (from the relaxation), or force ``"backsub"`` / ``"interval"``
        for the intermediate bounds (``"fast"`` behaves as ``"interval"`` here but takes the
        lines' offsets as the box after each ReLU).
    :param patches: backsubstitute the neurons of a convolution in patches where the layers
        allow it (:mod:`relaxlab.engine.patches`; the same numbers up to rounding).
    :param sparse: with backsubstitution, skip the rows of neurons that interval arithmetic from
        the previous ReLU's bounds proves stable for every example of the batch *and* whose lines
        there are the ReLU itself (``y = 0`` or ``y = x``); they keep the interval bounds. Only
        neurons whose stable-case lines read nothing of ``l, u`` are skipped, so the result
        equals the full computation whenever backsubstitution would also have found them
        stable; otherwise the exact ReLU replaces a relaxed one (other numbers, still sound: seen
        for App. H relaxations whose backsubstitution is looser than intervals, e.g. CROWN-0-C).
        The skipped neurons' own bounds are the (looser) interval ones. Off by default: the
        relaxation's bounds as defined; an option for speed where many neurons are stable.
    :return: ``[(l, u)]`` with shapes ``(B, *relu_shape)`` and the lines at those bounds, one per ReLU.
    """
    net = _as_network(network, lower)
    _check_box(net, lower, upper)
    resolved = _resolve_mode(relaxation, mode)
    _check_chunking(chunk_size, max_elements)
    if max_elements is None:
        max_elements = default_max_elements(lower.device)
    segments = net.segments
    boxes: list[tuple[Tensor, Tensor]] = []
    lines: list[RelaxationTensors] = []
    box_lower, box_upper = lower, upper
    for index in range(len(segments) - 1):
        if index == 0 or resolved in ("interval", "fast"):
            pre_lower, pre_upper = _segment_box(
                segments, index, box_lower, box_upper, chunk_size, max_elements
            )
        else:
            shape = segments[index][-1].out_shape if segments[index] else net.relus[index - 1].out_shape
            use_patches = patches and patch_path.applies(segments, index, 0)
            reference = (
                _stable_reference(segments, index, boxes[-1], relaxation) if sparse and not use_patches else None
            )
            if use_patches:  # all rows in patches cost less than the unstable rows as full maps
                bounds = patch_path.patch_bounds(
                    segments, lines, index, 0, lower, upper, max_elements, _relu_backward, _concretize
                )
                pre_lower, pre_upper = _split_rows(bounds, shape)
            elif reference is not None and bool(reference[2].any()):
                pre_lower, pre_upper = _sparse_box(
                    segments, lines, index, shape, reference, lower, upper, chunk_size, max_elements
                )
            else:
                bounds = _neuron_rows_lower(segments, lines, index, shape, lower, upper, chunk_size, max_elements)
                pre_lower, pre_upper = _split_rows(bounds, shape)
        relu_lines = _relaxation_lines(relaxation, pre_lower, pre_upper)
        _check_lines(relu_lines, pre_lower, relaxation.name, index)
        boxes.append((pre_lower, pre_upper))
        lines.append(relu_lines)
        if resolved == "interval":
            t_lower, t_upper = relaxation.transform_bounds(pre_lower, pre_upper)
            box_lower, box_upper = torch.relu(t_lower), torch.relu(t_upper)
        elif resolved == "fast":
            box_lower, box_upper = relu_lines.lower_offset, relu_lines.upper_offset
    return boxes, lines


def _resolve_mode(relaxation: Relaxer, mode: Mode) -> Mode:
    if mode not in ("auto", "backsub", "interval", "fast"):
        raise ValueError(f"mode must be 'auto', 'backsub', 'interval' or 'fast', got {mode!r}")
    if mode != "auto":
        if mode == "fast" and not relaxation.is_interval:
            raise ValueError(
                f"mode='fast' needs a relaxation whose lines all have slope 0; {relaxation.name!r} is not one"
            )
        return mode
    if relaxation.is_interval:
        return "fast"
    intermediate = relaxation.intermediate
    if intermediate not in ("backsub", "interval"):
        raise ValueError(
            f"relaxation {relaxation.name!r} has intermediate={intermediate!r}; expected 'backsub' or 'interval'"
        )
    return "backsub" if intermediate == "backsub" else "interval"


def _as_network(network: Network | nn.Sequential, lower: Tensor) -> Network:
    if isinstance(network, Network):
        return network
    return parse_network(network, tuple(lower.shape[1:]), dtype=lower.dtype, device=lower.device)


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


def _spec_matrix(spec: Tensor | None, batch: int, outputs: int, like: Tensor) -> Tensor:
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


def bound_network(
    network: Network | nn.Sequential,
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
) -> tuple[Tensor, Tensor]:
    """Sound lower and upper bounds of ``C·f(x)`` for all ``x`` in ``[lower, upper]``.

    :param network: a parsed :class:`Network` or an ``nn.Sequential`` (parsed for ``lower``'s
        shape, dtype and device).
    :param lower: ``(B, *input_shape)`` input lower bounds.
    :param upper: ``(B, *input_shape)`` input upper bounds.
    :param relaxation: the ReLU relaxation (an object with the :class:`Relaxer` contract).
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows over the ``K`` outputs; default
        the identity. It is merged into a final ``Linear`` layer (elision).
    :param mode: ``"auto"`` follows the relaxation (interval fast path when all slopes are 0,
        else ``relaxation.intermediate``); ``"backsub"`` / ``"interval"`` force how intermediate
        bounds are computed (``"backsub"`` on an interval relaxation runs the slow path, which
        is how the fast path is tested); ``"fast"`` requires an interval relaxation.
    :param chunk_size: rows of intermediate specifications pulled back at once; default: as
        many as fit in ``max_elements`` coefficient entries.
    :param max_elements: budget for one coefficient tensor ``(B, rows, n)``, in elements; default
        :func:`default_max_elements` for intermediate specifications (``2^21`` on the CPU, where
        cache-sized chunks are faster, ``2^26`` elsewhere) and ``2^26`` for the final one.
    :param lower_only: skip the upper bounds of the final specification (half the work of
        the final pass); ``ub`` is then ``+inf``, a trivially sound upper bound.
    :param patches: see :func:`intermediate_bounds`.
    :param sparse: see :func:`intermediate_bounds` (only the lines of the skipped neurons reach
        the result, and they are the ReLU itself).
    :return: ``(lb, ub)``, each ``(B, S)``.
    """
    net = _as_network(network, lower)
    _check_box(net, lower, upper)
    batch = lower.shape[0]
    spec = _spec_matrix(C, batch, net.output_dim, lower)
    specs = spec.shape[1]
    resolved = _resolve_mode(relaxation, mode)
    _check_chunking(chunk_size, max_elements)
    boxes, lines = intermediate_bounds(
        net, lower, upper, relaxation, mode=resolved, chunk_size=chunk_size, max_elements=max_elements,
        patches=patches, sparse=sparse,
    )
    segments = net.segments
    last = len(segments) - 1
    both = spec if lower_only else torch.cat([spec, -spec], dim=1)
    rows = both.reshape(batch, both.shape[1], *net.output_shape)
    if resolved == "fast" and last > 0:
        # Slopes are 0: backsubstitution stops at the last ReLU, whose output lies in
        # the box of the lines' offsets.
        box_lower, box_upper = lines[-1].lower_offset, lines[-1].upper_offset
        stop = last
    else:
        box_lower, box_upper, stop = lower, upper, 0
    widest = _widest(segments, last, stop, math.prod(box_lower.shape[1:]))
    chunk = _chunk_rows(batch, widest, chunk_size, max_elements or DEFAULT_MAX_ELEMENTS)
    bounds = _rows_lower(segments, lines, last, stop, rows, box_lower, box_upper, chunk, elide=True)
    del boxes
    if lower_only:
        return bounds, torch.full_like(bounds, math.inf)
    return bounds[:, :specs], -bounds[:, specs:]
