"""The training loss with loss fusion, training with it, and the train command's options for both options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import relaxlab
from relaxlab.cli import cli
from relaxlab.engine.fusion import fused_ce_bound
from relaxlab.training.config import ConfigError, TrainConfig
from relaxlab.training.loss import training_loss
from relaxlab.training.trainer import load_data, train


def test_the_fused_loss_is_the_mean_fused_bound_mixed_as_the_defense_mixes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    pair = (relaxlab.get_relaxation("CROWN-IBP (R)"), relaxlab.get_relaxation("IBP"))
    _, parts = training_loss(model, x, y, eps=0.1, kappa=0.25, beta=0.3, relaxations=pair, num_classes=3,
                             elision=True, l1=0.0, fusion=True)
    bounds = [float(fused_ce_bound(model, x, y, 0.1, r, num_classes=3).detach().mean()) for r in pair]
    assert parts["loss_robust"] == pytest.approx(0.3 * bounds[0] + 0.7 * bounds[1], rel=1e-6)
    assert parts["loss"] == pytest.approx(0.25 * parts["loss_natural"] + 0.75 * parts["loss_robust"], rel=1e-6)


@pytest.fixture(scope="module")
def tiny_data() -> Any:
    return load_data(TrainConfig())


def test_training_with_loss_fusion_runs_and_graphs_are_refused_before_any_work(tmp_path: Path,
                                                                               tiny_data: Any) -> None:
    config = TrainConfig(architecture="FC-S", method="crown-ibp", epochs=1, rampup_epochs=1, eps_train=0.1,
                         eps_test=0.1, kappa_start=0.5, batch_size=50, train_subset=100, test_subset=20,
                         loss_fusion=True)
    result = train(config, tmp_path / "fused", data=tiny_data)
    assert all(torch.isfinite(torch.tensor(list(epoch.values()))).all() for epoch in result.history)
    with pytest.raises(ConfigError, match="'CNN7': loss fusion needs a chain network"):
        train(config.replace(architecture="CNN7"), tmp_path / "graph", data=tiny_data)
    assert not (tmp_path / "graph").exists()


def test_the_train_command_takes_the_options_as_config_keys(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('relaxation = "CROWN"\n')
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(tmp_path / "c.toml"), "--smoothing-samples", "2", "--quiet"])
    assert result.exit_code != 0 and "smoothing_sigma must be > 0" in result.output, result.output
    result = runner.invoke(cli, ["train", str(tmp_path / "c.toml"), "--smoothing-samples", "2",
                                 "--smoothing-sigma", "0.01", "--loss-fusion", "--quiet"])
    assert result.exit_code != 0 and "'CROWN' computes them by backsubstitution" in result.output, result.output
