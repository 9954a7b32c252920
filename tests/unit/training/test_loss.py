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
from relaxlab.training.config import TrainConfig
from relaxlab.training.loss import training_loss
from relaxlab.training.trainer import load_data, train


def test_the_fused_loss_is_the_mean_fused_bound_mixed_as_the_defense_mixes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    pair = (relaxlab.get_relaxation("CROWN-IBP (R)"), relaxlab.get_relaxation("IBP"))
    _, parts = training_loss(
        model,
        x,
        y,
        eps=0.1,
        kappa=0.25,
        beta=0.3,
        relaxations=pair,
        num_classes=3,
        elision=True,
        l1=0.0,
        fusion=True,
    )
    bounds = [float(fused_ce_bound(model, x, y, 0.1, r, num_classes=3).detach().mean()) for r in pair]
    assert parts["loss_robust"] == pytest.approx(0.3 * bounds[0] + 0.7 * bounds[1], rel=1e-6)
    assert parts["loss"] == pytest.approx(
        0.25 * parts["loss_natural"] + 0.75 * parts["loss_robust"], rel=1e-6
    )


@pytest.fixture(scope="module")
def tiny_data() -> Any:
    return load_data(TrainConfig())


def test_training_with_loss_fusion_runs(tmp_path: Path, tiny_data: Any) -> None:
    config = TrainConfig(
        architecture="FC-S",
        method="crown-ibp",
        epochs=1,
        rampup_epochs=1,
        eps_train=0.1,
        eps_test=0.1,
        kappa_start=0.5,
        batch_size=50,
        train_subset=100,
        test_subset=20,
        loss_fusion=True,
    )
    result = train(config, tmp_path / "fused", data=tiny_data)
    assert all(torch.isfinite(torch.tensor(list(epoch.values()))).all() for epoch in result.history)


class _Residual(nn.Module):
    """A graph, not a chain: a ReLU branch added to its input."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        return self.out(h + torch.relu(self.inner(h)))


def test_loss_fusion_works_on_graphs_too() -> None:
    """The one engine fuses on any network it reads: the fused loss of a residual block is its mean
    fused bound, and that bound lies above the cross-entropy at the clean inputs (a point of the box)."""
    torch.manual_seed(0)
    model = _Residual()
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    relaxation = relaxlab.get_relaxation("CROWN-IBP (R)")
    _, parts = training_loss(
        model,
        x,
        y,
        eps=0.1,
        kappa=0.0,
        beta=1.0,
        relaxations=(relaxation,),
        num_classes=3,
        elision=True,
        l1=0.0,
        fusion=True,
    )
    bound = fused_ce_bound(model, x, y, 0.1, relaxation, num_classes=3).detach()
    assert parts["loss_robust"] == pytest.approx(float(bound.mean()), rel=1e-6)
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    assert bool((bound >= clean - 1e-6).all())


def test_the_train_command_takes_the_options_as_config_keys(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('relaxation = "CROWN"\n')
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(tmp_path / "c.toml"), "--smoothing-samples", "2", "--quiet"])
    assert result.exit_code != 0 and "smoothing_sigma must be > 0" in result.output, result.output
    result = runner.invoke(
        cli,
        [
            "train",
            str(tmp_path / "c.toml"),
            "--smoothing-samples",
            "2",
            "--smoothing-sigma",
            "0.01",
            "--loss-fusion",
            "--quiet",
        ],
    )
    assert result.exit_code != 0 and "'CROWN' computes them by backsubstitution" in result.output, (
        result.output
    )
