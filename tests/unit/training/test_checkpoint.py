"""Checkpoints (weights_only, atomic, refusals), the certified loss and the certification tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relaxlab
from relaxlab.evaluation.certify import certified_mask, check_eps
from relaxlab.nn import Normalize
from relaxlab.training.checkpoint import (
    CheckpointError,
    load_model,
    make_payload,
    read_checkpoint,
    save_checkpoint,
)
from relaxlab.training.config import TrainConfig
from relaxlab.training.loss import margin_lower_bounds, robust_ce, worst_case_logits


def _save(path: Path, architecture: str = "FC-S", model: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    net = model or relaxlab.get_registry().architectures[architecture].build((1, 28, 28), 10, [0.1], [0.3])
    optimizer = torch.optim.Adam(net.parameters())
    save_checkpoint(
        path,
        make_payload(
            config_json=TrainConfig(architecture=architecture).to_json(),
            architecture=architecture,
            input_shape=(1, 28, 28),
            num_classes=10,
            mean=(0.1,),
            std=(0.3,),
            model=net,
            optimizer=optimizer,
            generator=torch.Generator().manual_seed(1),
            epoch=1,
            step=5,
            history=[{"loss": 1.0}],
        ),
    )
    return net


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    net = _save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain data only: no code is unpickled
    assert isinstance(raw["config"], str) and json.loads(raw["config"])["architecture"] == "FC-S"
    loaded = load_model(tmp_path / "c.pt")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))
    assert not loaded.training
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was moved into place


def test_truncated_and_garbage_files_are_refused(tmp_path: Path) -> None:
    _save(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a relaxlab checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_checkpoint_from_another_architecture_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "c.pt", "FC-S")
    with pytest.raises(CheckpointError, match="holds a 'FC-S' network, not 'CONV'"):
        load_model(tmp_path / "c.pt", architecture="CONV")
    # weights of a CONV saved under the name FC-S: the shapes do not fit
    conv = relaxlab.get_registry().architectures["CONV"].build((1, 28, 28), 10, [0.1], [0.3])
    _save(tmp_path / "mixed.pt", "FC-S", model=conv)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(tmp_path / "mixed.pt")


def _tiny() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(Normalize([0.5], [0.5]), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize("elision", [True, False])
def test_robust_loss_at_eps_zero_is_the_natural_loss(elision: bool) -> None:
    # At eps = 0 the margin bounds are the margins, and CE is shift-invariant: z_worst = z - z_y.
    net = _tiny().double()
    x, y = torch.rand(5, 1, 2, 2, dtype=torch.float64) * 0.8 + 0.1, torch.tensor([0, 1, 2, 0, 1])
    relaxation = relaxlab.get_relaxation("CROWN")
    robust = robust_ce(net, x, y, 0.0, relaxation, 3, elision=elision)
    assert robust.item() == pytest.approx(F.cross_entropy(net(x), y).item(), abs=1e-9)


def test_worst_case_logits_layout() -> None:
    lb = torch.tensor([[1.0, -2.0]])
    others = torch.tensor([[0, 2]])
    assert worst_case_logits(lb, others, torch.tensor([1]), 3).tolist() == [[-1.0, 0.0, 2.0]]


def test_elision_is_at_least_as_tight_for_ibp() -> None:
    net = _tiny()
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    ibp = relaxlab.get_relaxation("IBP")
    elided, _ = margin_lower_bounds(net, x, y, 0.1, ibp, 3, elision=True)
    plain, _ = margin_lower_bounds(net, x, y, 0.1, ibp, 3, elision=False)
    assert bool((elided >= plain - 1e-6).all()) and bool((elided > plain + 1e-6).any())


def test_a_zero_margin_is_never_certified() -> None:
    # Two identical output rows: the margin between classes 0 and 1 is exactly 0.
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[1] = layer.weight[0]
        layer.bias[1] = layer.bias[0]
        layer.bias[0] += 0.0
    net = nn.Sequential(nn.Flatten(), layer)
    x = torch.rand(1, 1, 2, 2)
    for label in (0, 1):
        _, certified = certified_mask(net, x, torch.tensor([label]), 0.0, relaxlab.get_relaxation("IBP"), 3)
        assert not bool(certified.any())


def test_eps_outside_the_pixel_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\]"):
        check_eps(1.5)
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\]"):
        check_eps(-0.01)
