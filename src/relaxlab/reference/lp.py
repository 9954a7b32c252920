"""LP-ALL: the optimal layer-wise convex relaxation of a tiny ReLU network (Salman et al. 2019).

Every ReLU is replaced by the convex hull of its graph over its pre-activation
bounds ``[l, u]`` (the triangle ``a >= 0, a >= z, a <= u (z - l) / (u - l)`` when
unstable; ``a = z`` or ``a = 0`` with ``l <= z <= u`` when stable), and every
intermediate bound ``[l, u]`` is itself obtained from that LP:

(A) layer by layer, ``l_k[j]`` and ``u_k[j]`` are the minimum and maximum of the
    pre-activation ``z_k[j]`` over the LP of layers ``1 .. k-1`` (the first
    layer's bounds are interval arithmetic, which is exact over a box);
(B) the spec rows are minimised and maximised over the LP of all layers.

No layer-wise convex relaxation (Salman et al.'s framework, which contains
every relaxation in relaxlab's registry) gives tighter bounds; the exact MILP
range lies inside it. Solved with :func:`scipy.optimize.linprog` (HiGHS) at
feasibility tolerances of 1e-9, with matrix entries down to 1e-12 kept (HiGHS
drops smaller ones; options passed to HiGHS verbatim). Cost: ``2 (n_2 + ... + n_{K-1}) + 2 S`` LPs per
example, each of the size of the network.

Tolerance: intermediate bounds are padded outward by :data:`LP_PAD` ``* (1 + |v|)``
so that solver error cannot make them invalid; the returned bounds are within
:data:`LP_ATOL` ``+`` :data:`LP_RTOL` ``* scale`` ``+ 2 ×`` the padding's reach
(:func:`_padding_slack`: each padded neuron's slack times the absolute weights after it)
of exact LP-ALL, ``scale`` being the magnitude of the interval-arithmetic bound of the
spec row.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from attrs import frozen
from scipy import sparse
from scipy.optimize import OptimizeWarning, linprog
from torch import Tensor, nn

from relaxlab.reference._encoding import HIGHS_OPTIONS, Encoding, encode
from relaxlab.reference.dense import DenseNetwork, ReferenceInput, prepare_input, spec_scale

__all__ = ["LP_ATOL", "LP_PAD", "LP_RTOL", "LpAllResult", "lp_all_bounds", "solve_lp_all"]

#: Absolute slack of the LP-ALL bounds.
LP_ATOL = 1e-6
#: Slack relative to the interval-arithmetic magnitude of the spec row.
LP_RTOL = 1e-6
#: Relative outward padding of every LP-computed intermediate bound.
LP_PAD = 1e-7


@frozen(eq=False)
class LpAllResult:
    """LP-ALL bounds of ``C f(x)`` over a box, and the intermediate bounds behind them.

    Tensors are float64 on the CPU.

    :param lower: ``(B, S)`` LP-ALL lower bound of each spec row; ``upper`` likewise.
    :param pre_activation: per ReLU layer, ``(lower, upper)`` of shape ``(B, n_k)``: the
        LP-ALL pre-activation bounds (padded outward by :data:`LP_PAD`).
    :param tolerance: ``(B, S)`` the stated slack ``LP_ATOL + LP_RTOL * scale``.
    """

    lower: Tensor
    upper: Tensor
    pre_activation: tuple[tuple[Tensor, Tensor], ...]
    tolerance: Tensor

    def outer(self) -> tuple[Tensor, Tensor]:
        """The bounds widened by ``tolerance``: contain exact LP-ALL (and so the true range)."""
        return self.lower - self.tolerance, self.upper + self.tolerance

    def inner(self) -> tuple[Tensor, Tensor]:
        """The bounds narrowed by ``tolerance``: lie inside exact LP-ALL."""
        return self.lower + self.tolerance, self.upper - self.tolerance


def _as_linprog(enc: Encoding) -> dict[str, object]:
    """Split ``lo <= A v <= hi`` into linprog's ``A_ub v <= b_ub`` and ``A_eq v = b_eq``."""
    a = enc.matrix
    eq = enc.row_lower == enc.row_upper
    has_hi = ~eq & np.isfinite(enc.row_upper)
    has_lo = ~eq & np.isfinite(enc.row_lower)
    a_ub = sparse.vstack([a[has_hi], -a[has_lo]]).tocsr()
    b_ub = np.concatenate([enc.row_upper[has_hi], -enc.row_lower[has_lo]])
    args: dict[str, object] = {"bounds": np.stack([enc.var_lower, enc.var_upper], axis=1)}
    if a_ub.shape[0]:
        args["A_ub"], args["b_ub"] = a_ub, b_ub
    if eq.any():
        args["A_eq"], args["b_eq"] = a[eq], enc.row_lower[eq]
    return args


def _minimum(objective: np.ndarray, problem: dict[str, object]) -> float:
    messages = []
    # Tight tolerances first; HiGHS's defaults as a fallback for numerically awkward instances.
    for options in (HIGHS_OPTIONS, {}):
        with warnings.catch_warnings():
            # scipy warns that options it does not know are passed to HiGHS verbatim: that is the intent.
            warnings.filterwarnings(
                "ignore", message="Unrecognized options detected", category=OptimizeWarning
            )
            res = linprog(objective, method="highs", options=options, **problem)
        if res.status == 0:
            return float(res.fun)
        messages.append(str(res.message))
    raise RuntimeError(
        f"relaxlab.reference.lp: HiGHS did not solve the LP to optimality ({'; '.join(messages)}); "
        "the network may be numerically too hard for the reference (rescale the weights or the box)"
    )


def _pad(lb: np.ndarray, ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lb - LP_PAD * (1.0 + np.abs(lb)), ub + LP_PAD * (1.0 + np.abs(ub))


def _padding_slack(
    blocks: list[tuple[np.ndarray, np.ndarray]], bounds: list[tuple[np.ndarray, np.ndarray]], spec: np.ndarray
) -> np.ndarray:
    """``(S,)`` how far the padding of intermediate bounds can loosen the spec rows.

    Widening a ReLU's interval by ``δ_l``, ``δ_u`` lets its activation exceed the exact hull by
    at most ``δ_l + δ_u`` (the hull's envelopes have slopes in [0, 1]); that slack reaches a spec
    row through at most the absolute weights of the layers after it. Without this term a
    degenerate box (``eps = 0``, every interval a point, padded into a tiny unstable one) made
    LP-ALL looser than exact bounds by more than ``LP_ATOL`` once the weights amplified it.
    """
    depth = len(blocks) - 1
    gain = np.abs(spec) @ np.abs(blocks[depth][0])  # (S, width of the last ReLU layer)
    total = np.zeros(spec.shape[0])
    for k in range(depth - 1, 0, -1):  # bounds[0] is exact interval arithmetic, not padded
        lb, ub = bounds[k]
        total += gain @ (LP_PAD * (2.0 + np.abs(lb) + np.abs(ub)))
        gain = gain @ np.abs(blocks[k][0])
    return total


def _solve_input(prepared: ReferenceInput) -> LpAllResult:
    net = prepared.net
    blocks = net.numpy_blocks()
    depth = net.num_relu_layers
    batch, specs = prepared.spec.shape[:2]
    lower, upper, tolerance = np.zeros((batch, specs)), np.zeros((batch, specs)), np.zeros((batch, specs))
    pre: list[tuple[np.ndarray, np.ndarray]] = [
        (np.zeros((batch, w.shape[0])), np.zeros((batch, w.shape[0]))) for w, _ in blocks[:-1]
    ]
    for i in range(batch):
        lo_x, up_x = prepared.lower[i], prepared.upper[i]
        bounds: list[tuple[np.ndarray, np.ndarray]] = []
        for k in range(depth + 1):
            w, b = blocks[k]
            if k == 0:  # an affine function over a box: interval arithmetic is its exact range
                bounds.append(net.interval_bounds(lo_x, up_x)[0])
                continue
            enc = encode(blocks, lo_x, up_x, bounds, k, "triangle")
            problem = _as_linprog(enc)
            objective = np.zeros(enc.num_vars)
            if k < depth:  # step (A): every neuron of layer k + 1
                lb, ub = np.zeros(w.shape[0]), np.zeros(w.shape[0])
                for j in range(w.shape[0]):
                    objective[enc.last] = w[j]
                    lb[j] = _minimum(objective, problem) + b[j]
                    ub[j] = -_minimum(-objective, problem) + b[j]
                bounds.append(_pad(lb, ub))
            else:  # step (B): the spec rows
                for s in range(specs):
                    objective[enc.last] = prepared.spec[i, s] @ w
                    const = float(prepared.spec[i, s] @ b)
                    lower[i, s] = _minimum(objective, problem) + const
                    upper[i, s] = -_minimum(-objective, problem) + const
        if depth == 0:  # no ReLU: the spec of an affine map over a box, exactly
            w, b = blocks[0]
            cw = prepared.spec[i] @ w
            const = prepared.spec[i] @ b
            lower[i] = np.maximum(cw, 0.0) @ lo_x + np.minimum(cw, 0.0) @ up_x + const
            upper[i] = np.maximum(cw, 0.0) @ up_x + np.minimum(cw, 0.0) @ lo_x + const
        for k, (lb, ub) in enumerate(bounds[:depth]):
            pre[k][0][i], pre[k][1][i] = lb, ub
        tolerance[i] = (
            LP_ATOL
            + LP_RTOL * spec_scale(net, lo_x, up_x, prepared.spec[i])
            + 2.0 * _padding_slack(blocks, bounds, prepared.spec[i])
        )
    return LpAllResult(
        lower=torch.from_numpy(lower),
        upper=torch.from_numpy(upper),
        pre_activation=tuple((torch.from_numpy(lb), torch.from_numpy(ub)) for lb, ub in pre),
        tolerance=torch.from_numpy(tolerance),
    )


def solve_lp_all(
    model: nn.Module | DenseNetwork,
    lower: Tensor,
    upper: Tensor,
    C: Tensor | None = None,
) -> LpAllResult:
    """LP-ALL bounds of ``C f(x)`` over the box ``[lower, upper]``, with its intermediate bounds.

    :param model: an ``nn.Sequential`` of Linear, Conv2d, Flatten, ReLU and
        :class:`relaxlab.nn.Normalize`, or a :class:`DenseNetwork`.
    :param lower: ``(B, *input_shape)`` box lower corner; ``upper`` likewise.
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows; ``None``: the identity on the outputs.
    :return: the :class:`LpAllResult`.
    """
    return _solve_input(prepare_input(model, lower, upper, C))


def lp_all_bounds(
    model: nn.Module | DenseNetwork,
    lower: Tensor,
    upper: Tensor,
    C: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """LP-ALL lower and upper bounds of ``C f(x)`` over the box, each float64 ``(B, S)``.

    Within :data:`LP_ATOL` ``+`` :data:`LP_RTOL` ``* scale`` of exact LP-ALL (see the
    module docstring); :func:`solve_lp_all` also returns the intermediate bounds.
    """
    result = solve_lp_all(model, lower, upper, C)
    return result.lower, result.upper
