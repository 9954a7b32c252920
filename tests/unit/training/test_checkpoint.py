"""Checkpoints (weights_only, atomic, refusals), the certified loss and the certification tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import relaxlab
from relaxlab.training.checkpoint import (
    CheckpointError,
    load_model,
    make_payload,
    read_checkpoint,
    save_checkpoint,
)
from relaxlab.training.config import TrainConfig


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


def test_a_flipped_bit_in_the_tensor_data_is_caught(tmp_path: Path) -> None:
    from relaxlab.training.checkpoint import read_checkpoint, save_checkpoint

    path = tmp_path / "c.pt"
    save_checkpoint(
        path,
        {
            "format": "relaxlab-checkpoint",
            "version": 2,
            "config": "{}",
            "architecture": "FC",
            "input_shape": [1],
            "num_classes": 2,
            "mean": [0.0],
            "std": [1.0],
            "model": {"w": torch.ones(64, 64)},
        },
    )
    assert read_checkpoint(path)["model"]["w"].sum() == 64 * 64
    data = bytearray(path.read_bytes())
    data[data.find(torch.ones(8).numpy().tobytes()) + 1000] ^= 0x40  # one bit of one float
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the digest"):
        read_checkpoint(path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("true",))


def test_an_unsafe_pickle_is_refused_as_unsafe_not_as_corrupt(tmp_path: Path) -> None:
    from relaxlab.training.checkpoint import read_checkpoint

    torch.save({"format": "relaxlab-checkpoint", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused as unsafe.*GLOBAL"):
        read_checkpoint(tmp_path / "evil.pt")
