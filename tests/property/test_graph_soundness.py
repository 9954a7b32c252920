"""Soundness of the graph engine for every registered relaxation on random DAG networks.

Random residual networks (dense, and convolutional with BatchNorm in eval mode, AvgPool and a
channel concatenation), random boxes (zero and tiny radii included): sampled points, box
vertices (tiny inputs) and PGD extremes satisfy ``lb - tol <= C·f(x) <= ub + tol`` in float64,
``tol = 1e-9·(1 + max |interval bound|)``; interval relaxations' fast path equals
backsubstitution.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.budget import examples
from torch import Tensor, nn

import relaxlab
from relaxlab.engine import bound_network, parse_model
from relaxlab.testing.falsify import box_samples, pgd_extremes, spec_values
from relaxlab.testing.strategies import parameter_values

NAMES = relaxlab.get_registry().relaxations.names()
TOL_REL = 1e-9


class DenseResidual(nn.Module):
    def __init__(self, d: int, h: int, k: int, skip_linear: bool, bn: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(2 * h, k)
        self.bn = nn.BatchNorm1d(h) if bn else nn.Identity()
        self.skip = nn.Linear(h, h) if skip_linear else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.fc1(x))
        b = self.bn(self.fc2(a)) + self.skip(a)
        return self.out(torch.cat([F.relu(b), a], dim=1))


class ConvResidual(nn.Module):
    def __init__(self, c: int, k: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 2, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2)
        self.pool = nn.AvgPool2d(pool)
        self.fc = nn.LazyLinear(k)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = self.bn2(self.conv2(a))
        b += a
        y = self.pool(F.relu(b))
        return self.fc(y.flatten(1))


def _fill(module: nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.copy_(scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(torch.randn(sub.num_features, generator=generator))
                sub.running_var.copy_(0.1 + torch.rand(sub.num_features, generator=generator))
    module.eval()


@st.composite
def graph_networks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    if draw(st.booleans()):
        d, h, k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        model: nn.Module = DenseResidual(d, h, k, draw(st.booleans()), draw(st.booleans())).double()
        shape: tuple[int, ...] = (d,)
    else:
        c, size, pool = draw(st.integers(1, 2)), draw(st.integers(2, 4)), draw(st.integers(1, 2))
        model = ConvResidual(c, draw(st.integers(1, 3)), pool).double()
        shape = (c, size * pool, size * pool)
        with torch.no_grad():
            model(torch.zeros(1, *shape, dtype=torch.float64))  # materialise the lazy layer
    _fill(model, seed, scale)
    return model, shape


@st.composite
def boxes(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = 2 * torch.rand(2, *shape, generator=generator, dtype=torch.float64) - 1
    radius = draw(st.sampled_from([0.0, 1e-7, 0.05, 0.3, 1.0]))
    return x - radius, x + radius


def _scale(model: nn.Module, lower: Tensor, upper: Tensor) -> float:
    with torch.no_grad():
        lb, ub = bound_network(model, lower, upper, relaxlab.get_relaxation("IBP"))
    return 1.0 + float(torch.maximum(lb.abs(), ub.abs()).max())


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(6), deadline=None)
@given(data=st.data())
def test_graph_bounds_contain_every_point(name: str, data: st.DataObject) -> None:
    relaxation = data.draw(parameter_values(relaxlab.get_relaxation(name)))
    model, shape = data.draw(graph_networks())
    lower, upper = data.draw(boxes(shape))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        outputs = model(lower).shape[1]
        spec = torch.cat(
            [
                torch.eye(outputs, dtype=torch.float64).expand(2, -1, -1),
                torch.randn(2, 2, outputs, generator=generator, dtype=torch.float64),
            ],
            dim=1,
        )
        lb, ub = bound_network(model, lower, upper, relaxation, spec)
        values = spec_values(model, spec, box_samples(lower, upper, 64, generator))
    tol = TOL_REL * _scale(model, lower, upper)
    assert bool(torch.isfinite(lb).all() and torch.isfinite(ub).all())
    assert bool((values >= lb.unsqueeze(1) - tol).all()), float((lb.unsqueeze(1) - values).max())
    assert bool((values <= ub.unsqueeze(1) + tol).all()), float((values - ub.unsqueeze(1)).max())
    low, high = pgd_extremes(model, spec, lower, upper, steps=15, restarts=1, generator=generator)
    assert bool((low >= lb - tol).all()) and bool((high <= ub + tol).all())


@settings(max_examples=examples(20), deadline=None)
@given(data=st.data())
def test_graph_fast_path_equals_backsubstitution(data: st.DataObject) -> None:
    model, shape = data.draw(graph_networks())
    lower, upper = data.draw(boxes(shape))
    ibp = relaxlab.get_relaxation("IBP")
    assert not parse_model(model, shape).is_chain
    with torch.no_grad():
        fast = bound_network(model, lower, upper, ibp, mode="fast")
        slow = bound_network(model, lower, upper, ibp, mode="backsub")
    tol = 1e-12 * _scale(model, lower, upper)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=0)
