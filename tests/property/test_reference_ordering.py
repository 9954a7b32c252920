"""Orderings that are theorems, checked on random tiny networks and boxes.

For a network f, a box X and spec rows C, as intervals:

    range of C f over X  =  MILP  ⊆  LP-ALL  ⊆  bound of every registered relaxation,

and hBox ⊆ IBP. Why LP-ALL lies inside *every* registered relaxation (Salman et al.
2019, seeds/003 Sec. 4-5): let ``T`` be LP-ALL's polytope (input box, affine layers,
every ReLU replaced by the convex hull of its graph over LP-ALL's pre-activation
bounds ``[l*, u*]``). A relaxation R with intermediate bounds ``[l_R, u_R]`` uses, for
each neuron, a lower and an upper line that are sound on its (possibly widened,
``transform_bounds``) interval ``[l', u'] ⊇ [l_R, u_R]``; the region between two such
lines over ``[l', u']`` is convex and contains the graph of relu there, hence
contains the convex hull over any ``[l*, u*] ⊆ [l', u']``. Backsubstitution (and
interval arithmetic, whose ReLU box ``[relu(l'), relu(u')]`` also contains that hull)
only combines inequalities that hold on such regions, so its bound of any linear
function is at most the minimum over ``T``. By induction over layers ``l_R <= l*``
and ``u_R >= u*`` (the intermediate bounds of R are themselves such bounds), so the
claim holds at every layer. The only assumptions are that R's lines are sound on
its transformed interval and that its transform widens (``[l', u'] ⊇ [l, u]``): what
soundness of a relaxation means. No assumption on lines staying inside the triangle
is needed: lines outside it are just looser. (Pointwise-tighter lines do *not*
give tighter network bounds in general, since lines depend on ``[l, u]``; only the
comparison with LP-ALL, the optimum of the whole framework, is a theorem.)

hBox ⊆ IBP (seeds/000 App. B.2): by induction, the set hBox's constraints allow at
each layer projects into IBP's box (unstable: ``[0, u_hBox] ⊆ [0, u_IBP]``;
positive: ``a = z ∈ [l_hBox, u_hBox] ⊆ [relu(l_IBP), relu(u_IBP)]``).

Tolerances (all stated, none hidden): the references carry
``tolerance = 1e-6 + 1e-6 * scale`` per spec row (``scale``: magnitude of the
interval-arithmetic bound), LP-ALL plus twice the reach of its padding
(``relaxlab.reference.lp._padding_slack``); the engine runs in float64 and is allowed
``ENGINE_RTOL * (1 + scale)`` of rounding. Where a check compares a bound with a
value the network attains (``MilpResult.inner()``), only the bound's own slack is
used. Solver calls are slow, so the examples are few (``ci`` profile) and the
networks tiny: 1-3 hidden layers, widths <= 4 (conv layers <= 6 neurons),
inputs <= 3 values, batch 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import relaxlab
from relaxlab.nn import Normalize
from relaxlab.reference import LpAllResult, MilpResult, solve_lp_all, solve_milp, to_dense
from relaxlab.reference.dense import spec_scale

DT = torch.float64
#: Engine rounding slack, relative to ``1 + scale`` (float64 backsubstitution).
ENGINE_RTOL = 1e-9

#: Solver-backed examples per test: a quarter of the profile's budget, at least 8.
SOLVER_EXAMPLES = max(8, settings().max_examples // 4)
solver_settings = settings(
    max_examples=SOLVER_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_weights = st.one_of(
    st.just(0.0),
    st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32),
)


def _fill(draw: st.DrawFn, module: nn.Module) -> None:
    """Overwrite every parameter of ``module`` with drawn values (zeros drawn often)."""
    with torch.no_grad():
        for p in module.parameters():
            values = draw(st.lists(_weights, min_size=p.numel(), max_size=p.numel()))
            p.copy_(torch.tensor(values, dtype=DT).reshape(p.shape))


Problem = tuple[nn.Sequential, Tensor, float, Tensor | None]


@st.composite
def tiny_problems(draw: st.DrawFn, max_hidden: int = 3, max_width: int = 4, big: bool = False) -> Problem:
    """A tiny float64 dense or conv ReLU network, a box around a drawn centre, optional specs.

    ``big`` multiplies every weight by a drawn factor up to 100 (large values).
    """
    hidden = draw(st.integers(1, max_hidden))
    layers: list[nn.Module] = []
    if draw(st.booleans()):  # dense
        d = draw(st.integers(1, 3))
        shape: tuple[int, ...] = (d,)
        width = d
    else:  # conv on a 1-channel image with at most 3 pixels
        h, w = draw(st.sampled_from([(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]))
        shape = (1, h, w)
        if draw(st.booleans()):
            layers.append(Normalize(draw(_weights), draw(st.floats(0.25, 4.0))))
        c_out = draw(st.integers(1, 2))
        kh, kw = draw(st.integers(1, h)), draw(st.integers(1, w))
        pad = draw(st.integers(0, 1)) if c_out * (h - kh + 3) * (w - kw + 3) <= 6 else 0
        conv = nn.Conv2d(1, c_out, (kh, kw), padding=pad).to(DT)
        _fill(draw, conv)
        layers += [conv, nn.ReLU(), nn.Flatten()]
        width = c_out * (h - kh + 1 + 2 * pad) * (w - kw + 1 + 2 * pad)
        hidden -= 1
    for _ in range(hidden):
        nxt = draw(st.integers(1, max_width))
        lin = nn.Linear(width, nxt).to(DT)
        _fill(draw, lin)
        layers += [lin, nn.ReLU()]
        width = nxt
    out = draw(st.integers(1, 3))
    last = nn.Linear(width, out).to(DT)
    _fill(draw, last)
    layers.append(last)
    model = nn.Sequential(*layers).to(DT)
    if big:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(draw(st.sampled_from([1.0, 10.0, 100.0])))
    n = int(np.prod(shape))
    centre = torch.tensor(draw(st.lists(st.floats(-2.0, 2.0, width=32), min_size=n, max_size=n)), dtype=DT)
    eps = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.5, width=32)))
    spec = None
    if draw(st.booleans()):
        rows = draw(st.integers(1, 2))
        values = draw(
            st.lists(st.sampled_from([-1.0, 0.0, 1.0, 2.0]), min_size=rows * out, max_size=rows * out)
        )
        spec = torch.tensor(values, dtype=DT).reshape(1, rows, out)
    return model, centre.reshape(1, *shape), eps, spec


def _a4_problem() -> Problem:
    """seeds/001 App. A.4 network, box [x0 - 2, x0 + 2] with x0 = (0, 1)."""
    model = nn.Sequential(
        nn.Linear(2, 2, bias=False),
        nn.ReLU(),
        nn.Linear(2, 2, bias=False),
        nn.ReLU(),
        nn.Linear(2, 1, bias=False),
    ).to(DT)
    with torch.no_grad():
        for layer, w in zip(model[::2], ([[2, 1], [-3, 4]], [[4, -2], [2, 1]], [[-2, 1]]), strict=True):
            layer.weight.copy_(torch.tensor(w, dtype=DT))
    return model, torch.tensor([[0.0, 1.0]], dtype=DT), 2.0, None


def _spec_out(model: nn.Module, x: Tensor, spec: Tensor | None) -> Tensor:
    """``(N, S)`` spec rows of the torch model's outputs at ``(N, *shape)`` points (batch-1 spec)."""
    with torch.no_grad():
        out = model(x)
    return out if spec is None else out @ spec[0].T


def _box_points(lower: Tensor, upper: Tensor, count: int, seed: int) -> Tensor:
    """Uniform samples plus every vertex of the (batch-1) box."""
    gen = torch.Generator().manual_seed(seed)
    shape = lower.shape[1:]
    uniform = lower + (upper - lower) * torch.rand(count, *shape, generator=gen, dtype=DT)
    lo, up = lower.reshape(-1), upper.reshape(-1)
    corners = [
        torch.where(torch.tensor(bits, dtype=torch.bool), up, lo)
        for bits in itertools.product([0, 1], repeat=lo.numel())
    ]
    return torch.cat([uniform, torch.stack(corners).reshape(-1, *shape)])


def _check_milp(
    model: nn.Module, lower: Tensor, upper: Tensor, spec: Tensor | None, milp: MilpResult
) -> None:
    """The optimum is attained at the solver's inputs, and every sampled point lies within it."""
    tol = milp.tolerance[0]
    for inputs, values in ((milp.lower_input, milp.lower), (milp.upper_input, milp.upper)):
        assert torch.all(inputs >= lower.unsqueeze(1)) and torch.all(inputs <= upper.unsqueeze(1))
        at = _spec_out(model, inputs[0], spec)  # (S, S): row s is the point that optimises spec s
        assert torch.all((at.diagonal() - values[0]).abs() <= tol)
    out_lo, out_up = milp.outer()
    values = _spec_out(model, _box_points(lower, upper, 64, seed=0), spec)
    assert torch.all(values >= out_lo[0]) and torch.all(values <= out_up[0])


def _check_lp_contains_milp(milp: MilpResult, lp: LpAllResult) -> None:
    """LP-ALL contains every value the network attains, and so the MILP optimum."""
    att_lo, att_up = milp.inner()
    assert torch.all(lp.lower <= att_lo + lp.tolerance) and torch.all(lp.upper >= att_up - lp.tolerance)
    assert torch.all(lp.lower <= milp.lower + lp.tolerance + milp.tolerance)
    assert torch.all(lp.upper >= milp.upper - lp.tolerance - milp.tolerance)


def _triangle_backsub(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    spec: Tensor | None,
    lp: LpAllResult,
    alpha: Callable[[int], Tensor],
) -> tuple[Tensor, Tensor]:
    """Backsubstitution with lines inside LP-ALL's own triangles, written independently of the engine.

    Unstable neurons: lower line ``alpha * z`` (``alpha`` in [0, 1]), upper line the chord;
    stable ones exact. Every line holds on LP-ALL's polytope, so by weak duality the
    result is never tighter than LP-ALL.
    """
    net = to_dense(model, lower.shape[1:])
    c = torch.eye(net.output_size, dtype=DT) if spec is None else spec[0]
    bounds = []
    for sign in (1.0, -1.0):
        lam = sign * c @ net.weights[-1]
        const = sign * c @ net.biases[-1]
        for k in range(net.num_relu_layers - 1, -1, -1):
            lb, ub = lp.pre_activation[k][0][0], lp.pre_activation[k][1][0]
            unstable = (lb < 0) & (ub > 0)
            positive = lb >= 0
            chord = torch.where(unstable, ub / (ub - lb).clamp(min=1e-300), positive.to(DT))
            up_off = torch.where(unstable, -ub * lb / (ub - lb).clamp(min=1e-300), torch.zeros_like(lb))
            low_slope = torch.where(unstable, alpha(lb.numel()), positive.to(DT))
            pos, neg = lam.clamp(min=0), lam.clamp(max=0)
            const = const + neg @ up_off
            lam = pos * low_slope + neg * chord
            const = const + lam @ net.biases[k]
            lam = lam @ net.weights[k]
        lo, up = lower.reshape(-1), upper.reshape(-1)
        bounds.append(sign * (lam.clamp(min=0) @ lo + lam.clamp(max=0) @ up + const))
    return bounds[0], bounds[1]


@solver_settings
@given(problem=tiny_problems())
@example(problem=_a4_problem())
def test_milp_within_lp_all(problem: Problem) -> None:
    """MILP optimum attained; samples and vertices inside MILP; MILP ⊆ LP-ALL ⊆ triangle backsubstitution."""
    model, x, eps, spec = problem
    lower, upper = x - eps, x + eps
    milp = solve_milp(model, lower, upper, spec)
    _check_milp(model, lower, upper, spec, milp)
    lp = solve_lp_all(model, lower, upper, spec)
    _check_lp_contains_milp(milp, lp)
    gen = torch.Generator().manual_seed(1)
    for alpha in (
        lambda n: torch.zeros(n, dtype=DT),
        lambda n: torch.ones(n, dtype=DT),
        lambda n: torch.rand(n, generator=gen, dtype=DT),
    ):
        lo, up = _triangle_backsub(model, lower, upper, spec, lp, alpha)
        assert torch.all(lo <= lp.lower[0] + lp.tolerance[0]) and torch.all(
            up >= lp.upper[0] - lp.tolerance[0]
        )


REGISTRY = relaxlab.get_registry().relaxations


def _engine_slack(model: nn.Module, x: Tensor, eps: float, spec: Tensor | None) -> Tensor:
    """``(S,)`` float64 rounding slack of the engine: ``ENGINE_RTOL * (1 + scale)``."""
    net = to_dense(model, x.shape[1:])
    c = np.eye(net.output_size) if spec is None else spec[0].numpy()
    lower, upper = (x - eps).reshape(-1).numpy(), (x + eps).reshape(-1).numpy()
    return ENGINE_RTOL * (1.0 + torch.from_numpy(spec_scale(net, lower, upper, c)))


@solver_settings
@given(problem=tiny_problems())
@example(problem=_a4_problem())
def test_milp_and_lp_all_within_every_relaxation(problem: Problem) -> None:
    """For every registered relaxation R: MILP ⊆ LP-ALL ⊆ R's bound (see the module docstring).

    MILP is compared through the values the network attains at the solver's optimal
    inputs (so only the engine's rounding slack applies); LP-ALL with its own tolerance.
    """
    model, x, eps, spec = problem
    lower, upper = x - eps, x + eps
    milp = solve_milp(model, lower, upper, spec)
    lp = solve_lp_all(model, lower, upper, spec)
    att_lo, att_up = milp.inner()
    slack = _engine_slack(model, x, eps, spec)
    failures = []
    for name in REGISTRY.names():
        lb, ub = relaxlab.compute_bounds(model, x, eps, REGISTRY[name], C=spec)
        assert lb.shape == att_lo.shape and lb.dtype == DT
        if not (torch.all(lb[0] <= att_lo[0] + slack) and torch.all(ub[0] >= att_up[0] - slack)):
            failures.append(
                f"{name}: [{lb.tolist()}, {ub.tolist()}] misses MILP [{att_lo.tolist()}, {att_up.tolist()}]"
            )
        if not (
            torch.all(lb[0] <= lp.lower[0] + lp.tolerance[0] + slack)
            and torch.all(ub[0] >= lp.upper[0] - lp.tolerance[0] - slack)
        ):
            failures.append(
                f"{name}: [{lb.tolist()}, {ub.tolist()}] tighter than LP-ALL [{lp.lower.tolist()}, {lp.upper.tolist()}]"
            )
    assert not failures, "\n".join(failures)


@settings(deadline=None)
@given(problem=tiny_problems(max_hidden=4, max_width=6, big=True))
@example(problem=_a4_problem())
def test_hbox_never_looser_than_ibp(problem: Problem) -> None:
    """hBox ⊆ IBP for every network and box (seeds/000 App. B.2), up to float64 rounding."""
    model, x, eps, spec = problem
    ibp_lo, ibp_up = relaxlab.compute_bounds(model, x, eps, "IBP", C=spec)
    hbox_lo, hbox_up = relaxlab.compute_bounds(model, x, eps, "hBox", C=spec)
    slack = ENGINE_RTOL * (1.0 + torch.maximum(ibp_lo.abs(), ibp_up.abs()))
    assert torch.all(hbox_lo >= ibp_lo - slack) and torch.all(hbox_up <= ibp_up + slack)
