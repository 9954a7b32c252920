"""Exact references for tiny ReLU networks: the MILP range and the LP-ALL relaxation.

- :func:`milp_bounds` / :func:`solve_milp`: the exact range of ``C f(x)`` over a box
  (big-M MILP, scipy HiGHS);
- :func:`lp_all_bounds` / :func:`solve_lp_all`: LP-ALL, the optimal layer-wise convex
  relaxation (triangle LP with every intermediate bound itself from the LP);
- :func:`to_dense`: the network as float64 affine blocks separated by ReLUs.

Both references take ``(model, lower, upper, C=None)`` with a box of shape
``(B, *input_shape)`` and return float64 ``(B, S)`` tensors. See docs/references.md.
"""

from __future__ import annotations

from relaxlab.reference.dense import DenseNetwork, to_dense
from relaxlab.reference.lp import LP_ATOL, LP_PAD, LP_RTOL, LpAllResult, lp_all_bounds, solve_lp_all
from relaxlab.reference.milp import MILP_ATOL, MILP_RTOL, MilpResult, milp_bounds, solve_milp

__all__ = [
    "LP_ATOL",
    "LP_PAD",
    "LP_RTOL",
    "MILP_ATOL",
    "MILP_RTOL",
    "DenseNetwork",
    "LpAllResult",
    "MilpResult",
    "lp_all_bounds",
    "milp_bounds",
    "solve_lp_all",
    "solve_milp",
    "to_dense",
]
