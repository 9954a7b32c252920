"""Optimised per-neuron relaxation parameters (engine/optimise.py, api.optimisation, opt:NAME).

Soundness is by construction (every value the search may take is in the range the prover proved
sound), so the tests check the construction: arbitrary per-neuron values in the range give bounds
that contain the exact extremes (MILP, float64, tolerance 1e-7 of the scale), the start is the
plain relaxation bit for bit, the search never loosens a row, values outside the range never
reach the lines, and what is not proved is refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import relaxlab
from relaxlab.api import get_method, optimisation, select_methods
from relaxlab.core.expr import Param
from relaxlab.core.lines import CHORD, ZERO
from relaxlab.core.relaxation import CaseBounds, ParamSpec, ReluRelaxation, line
from relaxlab.engine.bounder import bounder, spec_matrix
from relaxlab.engine.optimise import Optimised, ParameterRange, _project
from relaxlab.reference.milp import milp_bounds


def _net(seed: int, widths: tuple[int, ...] = (4, 12, 12, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def _conv(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(1, 3, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
        .double()
        .eval()
    )


def _box(seed: int, shape: tuple[int, ...], eps: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, torch.full((), eps, dtype=torch.float64)


@pytest.mark.parametrize("make", [_net, _conv], ids=["fc", "conv"])
def test_the_start_is_crown_bit_for_bit(make) -> None:
    net = make(0)
    shape = (3, 4) if make is _net else (3, 1, 10, 10)
    x, eps = _box(1, shape)
    C = torch.randn(2, 3 if make is _net else 5, dtype=torch.float64)
    plain = relaxlab.compute_bounds(net, x, eps, "CROWN", C=C)
    start = relaxlab.compute_bounds(
        net, x, eps, "CROWN-alpha", C=C, optimise=optimisation("CROWN-alpha", steps=0)
    )
    assert torch.equal(plain[0], start[0]) and torch.equal(plain[1], start[1])


def test_crown_alpha_at_the_ends_of_its_range_is_crown_0_and_crown_1() -> None:
    net, (x, eps) = _net(2), _box(3, (4, 4))
    for value, name in ((0.0, "CROWN-0"), (1.0, "CROWN-1")):
        got = relaxlab.compute_bounds(net, x, eps, f"CROWN-alpha(alpha={value:g})")
        want = relaxlab.compute_bounds(net, x, eps, name)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("rigorous", [False, True])
def test_optimised_bounds_tighten_every_row_and_contain_the_exact_extremes(rigorous: bool) -> None:
    net, (x, eps) = _net(4), _box(5, (3, 4), eps=0.4)
    C = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    plain = relaxlab.compute_bounds(net, x, eps, "CROWN", C=C, domain=(0.0, 1.0), rigorous=rigorous)
    best = relaxlab.compute_bounds(
        net,
        x,
        eps,
        "CROWN-alpha",
        C=C,
        domain=(0.0, 1.0),
        rigorous=rigorous,
        optimise=optimisation("CROWN-alpha", steps=15),
    )
    exact_lower, exact_upper = milp_bounds(net, lower, upper, C)
    scale = 1e-7 * (1 + exact_lower.abs().max() + exact_upper.abs().max())
    assert bool((best[0] >= plain[0]).all()) and bool((best[1] <= plain[1]).all())
    assert bool((best[0] > plain[0]).any()), "15 steps tighten nothing: the search does not move"
    assert bool((best[0] <= exact_lower + scale).all()) and bool((best[1] >= exact_upper - scale).all())


@given(seed=st.integers(0, 2**31 - 1), values=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8))
def test_any_values_in_the_proved_range_give_sound_bounds(seed: int, values: list[float]) -> None:
    """Per-neuron values anywhere in [0, 1] (Hypothesis: ends, zeros, repeats): bounds contain the MILP extremes."""
    net, (x, eps) = _net(seed % 1000, (4, 8, 8, 3)), _box(seed, (1, 4), eps=0.5)
    lower, upper = (x - eps), (x + eps)
    pool = torch.tensor(values, dtype=torch.float64)

    def source(index: int, low: torch.Tensor, high: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"alpha": pool[: low.numel()].reshape(low.shape)}

    run = bounder(net, lower, upper, relaxlab.get_relaxation("CROWN-alpha"), parameters=source)
    lb, ub = run.bound(spec_matrix(None, 1, 3, lower), lower_only=False)
    exact_lower, exact_upper = milp_bounds(net, lower, upper)
    scale = 1e-7 * (1 + exact_lower.abs().max() + exact_upper.abs().max())
    assert bool((lb <= exact_lower + scale).all()) and bool((ub >= exact_upper - scale).all())


def test_the_projection_keeps_values_in_the_range_and_off_an_open_end() -> None:
    spec = ParamSpec("g", 1.0, minimum=0.0, strict=True)
    part = ParameterRange(spec, 1.0, 0.0, 5.0, open_lo=True)
    for dtype in (torch.float32, torch.float64):
        got = _project(torch.tensor([-3.0, 0.0, 2.0, 9.0], dtype=dtype), part)
        assert got[0] > 0 and got[1] > 0 and got[2] == 2 and got[3] == 5


def test_optimisation_refuses_what_it_cannot_optimise() -> None:
    with pytest.raises(ValueError, match="no parameters in its lines"):
        optimisation("CROWN")
    unsound = ReluRelaxation(
        name="Alpha-too-wide",
        negative=CaseBounds(ZERO, ZERO),
        unstable=CaseBounds(line(Param("a"), 0.0), CHORD),
        positive=CaseBounds(line(1.0, 0.0), line(1.0, 0.0)),
        params=(ParamSpec("a", 0.5, minimum=0.0, maximum=2.0),),
    )
    with pytest.raises(ValueError, match="not proved sound"):
        optimisation(unsound)


def test_ranges_are_the_proved_ones() -> None:
    soft = optimisation("DeepZ-Soft")
    (gamma,) = soft.ranges
    assert gamma.name == "gamma" and gamma.lo == 0.0 and gamma.open_lo and math.isfinite(gamma.hi)
    (alpha,) = optimisation("CROWN-alpha").ranges
    assert (alpha.lo, alpha.hi, alpha.open_lo) == (0.0, 1.0, False)


def test_opt_names_resolve_to_optimised_methods() -> None:
    method = get_method("opt:CROWN-alpha")
    assert (
        isinstance(method, Optimised) and method.name == "opt:CROWN-alpha" and method.optimise.target == 0.0
    )
    assert [m.name for m in select_methods("CROWN,opt:crown alpha,CROWN")] == ["CROWN", "opt:CROWN-alpha"]
    assert (
        method.canonical() is not None
        and method.canonical() != relaxlab.get_relaxation("CROWN-alpha").canonical()
    )
    with pytest.raises(ValueError, match="no parameters"):
        get_method("opt:IBP")
