"""The analysis experiments: landscapes, tracking during training, App. D's gradient-descent experiment,
and the sensitivity command (continuity and sensitivity themselves: tests/unit/properties)."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import relaxlab
from relaxlab.experiments.gd_experiment import random_network, run_gd
from relaxlab.experiments.landscape import landscape, plot_landscape, write_csv
from relaxlab.experiments.tracking import METRICS, tracking_callback
from relaxlab.properties.directions import along_segments, bound_value, gradient_directions


def IBP() -> object:
    return relaxlab.get_relaxation("IBP")


def _small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).double()


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
            callback(
                step=step, model=model, batch=(x, y), eps=0.1, relaxation=relaxation, store=store, run_id=run
            )
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
