"""Soundness of the engine's bounds for every registered relaxation, and theorems on their order.

For random small dense and convolutional networks and random boxes, every sampled
point, every box vertex (tiny inputs) and the best PGD point must satisfy
``lb - tol <= C·f(x) <= ub + tol``. Computation in float64; the tolerance is
``TOL_REL`` times the magnitude scale of the problem (1 + the largest absolute
interval bound of any layer), which covers float64 rounding by orders of magnitude
while any real unsoundness is a sizeable fraction of the bounds.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.budget import examples
from torch import nn

import relaxlab
from relaxlab.core.expr import Step, Switch
from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.engine import bound_network, intermediate_bounds, parse_model
from relaxlab.engine.ops import AffineOp
from relaxlab.nn import Normalize
from relaxlab.testing.falsify import box_samples, pgd_extremes, spec_values
from relaxlab.testing.strategies import parameter_values

TOL_REL = 1e-9
NAMES = relaxlab.get_registry().relaxations.names()
INTERVAL_NAMES = [name for name in NAMES if relaxlab.get_relaxation(name).is_interval]


@st.composite
def _weight_style(draw: st.DrawFn, generic: bool) -> tuple[int, float, float]:
    """A seed, the fraction of zero weights and the fraction of large (±1e3) weights."""
    if generic:
        return draw(st.integers(0, 2**31 - 1)), 0.0, 0.0
    return (
        draw(st.integers(0, 2**31 - 1)),
        draw(st.sampled_from([0.0, 0.3, 1.0])),
        draw(st.sampled_from([0.0, 0.0, 0.2])),
    )


def _fill(draw: st.DrawFn, tensor: torch.Tensor, generic: bool = False) -> None:
    """Random weights with exact zeros and large values mixed in (drawn from a Hypothesis seed).

    ``generic``: Gaussian weights only, so no bound lands exactly on a relaxation's jump.
    """
    seed, zeros, large = draw(_weight_style(generic))
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
    pick = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
    values = torch.where(pick < zeros, torch.zeros_like(values), values)
    values = torch.where(pick > 1 - large, 1e3 * values.sign(), values)
    with torch.no_grad():
        tensor.copy_(values)


@st.composite
def dense_networks(draw: st.DrawFn, generic: bool = False) -> tuple[nn.Sequential, tuple[int, ...]]:
    """1-4 Linear layers of width 1-4 with ReLUs between, optionally a Normalize in front."""
    depth = draw(st.integers(1, 4))
    widths = [draw(st.integers(1, 4)) for _ in range(depth + 1)]
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        mean = draw(st.lists(st.floats(-1, 1), min_size=widths[0], max_size=widths[0]))
        std = draw(st.lists(st.floats(0.1, 2), min_size=widths[0], max_size=widths[0]))
        layers.append(Normalize(mean, std))
    for index in range(depth):
        linear = nn.Linear(widths[index], widths[index + 1], dtype=torch.float64)
        _fill(draw, linear.weight, generic)
        _fill(draw, linear.bias, generic)
        layers.append(linear)
        if index < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double(), (widths[0],)


@st.composite
def conv_networks(draw: st.DrawFn, generic: bool = False) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Optional Normalize, 1-2 Conv2d (stride 1-2, padding 0-1) with ReLUs, Flatten, optional Linear."""
    channels = draw(st.integers(1, 2))
    height, width = draw(st.integers(3, 5)), draw(st.integers(3, 5))
    shape = (channels, height, width)
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        layers.append(
            Normalize(
                draw(st.lists(st.floats(-1, 1), min_size=channels, max_size=channels)),
                draw(st.lists(st.floats(0.1, 2), min_size=channels, max_size=channels)),
            )
        )
    size_h, size_w, current = height, width, channels
    for _ in range(draw(st.integers(1, 2))):
        kernel = draw(st.integers(1, min(3, size_h, size_w)))
        stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
        out_channels = draw(st.integers(1, 3))
        conv = nn.Conv2d(current, out_channels, kernel, stride=stride, padding=padding, dtype=torch.float64)
        _fill(draw, conv.weight, generic)
        _fill(draw, conv.bias, generic)
        layers += [conv, nn.ReLU()]
        size_h = (size_h + 2 * padding - kernel) // stride + 1
        size_w = (size_w + 2 * padding - kernel) // stride + 1
        current = out_channels
    layers.append(nn.Flatten())
    if draw(st.booleans()):
        linear = nn.Linear(current * size_h * size_w, draw(st.integers(1, 3)), dtype=torch.float64)
        _fill(draw, linear.weight, generic)
        _fill(draw, linear.bias, generic)
        layers.append(linear)
    return nn.Sequential(*layers).double(), shape


@st.composite
def boxes(
    draw: st.DrawFn, shape: tuple[int, ...], batch: int = 2, generic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A box of a drawn centre and radius (0 and tiny radii included unless ``generic``)."""
    numel = batch * math.prod(shape)
    if generic:
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        x = 4 * torch.rand(batch, *shape, generator=generator, dtype=torch.float64) - 2
        radius = draw(st.floats(0.01, 2))
        return x - radius, x + radius
    centre = draw(st.lists(st.floats(-2, 2, allow_subnormal=False), min_size=numel, max_size=numel))
    radius = draw(st.one_of(st.sampled_from([0.0, 1e-7, 0.1, 1.0, 3.0]), st.floats(0, 2)))
    x = torch.tensor(centre, dtype=torch.float64).reshape(batch, *shape)
    return x - radius, x + radius


def _scale(model: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor) -> float:
    """1 + the largest absolute interval bound of any layer output: the problem's magnitude."""
    net = parse_model(model, tuple(lower.shape[1:]))
    centre, radius, biggest = (upper + lower) / 2, (upper - lower) / 2, 0.0
    for node in net.nodes[1:]:
        if isinstance(node.op, AffineOp):
            centre, radius = node.op.forward(centre), node.op.linear_abs(radius.unsqueeze(1)).squeeze(1)
        else:
            low, high = torch.relu(centre - radius), torch.relu(centre + radius)
            centre, radius = (high + low) / 2, (high - low) / 2
        biggest = max(biggest, float((centre.abs() + radius).max().detach()))
    return 1.0 + biggest


def _spec(generator: torch.Generator, batch: int, outputs: int) -> torch.Tensor:
    rows = torch.randn(batch, 2, outputs, generator=generator, dtype=torch.float64)
    return torch.cat([torch.eye(outputs, dtype=torch.float64).expand(batch, -1, -1), rows], dim=1)


def _assert_sound(model: nn.Sequential, relaxation: object, lower: torch.Tensor, upper: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        outputs = model(lower).shape[1]
    spec = _spec(generator, lower.shape[0], outputs)
    with torch.no_grad():
        lb, ub = bound_network(model, lower, upper, relaxation, spec)  # type: ignore[arg-type]
    tol = TOL_REL * _scale(model, lower, upper)
    assert lb.shape == ub.shape == spec.shape[:2]
    assert bool(torch.isfinite(lb).all() and torch.isfinite(ub).all()), (lb, ub)
    with torch.no_grad():
        values = spec_values(model, spec, box_samples(lower, upper, 64, generator))
    assert bool((values >= lb.unsqueeze(1) - tol).all()), (
        f"sampled value below the lower bound by {float((lb.unsqueeze(1) - values).max())}"
    )
    assert bool((values <= ub.unsqueeze(1) + tol).all()), (
        f"sampled value above the upper bound by {float((values - ub.unsqueeze(1)).max())}"
    )
    low, high = pgd_extremes(model, spec, lower, upper, steps=15, restarts=1, generator=generator)
    assert bool((low >= lb - tol).all()), f"PGD value below the lower bound by {float((lb - low).max())}"
    assert bool((high <= ub + tol).all()), f"PGD value above the upper bound by {float((high - ub).max())}"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(15))
@given(data=st.data())
def test_dense_bounds_contain_every_point(name: str, data: st.DataObject) -> None:
    """For every x in the box: lb <= C·f(x) <= ub (samples, vertices, PGD), dense networks."""
    relaxation = data.draw(parameter_values(relaxlab.get_relaxation(name)))
    model, shape = data.draw(dense_networks())
    lower, upper = data.draw(boxes(shape))
    _assert_sound(model, relaxation, lower, upper)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(8))
@given(data=st.data())
def test_conv_bounds_contain_every_point(name: str, data: st.DataObject) -> None:
    """For every x in the box: lb <= C·f(x) <= ub (samples, PGD), convolutional networks."""
    relaxation = data.draw(parameter_values(relaxlab.get_relaxation(name)))
    model, shape = data.draw(conv_networks())
    lower, upper = data.draw(boxes(shape, batch=1))
    _assert_sound(model, relaxation, lower, upper)


@settings(max_examples=examples(40))
@given(data=st.data())
def test_hbox_never_looser_than_ibp(data: st.DataObject) -> None:
    """App. B.2 of the paper: every hBox bound is at least as tight as the IBP bound (also intermediate)."""
    model, shape = data.draw(st.one_of(dense_networks(), conv_networks()))
    lower, upper = data.draw(boxes(shape, batch=1))
    hbox, ibp = relaxlab.get_relaxation("hBox"), relaxlab.get_relaxation("IBP")
    tol = TOL_REL * _scale(model, lower, upper)
    with torch.no_grad():
        lb_h, ub_h = bound_network(model, lower, upper, hbox)
        lb_i, ub_i = bound_network(model, lower, upper, ibp)
        boxes_h, _ = intermediate_bounds(model, lower, upper, hbox)
        boxes_i, _ = intermediate_bounds(model, lower, upper, ibp)
    assert bool((lb_h >= lb_i - tol).all()) and bool((ub_h <= ub_i + tol).all())
    for (low_h, high_h), (low_i, high_i) in zip(boxes_h, boxes_i, strict=True):
        assert bool((low_h >= low_i - tol).all()) and bool((high_h <= high_i + tol).all())


@st.composite
def _moderate_parameters(draw: st.DrawFn, relaxation: ReluRelaxation) -> ReluRelaxation:
    """The relaxation with each parameter drawn from its admissible range intersected with [-10, 10]."""
    values = {}
    for spec in relaxation.params:
        low = -10.0 if spec.minimum is None else spec.minimum
        high = 10.0 if spec.maximum is None else min(spec.maximum, 10.0)
        values[spec.name] = draw(st.floats(low, high, exclude_min=spec.strict))
    return relaxation.with_params(**values) if values else relaxation


def _has_jumps(relaxation: object) -> bool:
    """Whether any coefficient contains a switch or a floor/ceil step (where the lines jump)."""
    return any(
        isinstance(node, (Step, Switch))
        for expression in relaxation.expressions()  # type: ignore[attr-defined]
        for node in expression.walk()
    )


@pytest.mark.parametrize("name", INTERVAL_NAMES)
@settings(max_examples=examples(20))
@given(data=st.data())
def test_interval_fast_path_equals_backsubstitution(name: str, data: st.DataObject) -> None:
    """For all-slope-0 relaxations the fast path returns backsubstitution's numbers (float rounding only).

    The two paths sum in different orders, so their pre-activation bounds may differ in the last
    bit. For a relaxation with jumps (LooseIBP-DC's floor/ceil) a bound *exactly* on a jump can then
    land on different sides (e.g. ``l = 0`` vs ``l = 1e-17``: a widening of 0 vs ``omega``); such
    relaxations are compared on generic networks (Gaussian weights, positive radius), where no bound
    sits on a jump. Tolerance: 1e-12 times the problem's scale times ``(1 + max |parameter|^2)``
    per ReLU layer, the most a parametrised transform (slope ``1 + omega·F``) can amplify a rounding
    difference; parameters are drawn up to 10 so that this stays a meaningful test.
    """
    relaxation = data.draw(_moderate_parameters(relaxlab.get_relaxation(name)))
    generic = _has_jumps(relaxation)
    model, shape = data.draw(st.one_of(dense_networks(generic), conv_networks(generic)))
    lower, upper = data.draw(boxes(shape, batch=2, generic=generic))
    with torch.no_grad():
        fast = bound_network(model, lower, upper, relaxation, mode="fast")
        slow = bound_network(model, lower, upper, relaxation, mode="backsub")
    # A transform with parameters amplifies rounding by its slope (1 + omega·F for LooseIBP-DC), per layer.
    biggest = max((abs(v) for v in relaxation.parameters.values()), default=0.0)
    amplification = (1.0 + biggest**2) ** len(parse_model(model, shape).relus)
    tol = 1e-12 * _scale(model, lower, upper) * amplification
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=0)


@settings(max_examples=examples(20))
@given(data=st.data(), chunk=st.integers(1, 5))
def test_chunking_does_not_change_bounds(data: st.DataObject, chunk: int) -> None:
    """Pulling intermediate specifications back in chunks gives the same bounds (full backsubstitution)."""
    model, shape = data.draw(st.one_of(dense_networks(), conv_networks()))
    lower, upper = data.draw(boxes(shape, batch=2))
    crown = relaxlab.get_relaxation("CROWN")
    with torch.no_grad():
        whole = bound_network(model, lower, upper, crown)
        chunked = bound_network(model, lower, upper, crown, chunk_size=chunk)
    tol = 1e-12 * _scale(model, lower, upper)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=0)
