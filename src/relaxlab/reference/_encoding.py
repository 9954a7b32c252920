"""Linear encodings of a dense ReLU network over a box, shared by the MILP and the LP.

Variables are ``[x, a_1, ..., a_k, delta...]``: the flattened input, the
post-activation values of the first ``k`` ReLU layers, and (MILP only) one
binary per unstable neuron. Pre-activations ``z = W a_prev + b`` are not
variables; they are substituted into the constraints.

For a neuron with pre-activation bounds ``[l, u]``:

- negative (``u <= 0``): ``a = 0``, and (triangle only) ``l <= z <= u``;
- positive (``l >= 0``): ``a = z``, and (triangle only) ``l <= a <= u``;
- unstable, both encodings: ``a >= 0``, ``a >= z``, ``a <= u``;
  - ``"triangle"`` (the convex hull of relu on ``[l, u]``): ``a <= u (z - l) / (u - l)``;
  - ``"milp"`` (big-M, exact for any valid ``l, u``): ``a <= u d``,
    ``a <= z - l (1 - d)``, ``d`` binary.

The triangle's three inequalities already imply ``l <= z <= u``, so each case is
exactly the convex hull of the graph of relu over ``[l, u]`` (Salman et al.,
Prop. B.1); big-M's feasible set projects exactly onto the graph. The MILP leaves
out the (valid but redundant) range constraints of stable neurons: with bounds
that are tight to rounding, a solver that drops tiny coefficients could
otherwise declare the problem infeasible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from attrs import frozen
from scipy import sparse

#: HiGHS tolerances every reference solve uses: tight feasibility, no tiny coefficients dropped.
HIGHS_OPTIONS = {
    "small_matrix_value": 1e-12,
    "primal_feasibility_tolerance": 1e-9,
    "dual_feasibility_tolerance": 1e-9,
}

Mode = Literal["milp", "triangle"]


@frozen(eq=False)
class Encoding:
    """``row_lower <= A v <= row_upper``, ``var_lower <= v <= var_upper``, ``integrality``.

    :param last: slice of the variables of the last encoded layer (``x`` when no ReLU layer is encoded).
    """

    matrix: sparse.csr_array
    row_lower: np.ndarray
    row_upper: np.ndarray
    var_lower: np.ndarray
    var_upper: np.ndarray
    integrality: np.ndarray
    last: slice

    @property
    def num_vars(self) -> int:
        return self.var_lower.shape[0]


def encode(
    blocks: Sequence[tuple[np.ndarray, np.ndarray]],
    lower: np.ndarray,
    upper: np.ndarray,
    pre_bounds: Sequence[tuple[np.ndarray, np.ndarray]],
    depth: int,
    mode: Mode,
) -> Encoding:
    """Encode the input box and the first ``depth`` ReLU layers.

    :param blocks: dense blocks ``(W_k, b_k)``; block ``k - 1`` computes layer ``k``'s pre-activation.
    :param lower: ``(d,)`` input lower bounds; ``upper`` likewise.
    :param pre_bounds: valid pre-activation bounds ``(l_k, u_k)`` of at least the first ``depth`` layers.
    :param depth: number of ReLU layers to encode.
    :param mode: ``"milp"`` (big-M, exact) or ``"triangle"`` (LP relaxation).
    """
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    row_lo: list[float] = []
    row_hi: list[float] = []
    var_lo: list[float] = list(lower)
    var_hi: list[float] = list(upper)
    integral: list[int] = [0] * len(lower)
    prev = slice(0, len(lower))

    def add_row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(row_lo)
        for c, v in entries:
            if v != 0.0:
                rows.append(r)
                cols.append(c)
                vals.append(v)
        row_lo.append(lo)
        row_hi.append(hi)

    for k in range(depth):
        w, b = blocks[k]
        lb, ub = pre_bounds[k]
        start = len(var_lo)
        width = w.shape[0]
        # The layer's post-activations first, contiguous; its binaries (MILP) after them.
        var_lo.extend([0.0] * width)
        var_hi.extend([0.0] * width)
        integral.extend([0] * width)
        prev_idx = range(prev.start, prev.stop)
        pending: list[tuple[int, float, float, list[tuple[int, float]], float]] = []
        for j in range(width):
            a = start + j
            z_terms = list(zip(prev_idx, w[j].tolist(), strict=True))
            minus_z = [(c, -v) for c, v in z_terms]
            c0, lj, uj = float(b[j]), float(lb[j]), float(ub[j])
            if uj <= 0.0:  # negative: a = 0 (and z in [l, u] for the convex hull)
                if mode == "triangle":
                    add_row(z_terms, lj - c0, uj - c0)
            elif lj >= 0.0:  # positive: a = z (and a in [l, u] for the convex hull)
                if mode == "triangle":
                    var_lo[a], var_hi[a] = lj, uj
                else:
                    var_lo[a], var_hi[a] = -np.inf, np.inf
                add_row([(a, 1.0), *minus_z], c0, c0)
            else:  # unstable: a >= 0 (variable bound), a <= u, a >= z
                var_hi[a] = uj
                add_row([(a, 1.0), *minus_z], c0, np.inf)
                if mode == "triangle":  # a <= u (z - l) / (u - l)
                    s = uj / (uj - lj)
                    add_row([(a, 1.0), *((c, -s * v) for c, v in z_terms)], -np.inf, s * (c0 - lj))
                else:
                    pending.append((a, lj, uj, minus_z, c0))
        for a, lj, uj, minus_z, c0 in pending:
            d = len(var_lo)
            var_lo.append(0.0)
            var_hi.append(1.0)
            integral.append(1)
            add_row([(a, 1.0), (d, -uj)], -np.inf, 0.0)  # a <= u d
            add_row([(a, 1.0), (d, -lj), *minus_z], -np.inf, c0 - lj)  # a <= z - l (1 - d)
        prev = slice(start, start + width)
    matrix = sparse.csr_array(
        (
            np.asarray(vals, dtype=np.float64),
            (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
        ),
        shape=(len(row_lo), len(var_lo)),
    )
    return Encoding(
        matrix=matrix,
        row_lower=np.asarray(row_lo, dtype=np.float64),
        row_upper=np.asarray(row_hi, dtype=np.float64),
        var_lower=np.asarray(var_lo, dtype=np.float64),
        var_upper=np.asarray(var_hi, dtype=np.float64),
        integrality=np.asarray(integral, dtype=np.int64),
        last=prev,
    )
