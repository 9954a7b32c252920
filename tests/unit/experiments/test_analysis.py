"""Unit tests of relaxlab.analysis: the App. E.2 detector, degree recurrences, landscapes, tracking, App. D."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import relaxlab
from relaxlab.examples import toy_continuity_network
from relaxlab.experiments.gd_experiment import random_network, run_gd
from relaxlab.experiments.landscape import landscape, plot_landscape, write_csv
from relaxlab.experiments.tracking import METRICS, tracking_callback
from relaxlab.properties.continuity import discontinuity_share, find_discontinuities
from relaxlab.properties.directions import along_segments, bound_value, gradient_directions
from relaxlab.properties.sensitivity import (
    degree_on,
    growth_factor,
    log_sensitivity,
    measured_log_sensitivity,
    paper_degree,
)

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
    result = discontinuity_share(example.model, x, None, example.eps, IBP(), output=0, points=100, domain=None)
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


# -- degrees ------------------------------------------------------------------------------------


def test_degree_trace_of_deepz() -> None:
    result = paper_degree(relaxlab.get_relaxation("DeepZ"), blocks=1, width=5)
    assert [str(c) for _, c in result.trace] == ["P_1", "R_2", "R_10", "R_30", "R_150"]


def test_every_registered_relaxation_has_a_degree_consistent_with_its_flags() -> None:
    from relaxlab.properties import derive

    for name in relaxlab.get_registry().relaxations.names():
        relaxation = relaxlab.get_relaxation(name)
        degree = degree_on(relaxation, [7, 7, 7]).degree
        if derive(relaxation).sensitive:
            assert degree > 7, name
        else:
            assert degree == 1, name


def test_growth_factor_and_paper_log_sensitivity() -> None:
    m = 400
    assert growth_factor(relaxlab.get_relaxation("IBP"), m) == 1
    assert growth_factor(relaxlab.get_relaxation("CROWN-IBP (R)"), m) == m
    assert growth_factor(relaxlab.get_relaxation("DeepZ"), m) == 3 * m
    assert log_sensitivity(relaxlab.get_relaxation("hBox"), [0, 3]) == [0.0, 0.0]
    assert log_sensitivity(relaxlab.get_relaxation("CROWN-IBP (R)"), [0, 1, 4]) == pytest.approx([0, 1, 4])
    paper = [(b + 1) * (1 + math.log(3) / math.log(m)) for b in range(4)]
    assert log_sensitivity(relaxlab.get_relaxation("CROWN"), [1, 2, 3, 4]) == pytest.approx(paper)


def test_measured_log_sensitivity_counts_unstable_layers() -> None:
    example = toy_continuity_network(0.0)  # its one ReLU layer is unstable
    values, counts = measured_log_sensitivity(example.model, example.center, 1.0, relaxlab.get_relaxation("CROWN"), width=10, domain=None)
    assert counts == [1]
    assert values[0] == pytest.approx(1 + math.log(3) / math.log(10))
    stable = toy_continuity_network(5.0)  # pre-activations in [4, 6]: stable
    values, counts = measured_log_sensitivity(stable.model, stable.center, 1.0, relaxlab.get_relaxation("CROWN"), width=10, domain=None)
    assert counts == [0] and values == [0.0]


def test_degree_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="positive integers"):
        degree_on(relaxlab.get_relaxation("IBP"), [3, 0])


# -- landscape ----------------------------------------------------------------------------------


def test_landscape_files_and_centre_value(tmp_path: object) -> None:
    from pathlib import Path

    model = _small_net(1)
    x = torch.rand(1, 4, dtype=torch.float64)
    result = landscape(model, x, 0.1, ["IBP", "CROWN"], output=1, radius=0.3, points=21, domain=None)
    lb, _ = relaxlab.compute_bounds(model, x, 0.1, "CROWN")
    assert float(result.values["CROWN"][10]) == pytest.approx(float(lb[0, 1]), abs=1e-12)  # δ = 0
    out = Path(str(tmp_path))
    table = write_csv(result, out / "l.csv")
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["delta", "IBP", "CROWN"] and len(rows) == 22
    png = plot_landscape(result, out / "l.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="exactly one"):
        landscape(model, x, 0.1, ["IBP"])


# -- tracking -----------------------------------------------------------------------------------


def test_tracking_callback_logs_every_k_steps(tmp_path: object) -> None:
    from pathlib import Path

    from relaxlab.store import open_store

    model = _small_net(2)
    x, y = torch.rand(4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    with open_store(Path(str(tmp_path)) / "r.sqlite") as store:
        run = store.create_run("train", {"relaxation": "CROWN"})
        callback = tracking_callback(2, samples=2, points=50, width=8)
        relaxation = relaxlab.get_relaxation("CROWN")
        for step in range(3):
            callback(step=step, model=model, batch=(x, y), eps=0.1, relaxation=relaxation, store=store, run_id=run)
        metrics = store.metrics(run)
    assert isinstance(metrics, dict) and set(metrics) == set(METRICS)
    assert [s for s, _ in metrics["discontinuity_share"]] == [0, 2]
    assert all(0.0 <= v <= 1.0 for _, v in metrics["discontinuity_share"])
    with pytest.raises(ValueError, match="k >= 1"):
        tracking_callback(0)


# -- App. D -------------------------------------------------------------------------------------


def test_random_network_follows_app_d() -> None:
    model, x, eps = random_network(3)
    weights = torch.cat([p.flatten() for p in model.parameters()])
    assert torch.all(weights == weights.round()) and weights.abs().max() <= 4
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [10, 10, 2]
    assert x.shape == (1, 1) and float(x) == round(float(x)) and 0.1 <= eps <= 4.1


def test_gd_takes_ascent_steps() -> None:
    model, x, eps = random_network(51)
    trajectory = run_gd(model, x, eps, "IBP", lr=0.001, decay=0.99, epochs=3)
    assert trajectory.deltas[0] == 0.0 and trajectory.deltas[1] > 0.0  # along its own gradient
    assert trajectory.values[1] >= trajectory.values[0]
    fn = bound_value(IBP(), eps, output=0)
    direction, _ = gradient_directions(model, x, ["0.weight"], fn, normalize=True)
    at = along_segments(model, x, direction, torch.tensor(trajectory.deltas, dtype=torch.float64), fn)[0]
    assert at.tolist() == pytest.approx(trajectory.values, abs=1e-9)


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_sensitivity_prints_the_closed_form() -> None:
    from relaxlab.cli import cli

    result = CliRunner().invoke(cli, ["sensitivity", "-B", "2", "-M", "10", "-r", "DeepZ,IBP"])
    assert result.exit_code == 0, result.output
    assert str(2 * 3**2 * 10**3) in result.output
    bad = CliRunner().invoke(cli, ["sensitivity", "-B", "2"])
    assert bad.exit_code != 0 and "--blocks and --width" in bad.output
