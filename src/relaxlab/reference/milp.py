"""Exact output bounds of a tiny ReLU network by mixed-integer linear programming.

For every example ``b`` and specification row ``s`` this solves

    min / max  C[b, s] . f(x)   over   lower[b] <= x <= upper[b]

with scipy's HiGHS MILP solver (:func:`scipy.optimize.milp`), using the big-M
encoding of every unstable ReLU (Tjeng et al. 2019) with interval-arithmetic
pre-activation bounds (padded outward; big-M is exact for any valid bounds).
Stable neurons need no binary. Cost: two MILPs per (example, spec row), each
exponential in the number of unstable neurons in the worst case; meant for
networks with tens of neurons.

Tolerance: HiGHS is run with relative and absolute MIP gaps of 1e-9 and
feasibility tolerances of 1e-9, keeping matrix entries down to 1e-12 (options
passed to HiGHS verbatim); should HiGHS fail there, its defaults with the same
gaps are tried. The returned optimum
is within :data:`MILP_ATOL` ``+`` :data:`MILP_RTOL` ``* scale`` of the true one,
``scale`` being the magnitude of the interval-arithmetic bound of that spec row;
every solve checks this against the network evaluated at the solver's optimal
input and raises when it does not hold.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from attrs import frozen
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn

from relaxlab.reference._encoding import HIGHS_OPTIONS, encode
from relaxlab.reference.dense import DenseNetwork, ReferenceInput, prepare_input, spec_scale

__all__ = ["MILP_ATOL", "MILP_RTOL", "MilpResult", "milp_bounds", "solve_milp"]

#: Absolute slack of the MILP optimum.
MILP_ATOL = 1e-6
#: Slack relative to the interval-arithmetic magnitude of the spec row.
MILP_RTOL = 1e-6

_HIGHS_OPTIONS = {
    **HIGHS_OPTIONS,
    "mip_rel_gap": 1e-9,
    "mip_abs_gap": 1e-9,
    "mip_feasibility_tolerance": 1e-9,
}
_FALLBACK_OPTIONS = {"mip_rel_gap": 1e-9, "mip_abs_gap": 1e-9}


@frozen(eq=False)
class MilpResult:
    """Exact bounds of ``C f(x)`` over a box, with the evidence behind them.

    Every tensor is float64 on the CPU; ``(B, S)`` unless stated.

    :param lower: the solver's minimum of each spec row (exact within ``tolerance``).
    :param upper: the solver's maximum.
    :param lower_attained: ``C f(x*)`` evaluated in float64 at the solver's minimising
        input ``x*`` (clipped into the box). A value the network really takes, so
        ``[lower_attained, upper_attained]`` lies *inside* the true range.
    :param upper_attained: likewise at the maximising input.
    :param lower_input: ``(B, S, *input_shape)`` the minimising inputs.
    :param upper_input: ``(B, S, *input_shape)`` the maximising inputs.
    :param tolerance: the stated slack ``MILP_ATOL + MILP_RTOL * scale`` of each spec row.
    """

    lower: Tensor
    upper: Tensor
    lower_attained: Tensor
    upper_attained: Tensor
    lower_input: Tensor
    upper_input: Tensor
    tolerance: Tensor

    def outer(self) -> tuple[Tensor, Tensor]:
        """Conservative bounds that contain the true range: the optimum widened by ``tolerance``.

        Use these where a test needs "every true output lies within the reference".
        """
        lower = torch.minimum(self.lower, self.lower_attained) - self.tolerance
        upper = torch.maximum(self.upper, self.upper_attained) + self.tolerance
        return lower, upper

    def inner(self) -> tuple[Tensor, Tensor]:
        """Values the network attains: the true range contains ``[lower, upper]`` of these.

        Use these where a test needs "a sound bound contains the reference".
        """
        return self.lower_attained, self.upper_attained


def _solve(
    objective: np.ndarray,
    constraint: LinearConstraint,
    bounds: Bounds,
    integrality: np.ndarray,
    time_limit: float | None,
) -> np.ndarray:
    messages = []
    # Tight tolerances first; HiGHS's defaults (1e-6/1e-7, gap 1e-9) as a fallback for
    # numerically awkward instances. Either way the optimum is checked afterwards.
    for options in (_HIGHS_OPTIONS, _FALLBACK_OPTIONS):
        opts: dict[str, float] = dict(options)
        if time_limit is not None:
            opts["time_limit"] = time_limit
        with warnings.catch_warnings():
            # scipy warns that options it does not know are passed to HiGHS verbatim: that is the intent.
            warnings.filterwarnings(
                "ignore", message="Unrecognized options detected", category=RuntimeWarning
            )
            res = milp(
                objective, integrality=integrality, bounds=bounds, constraints=constraint, options=opts
            )
        if res.status == 0 and res.x is not None:
            return np.asarray(res.x, dtype=np.float64)
        messages.append(str(res.message))
    raise RuntimeError(
        f"relaxlab.reference.milp: HiGHS did not solve the MILP to optimality ({'; '.join(messages)}); "
        "the network may be too large or numerically too hard for the exact reference, or raise time_limit"
    )


def _solve_input(prepared: ReferenceInput, time_limit: float | None) -> MilpResult:
    net = prepared.net
    blocks = net.numpy_blocks()
    depth = net.num_relu_layers
    w_last, b_last = blocks[-1]
    batch, specs = prepared.spec.shape[:2]
    d = net.input_size
    shape = (batch, specs)
    lower, upper = np.zeros(shape), np.zeros(shape)
    tolerance = np.zeros(shape)
    argmin, argmax = np.zeros((*shape, d)), np.zeros((*shape, d))
    for i in range(batch):
        lo_x, up_x = prepared.lower[i], prepared.upper[i]
        enc = encode(blocks, lo_x, up_x, net.interval_bounds(lo_x, up_x), depth, "milp")
        constraint = LinearConstraint(enc.matrix, enc.row_lower, enc.row_upper)
        box = Bounds(enc.var_lower, enc.var_upper)
        spec = prepared.spec[i]
        tolerance[i] = MILP_ATOL + MILP_RTOL * spec_scale(net, lo_x, up_x, spec)
        for s in range(specs):
            row = spec[s] @ w_last
            const = float(spec[s] @ b_last)
            objective = np.zeros(enc.num_vars)
            objective[enc.last] = row
            for sign, values, inputs in ((1.0, lower, argmin), (-1.0, upper, argmax)):
                v = _solve(sign * objective, constraint, box, enc.integrality, time_limit)
                values[i, s] = float(row @ v[enc.last]) + const
                inputs[i, s] = np.clip(v[:d], lo_x, up_x)
    attained = {}
    for key, inputs in (("lower", argmin), ("upper", argmax)):
        out = net(torch.from_numpy(inputs.reshape(-1, d))).reshape(batch, specs, -1)
        attained[key] = torch.einsum("bsk,bsk->bs", torch.from_numpy(prepared.spec), out)
    result = MilpResult(
        lower=torch.from_numpy(lower),
        upper=torch.from_numpy(upper),
        lower_attained=attained["lower"],
        upper_attained=attained["upper"],
        lower_input=torch.from_numpy(argmin).reshape(batch, specs, *net.input_shape),
        upper_input=torch.from_numpy(argmax).reshape(batch, specs, *net.input_shape),
        tolerance=torch.from_numpy(tolerance),
    )
    gap = torch.maximum(
        (result.lower_attained - result.lower).abs(), (result.upper_attained - result.upper).abs()
    )
    if bool((gap > result.tolerance).any()):
        worst = float((gap - result.tolerance).max())
        raise RuntimeError(
            "relaxlab.reference.milp: the MILP optimum and the network evaluated at the optimal input "
            f"differ by more than the stated tolerance (excess {worst:.3g}); the problem is numerically "
            "too hard for the exact reference (rescale the weights or the box)"
        )
    return result


def solve_milp(
    model: nn.Module | DenseNetwork,
    lower: Tensor,
    upper: Tensor,
    C: Tensor | None = None,
    *,
    time_limit: float | None = None,
) -> MilpResult:
    """Exact bounds of ``C f(x)`` over the box ``[lower, upper]``, with argmin/argmax inputs.

    :param model: an ``nn.Sequential`` of Linear, Conv2d, Flatten, ReLU and
        :class:`relaxlab.nn.Normalize`, or a :class:`DenseNetwork`.
    :param lower: ``(B, *input_shape)`` box lower corner; ``upper`` likewise.
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows; ``None``: the identity on the outputs.
    :param time_limit: seconds per MILP solve (``None``: no limit); reaching it raises.
    :return: the :class:`MilpResult`.
    """
    return _solve_input(prepare_input(model, lower, upper, C), time_limit)


def milp_bounds(
    model: nn.Module | DenseNetwork,
    lower: Tensor,
    upper: Tensor,
    C: Tensor | None = None,
    *,
    time_limit: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact lower and upper bounds of ``C f(x)`` over the box, each float64 ``(B, S)``.

    Exact within :data:`MILP_ATOL` ``+`` :data:`MILP_RTOL` ``* scale`` (see the module
    docstring); :func:`solve_milp` also returns conservative outer bounds, the
    values attained and the inputs attaining them.
    """
    result = solve_milp(model, lower, upper, C, time_limit=time_limit)
    return result.lower, result.upper
