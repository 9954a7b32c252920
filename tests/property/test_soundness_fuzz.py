"""A sampled soundness fuzz of the whole pipeline: random networks, boxes and relaxations.

For random dense and convolutional networks (with ``Normalize`` and domain clips; weights scaled
by 1e-3 … 1e3), radii 1e-6 … 1, every registered relaxation, in float32 and float64, the true
value ``C·f(x)`` at uniform points, box corners and PGD's extremes must lie inside the bounds:
``lb - tol <= C·f(x) <= ub + tol`` with ``tol = TOL[dtype]·(1 + max|bound| + max|C·f|)``. The
tolerance covers the rounding of two differently ordered float computations (float64: 1e-9,
float32: 1e-4 relative); a real unsoundness is a sizeable fraction of the bounds.

This is sampling, labelled as such: the proofs are the prover's (per ReLU) and the exact MILP
references (tests/property/test_reference_ordering.py). The CI profile runs a few hundred
networks; ``RELAXLAB_HYPOTHESIS_PROFILE=explore`` runs many more (at least 10^6 point checks
over the session) and the number of point checks is printed at the end of the module.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.budget import examples
from torch import nn

import relaxlab
from relaxlab.nn import Normalize
from relaxlab.testing.falsify import box_samples, pgd_extremes, spec_values

NAMES = relaxlab.get_registry().relaxations.select("all")
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
#: Networks per dtype (8 in the ci profile, scaled with the loaded profile: tests.budget).
EXAMPLES = examples(8)
#: Sampled points per box: more where the profile searches harder than ci.
POINTS = 64 if EXAMPLES <= 8 else 512
CHECKS = {"points": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_count() -> object:
    yield
    print(f"\nsoundness fuzz: {CHECKS['points']:,} point checks")  # noqa: T201 - the figure docs/reliability.md quotes


@st.composite
def problems(draw: st.DrawFn) -> tuple[nn.Sequential, torch.Tensor, float, tuple[float, float] | None]:
    """A random network, a batch of centres inside the domain, a radius and the domain."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3]))
    conv = draw(st.booleans())
    if conv:
        layers: list[nn.Module] = [
            Normalize([0.4], [0.3]),
            nn.Conv2d(1, 3, 3, stride=draw(st.sampled_from([1, 2])), padding=1),
            nn.ReLU(),
            nn.Flatten(),
        ]
        probe = nn.Sequential(*layers)(torch.zeros(1, 1, 5, 5))
        layers += [nn.Linear(probe.shape[1], 4), nn.ReLU(), nn.Linear(4, 3)]
        shape: tuple[int, ...] = (1, 5, 5)
    else:
        width = draw(st.integers(2, 6))
        layers = [
            Normalize([0.5], [0.25]),
            nn.Linear(3, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 2),
        ]
        shape = (3,)
    model = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen, dtype=torch.float64) * scale)
    domain = draw(st.sampled_from([(0.0, 1.0), None]))
    x = torch.rand((2, *shape), generator=gen, dtype=torch.float64)
    eps = draw(st.sampled_from([1e-6, 1e-3, 0.05, 0.3, 1.0]))
    return model, x, eps, domain


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@settings(max_examples=EXAMPLES)
@given(problem=problems(), index=st.integers(0, 10**6))
def test_bounds_contain_every_value_found(dtype: torch.dtype, problem: tuple, index: int) -> None:
    model, x, eps, domain = problem
    relaxation = relaxlab.get_relaxation(NAMES[index % len(NAMES)])
    model, x = model.to(dtype), x.to(dtype)
    outputs = model(x[:1]).shape[1]
    C = torch.eye(outputs, dtype=dtype).expand(x.shape[0], outputs, outputs)
    with torch.no_grad():
        lb, ub = relaxlab.compute_bounds(model, x, eps, relaxation, C=C, domain=domain)
    low_end = x - eps if domain is None else (x - eps).clamp(min=domain[0])
    high_end = x + eps if domain is None else (x + eps).clamp(max=domain[1])
    gen = torch.Generator().manual_seed(index)
    points = box_samples(low_end, high_end, POINTS, generator=gen)
    values = spec_values(model, C, points)
    low, high = pgd_extremes(model, C, low_end, high_end, steps=10, restarts=1, generator=gen)
    scale = 1 + max(float(lb.abs().max()), float(ub.abs().max()), float(values.abs().max()))
    tol = TOL[dtype] * scale
    assert bool((values >= lb.unsqueeze(1) - tol).all()), f"{relaxation.name}: a sampled value below lb"
    assert bool((values <= ub.unsqueeze(1) + tol).all()), f"{relaxation.name}: a sampled value above ub"
    assert bool((low >= lb - tol).all()) and bool((high <= ub + tol).all()), (
        f"{relaxation.name}: PGD left the bounds"
    )
    CHECKS["points"] += int(values.numel()) + 2 * int(low.numel())
