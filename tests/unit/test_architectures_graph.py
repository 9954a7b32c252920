"""CNN7 and ResNet-S: built by name, bounded by the graph engine, one training step, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import relaxlab
from relaxlab.api import compute_bounds
from relaxlab.cli import cli
from relaxlab.engine import margin_spec, parse_model
from relaxlab.testing.falsify import box_samples, spec_values
from relaxlab.training.checkpoint import load_model, make_payload, save_checkpoint
from relaxlab.training.config import TrainConfig
from relaxlab.training.loss import training_loss


def _build(name: str, shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Sequential:
    torch.manual_seed(0)
    return (
        relaxlab.get_registry().architectures[name].build(shape, 10, [0.1307] * shape[0], [0.3081] * shape[0])
    )


def with_batch_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``model`` in eval mode after three train-mode passes (BatchNorm running statistics set)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, *shape))
    return model.eval()


def save_resnet_checkpoint(path: Path, model: nn.Module, eps_test: float) -> Path:
    """A checkpoint of a ResNet-S on 1x28x28 inputs (mean 0.1, std 0.3), as training writes it."""
    payload = make_payload(
        config_json=TrainConfig(architecture="ResNet-S", eps_test=eps_test).to_json(),
        architecture="ResNet-S",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.1,),
        std=(0.3,),
        model=model,
        optimizer=None,
        generator=None,
        epoch=1,
        step=1,
        history=[],
    )
    save_checkpoint(path, payload)
    return path


def test_cnn7_layers() -> None:
    net = _build("CNN7")
    convs = [(m.out_channels, m.stride[0]) for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(64, 1), (64, 1), (128, 2), (128, 1), (128, 1)]
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [512, 10]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 1


@pytest.mark.parametrize("name", ["CNN7", "ResNet-S"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_and_bounds_on_image_inputs(name: str, shape: tuple[int, int, int]) -> None:
    net = _build(name, shape).eval()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    assert parse_model(net, shape).is_chain == (name == "CNN7")
    with torch.no_grad():
        logits = net(x)
        assert logits.shape == (2, 10)
        spec = margin_spec(labels, 10)
        for relaxation in ("IBP", "CROWN-IBP (R)"):
            lb, ub = compute_bounds(net, x, 0.001, relaxation, C=spec, domain=(0.0, 1.0))
            values = spec_values(net, spec, box_samples((x - 0.001).clamp(0, 1), (x + 0.001).clamp(0, 1), 4))
            tol = 1e-4 * (1 + float(values.abs().max()))
            assert bool((values >= lb.unsqueeze(1) - tol).all() and (values <= ub.unsqueeze(1) + tol).all())
        lb0, ub0 = compute_bounds(net, x, 0.0, "IBP", C=spec)
        margins = (logits.unsqueeze(1) * spec).sum(-1)
        torch.testing.assert_close(lb0, margins, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(ub0, margins, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", ["CNN7", "ResNet-S"])
def test_one_training_step(name: str) -> None:
    net = _build(name)
    net.train()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1])
    relaxations = (relaxlab.get_relaxation("CROWN-IBP (R)"), relaxlab.get_relaxation("IBP"))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss, parts = training_loss(
        net,
        x,
        y,
        eps=0.01,
        kappa=0.5,
        beta=0.5,
        relaxations=relaxations,
        num_classes=10,
        elision=True,
        l1=0.0,
    )
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    optimizer.step()
    after = net.state_dict()
    assert "loss_robust" in parts and parts["loss_robust"] > 0
    assert not torch.equal(before["1.weight"], after["1.weight"])
    bn = "2.running_mean"  # the first BatchNorm: the natural forward pass updated its running mean
    assert not torch.equal(before[bn], after[bn])


def test_resnet_checkpoint_keeps_batch_norm_statistics(tmp_path: Path) -> None:
    net = _build("ResNet-S")
    net = with_batch_statistics(net, (1, 28, 28))
    path = save_resnet_checkpoint(tmp_path / "resnet.pt", net, eps_test=0.3)
    loaded = load_model(path).eval()
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert any("running_var" in key for key in loaded.state_dict())
    x = torch.rand(2, 1, 28, 28)
    for a, b in zip(
        compute_bounds(net, x, 0.01, "CROWN-IBP (R)"),
        compute_bounds(loaded, x, 0.01, "CROWN-IBP (R)"),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # certifiable from the command line by checkpoint
    torch.save(x[0], tmp_path / "x.pt")
    args = ["bounds", "--model", str(path), "--input", str(tmp_path / "x.pt"), "--eps", "0.001"]
    result = CliRunner().invoke(cli, [*args, "--relaxation", "IBP", "--spec", "margins", "--label", "3"])
    assert result.exit_code == 0, result.output
    assert "certified:" in result.output
