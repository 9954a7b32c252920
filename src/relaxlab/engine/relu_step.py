"""The step of backsubstitution through a ReLU, and the concretisation of rows on a box.

Both are shared by every way rows are pulled back (full maps and patches): a ReLU's lines
replace ``y`` by a linear function of ``x`` in each row, the sign of the row's coefficient
choosing the lower or the upper line, and rows that reach a box are concretised on it.

Shapes: ``B`` batch, ``S`` rows; rows are ``(B, S, *shape)`` (or ``(1, S, *shape)`` when shared
by the whole batch), lines are ``(B, *shape)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from relaxlab.core.relaxer import RelaxationTensors


def matvec(coef: Tensor, vector: Tensor) -> Tensor:
    """``(B, S, *shape) · (B, *shape) -> (B, S)``: one batched matrix-vector product.

    Rows shared by the batch (``(1, S, *shape)``) take one matrix product, written out: a
    broadcasting ``matmul`` picks its kernel by the grad mode, and the bounds must not.
    """
    if coef.shape[0] == 1 and vector.shape[0] != 1:
        return vector.flatten(1) @ coef[0].flatten(1).T
    return (coef.flatten(2) @ vector.flatten(1).unsqueeze(-1)).squeeze(-1)


def side_mask(coef: Tensor, negative: bool = False) -> Tensor:
    """``coef >= 0`` (``coef <= 0`` when ``negative``) as 0/1 in ``coef``'s dtype, the subgradient
    side ``clamp`` takes. Written with ``sign`` and ``clamp``: on the CPU, tensors of type ``bool``
    (comparisons, ``where``, products with a mask) take kernels ten to fifty times slower than
    the arithmetic ones, and these masks have the rows' size."""
    signs = coef.sign()
    return signs.sub_(1).clamp_(min=-1).neg_() if negative else signs.add_(1).clamp_(max=1)


def concretize(coef: Tensor, bias: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Lower bound of ``coef·z + bias`` over the box ``lower <= z <= upper``.

    Positive coefficients take the lower end, negative ones the upper end:
    ``coef·upper + max(coef, 0)·(lower - upper)``, the same sum in one pass fewer. Under autograd
    it is one :class:`_Concretize` node with its gradient written out.
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _Concretize.apply(coef, bias, lower, upper)
    return _concretize(coef, bias, lower, upper)


def _concretize(coef: Tensor, bias: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    return bias + matvec(coef, upper) + matvec(coef.clamp(min=0), lower - upper)


class _Concretize(torch.autograd.Function):
    """:func:`concretize` as one autograd node: the forward pass is :func:`_concretize` (the same
    numbers as without autograd, bitwise); it saves the rows and the box, and the gradient is

    - ``∂coef = g·upper + [coef >= 0]·g·(lower - upper)`` (the end each coefficient takes; one
      tensor of the rows' size instead of autograd's two outer products and ``clamp``'s mask);
    - ``∂lower = Σ_rows g·max(coef, 0)``, ``∂upper = Σ_rows g·min(coef, 0)``, ``∂bias = g``.
    """

    @staticmethod
    def forward(ctx, coef, bias, lower, upper):
        ctx.save_for_backward(coef, lower, upper)
        ctx.bias_shape = bias.shape
        return _concretize(coef, bias, lower, upper)

    @staticmethod
    def backward(ctx, grad):
        coef, lower, upper = ctx.saved_tensors
        rows = coef.flatten(2)  # (B or 1, S, n)
        grad_coef = grad_bias = grad_lower = grad_upper = None
        if ctx.needs_input_grad[0]:
            low, high = lower.flatten(1).unsqueeze(1), upper.flatten(1).unsqueeze(1)
            grad_coef = torch.addcmul(high, side_mask(rows), low - high).mul_(grad.unsqueeze(-1))
            if grad_coef.shape[0] != rows.shape[0]:  # rows shared by the batch
                grad_coef = grad_coef.sum(0, keepdim=True)
            grad_coef = grad_coef.reshape(coef.shape)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.sum_to_size(ctx.bias_shape)
        for index, box, part in ((2, lower, rows.clamp(min=0)), (3, upper, rows.clamp(max=0))):
            if ctx.needs_input_grad[index]:
                value = (grad.unsqueeze(1) @ part).squeeze(1)  # (B, n)
                value = value.sum_to_size(box.flatten(1).shape).reshape(box.shape)
                if index == 2:
                    grad_lower = value
                else:
                    grad_upper = value
        return grad_coef, grad_bias, grad_lower, grad_upper


def relu_backward(coef: Tensor, bias: Tensor, lines: RelaxationTensors) -> tuple[Tensor, Tensor]:
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
        bias = bias + matvec(coef, upper_offset)
    else:
        split = coef.clamp(max=0) if use_neg else coef.clamp(min=0)
        if use_neg:  # pos·0 + neg·b_u
            bias = bias + matvec(split, upper_offset)
        elif "upper_offset" in zeros:  # pos·b_l + neg·0
            bias = bias + matvec(split, lower_offset)
        else:  # coef·b_u + pos·(b_l - b_u)
            bias = bias + matvec(coef, upper_offset) + matvec(split, lower_offset - upper_offset)
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


#: The coefficients (indices into RelaxationTensors.tensors) a tensor stands for, each with its sign.
_Roles = tuple[tuple[int, float], ...]


class _ReluStep(torch.autograd.Function):
    """:func:`_relu_step` as one autograd node, with its gradient written out.

    With ``A`` the slope every row takes, ``D`` the slope difference on the split side (rows
    ``split = coef·[side]``), ``a`` the offset every row takes and ``d`` the offset difference on
    the split side (each possibly absent), the step is
    ``new = coef·A + split·D`` and ``bias' = bias + Σ coef·a + Σ split·d``, so

    - ``∂coef = g·A + [side]·(g·D + g_b·d) + g_b·a``;
    - ``∂A = Σ_rows g·coef``, ``∂D = Σ_rows g·split``, ``∂a = Σ_rows g_b·coef``, ``∂d = Σ_rows g_b·split``,

    mapped back to the four coefficients of the lines. The side's mask is ``coef >= 0`` (``<= 0``),
    the subgradient ``clamp`` takes (:func:`side_mask`, in the rows' dtype). The forward pass is
    :func:`_relu_step` itself (the same numbers as without autograd, bitwise).
    """

    @staticmethod
    def forward(ctx, coef, bias, lower_slope, lower_offset, upper_slope, upper_offset, zeros):
        lines = RelaxationTensors(lower_slope, lower_offset, upper_slope, upper_offset, zeros)
        new, new_bias = _relu_step(coef, bias, lines)
        ctx.save_for_backward(coef, lower_slope, lower_offset, upper_slope, upper_offset)
        ctx.zeros = zeros
        ctx.shared_bias = bias.shape[0] != new_bias.shape[0]
        return new, new_bias

    @staticmethod
    def backward(ctx, grad_new, grad_bias):
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
        every_offset: tuple[Tensor, _Roles] | None
        split_offset: tuple[Tensor, _Roles] | None
        every_slope: tuple[Tensor, _Roles]
        split_slope: tuple[Tensor, _Roles] | None
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
            every_slope, split_slope = (
                (lower_slope, ((0, 1.0),)),
                (upper_slope - lower_slope, ((2, 1.0), (0, -1.0))),
            )
        else:  # A = λ_u, D = λ_l - λ_u
            every_slope, split_slope = (
                (upper_slope, ((2, 1.0),)),
                (lower_slope - upper_slope, ((0, 1.0), (2, -1.0))),
            )
        bias_grad = grad_bias.unsqueeze(-1)  # (N, G, 1)
        needs_split = split_slope is not None or split_offset is not None
        mask = side_mask(coef, use_neg) if needs_split else None
        # ∂coef, in place on one tensor of the rows' size.
        grad_coef = grad_new * every_slope[0].unsqueeze(1)
        if split_slope is not None:
            on_side = grad_new * split_slope[0].unsqueeze(1)
            if split_offset is not None:
                on_side.addcmul_(bias_grad, split_offset[0].unsqueeze(1))
            grad_coef.add_(on_side.mul_(mask))
        elif split_offset is not None:
            grad_coef.add_((bias_grad * split_offset[0].unsqueeze(1)).mul_(mask))
        if every_offset is not None:
            grad_coef.addcmul_(bias_grad, every_offset[0].unsqueeze(1))
        if grad_coef.shape != coef.shape:  # rows shared by the batch
            grad_coef = grad_coef.sum(0, keepdim=True)
        grad_coef = grad_coef.reshape(rows_shape)
        # Gradients of the four coefficients (summed over the rows).
        grads: list[Tensor | None] = [None, None, None, None]

        def add(roles: _Roles, value: Tensor) -> None:
            for index, sign in roles:
                part = value if sign == 1.0 else -value
                current = grads[index]
                grads[index] = part if current is None else current + part

        product = grad_new * coef  # (N, G, K)
        add(every_slope[1], product.sum(1))
        if split_slope is not None:
            add(split_slope[1], product.mul_(mask).sum(1))
        if every_offset is not None:
            add(
                every_offset[1],
                (grad_bias.unsqueeze(1) @ coef.expand(grad_bias.shape[0], *coef.shape[1:])).squeeze(1),
            )
        if split_offset is not None:
            split = coef.clamp(max=0) if use_neg else coef.clamp(min=0)
            add(
                split_offset[1],
                (grad_bias.unsqueeze(1) @ split.expand(grad_bias.shape[0], *split.shape[1:])).squeeze(1),
            )
        for j in range(4):  # a tensor passed for two coefficients gets its gradient once
            grad, grad_first = grads[j], grads[first[j]]
            if first[j] != j and grad is not None:
                grads[first[j]] = grad if grad_first is None else grad_first + grad
                grads[j] = None
        grads = [None if g is None else g.reshape(shape) for g in grads]
        grad_rest = grad_bias.sum(0, keepdim=True) if ctx.shared_bias else grad_bias
        return (grad_coef, grad_rest, *grads, None)


__all__ = [
    "concretize",
    "matvec",
    "relu_backward",
    "side_mask",
]
