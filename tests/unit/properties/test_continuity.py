"""Continuity (Sec. 4.2, App. E.2): the toy network's jumps where the paper puts them, the jump detector,
the share of discontinuous inputs, bounds along parameter directions equal to one network per point."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import relaxlab
from relaxlab.examples import toy_continuity_network
from relaxlab.properties.continuity import discontinuity_share, find_discontinuities
from relaxlab.properties.directions import along_segments, bound_value, gradient_directions

W_GRID = torch.linspace(-2.0, 2.0, 500, dtype=torch.float64)


def IBP() -> object:
    return relaxlab.get_relaxation("IBP")


def _toy_sweep(name: str, output: int) -> torch.Tensor:
    """Lower bound of ``output`` of the Sec. 4.2 network as its parameter ``w`` sweeps ``W_GRID``."""
    example = toy_continuity_network(0.0)
    fn = bound_value(relaxlab.get_relaxation(name), example.eps, output=output)
    direction = {"0.bias": torch.ones(1, 2, dtype=torch.float64)}  # both biases are w
    return along_segments(example.model, example.center, direction, W_GRID, fn)[0]


def _jump_locations(values: torch.Tensor) -> list[tuple[float, float]]:
    return [(float(W_GRID[i]), float(W_GRID[i + 1])) for i in find_discontinuities(values)]


# -- the Sec. 4.2 toy network -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CROWN", "CROWN-IBP (R)"])
def test_toy_crown_jumps_at_zero(name: str) -> None:
    values = _toy_sweep(name, output=0)
    jumps = _jump_locations(values)
    assert len(jumps) == 1
    left, right = jumps[0]
    assert left < 0.0 < right
    # Sec. 4.2: l31 = 1 for w in [-1, 0] and w for w in (0, 1].
    inside = (W_GRID > -1) & (W_GRID < 1)
    expected = torch.where(W_GRID <= 0, torch.ones_like(W_GRID), W_GRID)
    assert torch.allclose(values[inside], expected[inside], atol=1e-12)
    assert _jump_locations(_toy_sweep(name, output=1)) == []


def test_toy_hbox_jumps_at_one() -> None:
    values = _toy_sweep("hBox", output=1)
    jumps = _jump_locations(values)
    assert len(jumps) == 1
    left, right = jumps[0]
    assert left < 1.0 < right
    # Sec. 4.2: l32 = -1 - w for w in (-1, 1), 0 for w >= 1.
    inside = (W_GRID > -1) & (W_GRID < 1)
    assert torch.allclose(values[inside], -1 - W_GRID[inside], atol=1e-12)
    assert torch.all(values[W_GRID >= 1] == 0)
    assert _jump_locations(_toy_sweep("hBox", output=0)) == []


@pytest.mark.parametrize("name", ["IBP", "DeepZ"])
@pytest.mark.parametrize("output", [0, 1])
def test_toy_ibp_deepz_continuous(name: str, output: int) -> None:
    assert _jump_locations(_toy_sweep(name, output)) == []


def test_toy_sweep_matches_separately_built_networks() -> None:
    """The batched sweep equals bounds of the toy network built for each w."""
    values = _toy_sweep("CROWN", output=0)
    for index in (0, 123, 249, 250, 400, 499):
        example = toy_continuity_network(float(W_GRID[index]))
        lb, _ = relaxlab.compute_bounds(example.model, example.center, example.eps, "CROWN")
        assert float(lb[0, 0].detach()) == pytest.approx(float(values[index]), abs=1e-12)


# -- the jump test itself -----------------------------------------------------------------------


def test_detector_on_sequences() -> None:
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    step = torch.where(t < 0.5, t, t + 1.0)
    assert find_discontinuities(step).tolist() == [24]
    assert find_discontinuities(3 * t).tolist() == []
    kink = torch.where(t < 0.5, t, 20 * t - 9.5)  # continuous, slope 1 -> 20
    assert find_discontinuities(kink).tolist() == []
    edge = torch.where(t < t[1], t, t + 1.0)  # the first step has no left neighbour
    assert find_discontinuities(edge).tolist() == []
    tiny = torch.where(t < 0.5, 0 * t, 0 * t + 5e-6)  # below D = 1e-5
    assert find_discontinuities(tiny).tolist() == []
    mask = find_discontinuities(torch.stack([step, 3 * t]))
    assert mask.shape == (2, 49) and mask[0, 24] and mask.sum() == 1


def test_detector_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        find_discontinuities(torch.tensor([0.0, float("nan"), 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(n,\) or \(B, n\)"):
        find_discontinuities(torch.zeros(2, 2, 2))


def test_discontinuity_share_counts_inputs() -> None:
    example = toy_continuity_network(0.0)
    x = example.center.repeat(3, 1)
    result = discontinuity_share(
        example.model, x, None, example.eps, IBP(), output=0, points=100, domain=None
    )
    assert result.values.shape == (3, 100)
    assert result.share == 0.0
    with pytest.raises(ValueError, match="not both"):
        discontinuity_share(example.model, x, torch.zeros(3, dtype=torch.long), 1.0, IBP(), output=0)


# -- batched parameter points ---------------------------------------------------------------------


def _small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("name", ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)"])
def test_batched_points_equal_one_network_per_point(name: str) -> None:
    model = _small_net()
    x = torch.rand(2, 4, dtype=torch.float64)
    y = torch.tensor([0, 2])
    fn = bound_value(relaxlab.get_relaxation(name), 0.2, labels=y)
    names = [n for n, _ in model.named_parameters()]
    directions, _ = gradient_directions(model, x, names, fn, y)
    steps = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)
    values = along_segments(model, x, directions, steps, fn, y, points_per_call=3)
    for b in range(2):
        for i, t in enumerate(steps):
            clone = copy.deepcopy(model)
            with torch.no_grad():
                for n, p in clone.named_parameters():
                    p.add_(t * directions[n][b])
            expected = fn(clone, x[b : b + 1], y[b : b + 1])
            assert float(values[b, i]) == pytest.approx(float(expected.detach()), abs=1e-10)
