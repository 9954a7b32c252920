"""Unit tests of the exact references: dense conversion, MILP range, LP-ALL.

Tolerances: MILP and LP-ALL results are compared with ``1e-6 + 1e-6 * scale``
(``result.tolerance``, ``scale`` the interval-arithmetic magnitude of the spec row; LP-ALL's also
covers the reach of its padding)
or, where the expected value is a small hand-computed number, with ``1e-6``
absolute; the dense conversion is compared to the torch model with ``1e-12``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from relaxlab.nn import Normalize
from relaxlab.reference import (
    LP_PAD,
    DenseNetwork,
    lp_all_bounds,
    milp_bounds,
    solve_lp_all,
    solve_milp,
    to_dense,
)

DT = torch.float64


def _linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    w = torch.tensor(weight, dtype=DT)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None).to(DT)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=DT))
    return layer


# --- seeds/001 App. A.4 network ------------------------------------------------------------------

W1 = [[2.0, 1.0], [-3.0, 4.0]]
W2 = [[4.0, -2.0], [2.0, 1.0]]
W3 = [[-2.0, 1.0]]
X0 = [0.0, 1.0]
EPS = 2.0


def _a4_model() -> nn.Sequential:
    return nn.Sequential(_linear(W1), nn.ReLU(), _linear(W2), nn.ReLU(), _linear(W3))


def _a4_numpy(x: np.ndarray) -> np.ndarray:
    """The A.4 network on ``(N, 2)`` points, written independently of the library."""
    h = np.maximum(x @ np.array(W1).T, 0.0)
    h = np.maximum(h @ np.array(W2).T, 0.0)
    return (h @ np.array(W3).T)[:, 0]


def _a4_vertex_range() -> tuple[float, float]:
    """Exact range of the A.4 network on its box by vertex reasoning.

    f is continuous and piecewise linear. Each linear piece is a polygon whose edges
    lie on box edges or on a kink line ``z_j(x) = 0``, where ``z_j`` is neuron j's
    pre-activation as the affine function it is under some activation pattern of the
    earlier neurons. A linear function attains its extremes over a polygon at a
    vertex, and every vertex is an intersection of two such lines inside the box.
    So the extremes of f over all in-box pairwise intersections are exact.
    """
    lo = np.array(X0) - EPS
    hi = np.array(X0) + EPS
    lines = [(np.array([1.0, 0.0]), -lo[0]), (np.array([1.0, 0.0]), -hi[0])]
    lines += [(np.array([0.0, 1.0]), -lo[1]), (np.array([0.0, 1.0]), -hi[1])]
    a1 = np.array(W1)
    lines += [(a1[j], 0.0) for j in range(2)]  # first-layer kinks
    for pattern in itertools.product([0.0, 1.0], repeat=2):  # second-layer kinks under each pattern
        g = np.array(W2) @ (np.diag(pattern) @ a1)
        lines += [(g[j], 0.0) for j in range(2)]
    points = []
    for (g1, h1), (g2, h2) in itertools.combinations(lines, 2):
        mat = np.stack([g1, g2])
        if abs(np.linalg.det(mat)) < 1e-12:
            continue
        p = np.linalg.solve(mat, -np.array([h1, h2]))
        if np.all(p >= lo - 1e-9) and np.all(p <= hi + 1e-9):
            points.append(np.clip(p, lo, hi))
    values = _a4_numpy(np.array(points))
    return float(values.min()), float(values.max())


def test_a4_exact_range_by_vertices_and_grid() -> None:
    """The brute-force range matches the hand computation; a dense grid agrees."""
    vmin, vmax = _a4_vertex_range()
    # By hand: min at x = (2, 1.5): h1 = relu(5.5, 0) = (5.5, 0), h2 = (22, 11), f = -44 + 11 = -33.
    # Max at x = (6/7, 3): h1 = (33/7, 66/7), h2 = relu(0, 132/7), f = 132/7.
    assert vmin == pytest.approx(-33.0, abs=1e-12)
    assert vmax == pytest.approx(132.0 / 7.0, abs=1e-12)
    grid = np.linspace(-1.0, 1.0, 801)
    pts = np.stack(np.meshgrid(grid * EPS + X0[0], grid * EPS + X0[1]), axis=-1).reshape(-1, 2)
    values = _a4_numpy(pts)
    assert values.min() >= vmin - 1e-9 and values.max() <= vmax + 1e-9
    # f is Lipschitz with constant <= 80 in l_inf here; the grid step is 0.005.
    assert values.min() <= vmin + 0.5 and values.max() >= vmax - 0.5


def test_a4_milp_is_exact() -> None:
    vmin, vmax = _a4_vertex_range()
    x = torch.tensor([X0], dtype=DT)
    result = solve_milp(_a4_model(), x - EPS, x + EPS)
    tol = float(result.tolerance)
    assert float(result.lower) == pytest.approx(vmin, abs=tol)
    assert float(result.upper) == pytest.approx(vmax, abs=tol)
    # The optimum is attained: the torch model at the solver's inputs gives the same values.
    model = _a4_model()
    assert float(model(result.lower_input[0]).detach()) == pytest.approx(vmin, abs=tol)
    assert float(model(result.upper_input[0]).detach()) == pytest.approx(vmax, abs=tol)
    outer_lo, outer_up = result.outer()
    assert float(outer_lo) <= vmin and float(outer_up) >= vmax


def test_a4_lp_all_between_milp_and_the_papers_relaxations() -> None:
    """MILP (exact) within LP-ALL within CROWN-0 [-42, 24.2857] within IBP [-56, 32] (seeds/001 A.4)."""
    x = torch.tensor([X0], dtype=DT)
    result = solve_lp_all(_a4_model(), x - EPS, x + EPS)
    tol = float(result.tolerance)
    lower, upper = float(result.lower), float(result.upper)
    assert lower <= -33.0 + tol and upper >= 132.0 / 7.0 - tol
    assert lower >= -42.0 - tol and upper <= 24.0 + 2.0 / 7.0 + tol  # CROWN-0 bound is 24 + 2/7
    assert lower > -42.0 + 1.0 and upper < 24.2857 - 0.1  # strictly tighter than CROWN-0 here
    # First-layer bounds are interval arithmetic (exact over a box): [-5, 7] and [-10, 18] (A.4 text).
    (lb1, ub1), (lb2, ub2) = result.pre_activation
    assert lb1[0].tolist() == pytest.approx([-5.0, -10.0], abs=1e-6)
    assert ub1[0].tolist() == pytest.approx([7.0, 18.0], abs=1e-6)
    # LP-ALL's second-layer bounds are inside IBP's [-36, 28] x [0, 32] (A.4 text) and contain the
    # exact ranges of the second-layer pre-activations, sampled here on a grid.
    # Intermediate bounds are padded outward by LP_PAD * (1 + |v|) (4e-6 at most here).
    pad = 1e-6 + LP_PAD * 37.0
    assert torch.all(lb2[0] >= torch.tensor([-36.0, 0.0], dtype=DT) - pad)
    assert torch.all(ub2[0] <= torch.tensor([28.0, 32.0], dtype=DT) + pad)
    grid = np.linspace(-1.0, 1.0, 201)
    pts = np.stack(np.meshgrid(grid * EPS + X0[0], grid * EPS + X0[1]), axis=-1).reshape(-1, 2)
    z2 = np.maximum(pts @ np.array(W1).T, 0.0) @ np.array(W2).T
    assert np.all(z2.min(0) >= lb2[0].numpy() - 1e-9) and np.all(z2.max(0) <= ub2[0].numpy() + 1e-9)


# --- single ReLU and small hand-computed nets ----------------------------------------------------


@pytest.mark.parametrize(
    ("lower", "upper"),
    [(-1.0, 2.0), (-3.0, -0.5), (0.5, 4.0), (0.0, 1.0), (-2.0, 0.0), (1.5, 1.5)],
)
def test_single_relu_is_exact_at_end_points(lower: float, upper: float) -> None:
    """relu over [l, u] ranges exactly over [relu(l), relu(u)]; both references are exact here."""
    model = nn.Sequential(nn.ReLU())
    lo = torch.tensor([[lower]], dtype=DT)
    up = torch.tensor([[upper]], dtype=DT)
    expected = [max(lower, 0.0), max(upper, 0.0)]
    for lb, ub in (milp_bounds(model, lo, up), lp_all_bounds(model, lo, up)):
        assert lb.dtype == DT and lb.shape == (1, 1)
        assert [float(lb), float(ub)] == pytest.approx(expected, abs=1e-6)


def test_scaled_relu_is_exact() -> None:
    """f(x) = 3 relu(1 - 2x) - 1 on x in [-1, 2]: pre-activation in [-3, 3], so f in [-1, 8]."""
    model = nn.Sequential(_linear([[-2.0]], [1.0]), nn.ReLU(), _linear([[3.0]], [-1.0]))
    lo = torch.tensor([[-1.0]], dtype=DT)
    up = torch.tensor([[2.0]], dtype=DT)
    for lb, ub in (milp_bounds(model, lo, up), lp_all_bounds(model, lo, up)):
        assert [float(lb), float(ub)] == pytest.approx([-1.0, 8.0], abs=1e-6)


def test_lp_all_is_loose_where_milp_is_exact() -> None:
    """f(x) = relu(x) - relu(x) is 0, but the triangle of each copy is independent.

    On x in [-1, 1] each copy a_i lies in [max(0, x), (x + 1) / 2]; the LP minimum of
    a_1 - a_2 is max(0, x) - (x + 1) / 2, smallest at x = 0: -1/2. Symmetrically +1/2.
    """
    model = nn.Sequential(_linear([[1.0], [1.0]]), nn.ReLU(), _linear([[1.0, -1.0]]))
    lo = torch.tensor([[-1.0]], dtype=DT)
    up = torch.tensor([[1.0]], dtype=DT)
    m_lo, m_up = milp_bounds(model, lo, up)
    assert [float(m_lo), float(m_up)] == pytest.approx([0.0, 0.0], abs=1e-6)
    p_lo, p_up = lp_all_bounds(model, lo, up)
    assert [float(p_lo), float(p_up)] == pytest.approx([-0.5, 0.5], abs=1e-6)


def test_spec_rows_and_batch() -> None:
    """Two outputs, a margin spec shared by the batch, and two boxes."""
    model = nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]]), nn.ReLU(), _linear([[1.0, 0.0], [0.0, 1.0]]))
    lower = torch.tensor([[-1.0, 0.5], [1.0, -2.0]], dtype=DT)
    upper = torch.tensor([[2.0, 1.0], [3.0, -1.0]], dtype=DT)
    spec = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=DT)
    lb, ub = milp_bounds(model, lower, upper, spec)
    assert lb.shape == (2, 2)
    # box 0: relu(x1) in [0, 2], relu(x2) in [0.5, 1]; box 1: relu(x1) in [1, 3], relu(x2) = 0.
    assert lb.tolist() == [pytest.approx([-1.0, 1.0], abs=1e-6), pytest.approx([1.0, 0.0], abs=1e-6)]
    assert ub.tolist() == [pytest.approx([1.5, 2.0], abs=1e-6), pytest.approx([3.0, 0.0], abs=1e-6)]
    batched = spec.expand(2, 2, 2)
    lb3, ub3 = milp_bounds(model, lower, upper, batched)
    assert torch.equal(lb3, lb) and torch.equal(ub3, ub)


# --- dense conversion ----------------------------------------------------------------------------


def _conv_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        Normalize([0.1, -0.2], [0.5, 2.0]),
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(3, 2, 3, padding="same", bias=False), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 4),
        nn.ReLU(),
        nn.Linear(4, 2),
    ).to(DT)


def test_dense_matches_model() -> None:
    model = _conv_model()
    net = to_dense(model, (2, 5, 5))
    assert isinstance(net, DenseNetwork)
    assert net.num_relu_layers == 3 and net.widths() == [50, 27, 18, 4, 2]
    x = torch.randn(7, 2, 5, 5, dtype=DT) * 3
    torch.testing.assert_close(net(x), model(x), atol=1e-12, rtol=1e-12)


def test_dense_of_float32_model_is_float64() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    net = to_dense(model, (3,))
    assert all(w.dtype == DT for w in net.weights) and all(b.dtype == DT for b in net.biases)
    x = torch.randn(5, 3)
    torch.testing.assert_close(net(x), model.double()(x.double()), atol=1e-12, rtol=0.0)


def test_dense_relu_placement() -> None:
    """Leading, doubled and trailing ReLUs: f(x) = relu(-relu(x)) = 0 composed as identity blocks."""
    model = nn.Sequential(nn.ReLU(), nn.ReLU(), _linear([[-1.0]]), nn.ReLU())
    net = to_dense(model, (1,))
    assert net.num_relu_layers == 3
    x = torch.linspace(-2, 2, 9, dtype=DT).reshape(-1, 1)
    torch.testing.assert_close(net(x), model(x))
    lb, ub = milp_bounds(model, torch.tensor([[-2.0]], dtype=DT), torch.tensor([[3.0]], dtype=DT))
    assert float(lb) == pytest.approx(0.0, abs=1e-6) and float(ub) == pytest.approx(0.0, abs=1e-6)


def test_conv_milp_attained_and_contains_samples() -> None:
    model = _conv_model()
    torch.manual_seed(1)
    center = torch.randn(1, 2, 5, 5, dtype=DT)
    lower, upper = center - 0.05, center + 0.05
    result = solve_milp(model, lower, upper)
    assert result.lower.shape == (1, 2)
    for inputs, values in ((result.lower_input, result.lower), (result.upper_input, result.upper)):
        assert torch.all(inputs >= lower.unsqueeze(1)) and torch.all(inputs <= upper.unsqueeze(1))
        out = torch.stack([model(inputs[0, s : s + 1])[0, s] for s in range(2)]).detach()
        assert torch.allclose(out, values[0], atol=float(result.tolerance.max()), rtol=0.0)
    samples = lower + (upper - lower) * torch.rand(200, 2, 5, 5, dtype=DT)
    out = model(samples).detach()
    outer_lo, outer_up = result.outer()
    assert torch.all(out >= outer_lo) and torch.all(out <= outer_up)
    lp_lo, lp_up = lp_all_bounds(model, lower, upper)
    tol = result.tolerance
    assert torch.all(lp_lo <= result.lower_attained + tol) and torch.all(lp_up >= result.upper_attained - tol)


# --- bad input -----------------------------------------------------------------------------------


def _box(d: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return -torch.ones(1, d, dtype=DT), torch.ones(1, d, dtype=DT)


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (nn.Sequential(nn.Linear(2, 2), nn.Tanh()), TypeError, r"layer 1 \(Tanh\) is not supported"),
        (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Sigmoid())), TypeError, r"layer 1\.0 \(Sigmoid\)"),
        (nn.Linear(2, 2), TypeError, "expected an nn.Sequential"),
        (nn.Sequential(nn.Flatten(0), nn.Linear(2, 1)), ValueError, "start_dim=0"),
        (nn.Sequential(nn.Linear(3, 1)), ValueError, r"does not accept inputs of shape \(2,\)"),
    ],
)
def test_refuses_bad_models(model: nn.Module, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        milp_bounds(model, *_box())
    with pytest.raises(error, match=match):
        lp_all_bounds(model, *_box())


def test_refuses_non_finite_weights_and_reflect_padding() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values in 'weight'"):
        milp_bounds(model, *_box())
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        to_dense(conv, (1, 4, 4))


def test_refuses_bad_boxes_and_specs() -> None:
    model = nn.Sequential(nn.Linear(2, 3))
    lo, up = _box()
    with pytest.raises(ValueError, match="differ in shape"):
        milp_bounds(model, lo, up[:, :1])
    with pytest.raises(ValueError, match="box is empty"):
        milp_bounds(model, up, lo)
    with pytest.raises(ValueError, match="finite"):
        milp_bounds(model, lo, up * float("inf"))
    with pytest.raises(ValueError, match="batch dimension"):
        milp_bounds(model, lo[0], up[0])
    with pytest.raises(ValueError, match=r"C has shape \(1, 2, 2\).*outputs=3"):
        milp_bounds(model, lo, up, torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match=r"C has shape \(2, 1, 3\)"):
        lp_all_bounds(model, lo, up, torch.ones(2, 1, 3))


def test_lp_all_tolerance_covers_the_padding_of_degenerate_intervals() -> None:
    """At eps = 0 every interval is a point; padding a point at 0 makes that neuron unstable in
    the LP, and the slack reaches the output through the weights after it (found by the
    ``explore`` Hypothesis profile). Exact bounds are [0, 0] here; LP-ALL's upper bound is
    looser than LP_ATOL, and must stay within its stated tolerance."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        for layer, weight in zip((model[0], model[2], model[4]), (1.0, 1.0, 100.0), strict=True):
            layer.weight.fill_(weight)
            layer.bias.zero_()
    x = torch.zeros(1, 1, dtype=DT)
    result = solve_lp_all(model, x, x)
    with torch.no_grad():
        exact = float(model(x))
    assert exact == 0.0
    looseness = float(result.upper[0, 0]) - exact
    assert looseness > 1e-6  # the padding's effect: 100 · LP_PAD is visible
    assert looseness <= float(result.tolerance[0, 0])
    assert float(result.lower[0, 0]) <= exact + float(result.tolerance[0, 0])
