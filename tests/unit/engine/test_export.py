"""ONNX export and load round trips, VNN-LIB properties read back, the ``export`` command."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import Tensor, nn

import relaxlab
from relaxlab.api import compute_bounds
from relaxlab.cli import cli
from relaxlab.engine import parse_model
from relaxlab.engine.export import export_onnx
from relaxlab.engine.onnx import OnnxModel, load_onnx
from relaxlab.engine.vnnlib import Atom, read_vnnlib
from tests.unit.test_architectures_graph import save_resnet_checkpoint, with_batch_statistics


class CatResidual(nn.Module):
    """Normalise, conv + BN, two branches concatenated, a residual add, AvgPool, BN1d after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = relaxlab.nn.Normalize([0.5], [0.25])
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.a = nn.Conv2d(2, 1, 3, padding=1)
        self.b = nn.Conv2d(2, 1, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 5)
        self.bn1d = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.stem(self.normalize(x))))
        y = torch.cat([self.a(h), self.b(h)], dim=1) + h
        y = self.pool(F.relu(y))
        return self.out(F.relu(self.bn1d(self.fc(torch.flatten(y, 1)))))


def _networks() -> list[object]:
    torch.manual_seed(0)
    registry = relaxlab.get_registry().architectures
    return [
        pytest.param(*args, id=args[0])
        for args in (
            ("cat-residual", CatResidual(), (1, 6, 6)),
            ("ResNet-S", registry["ResNet-S"].build((1, 4, 4), 10, [0.1], [0.3]), (1, 4, 4)),
            ("CNN7", registry["CNN7"].build((1, 6, 6), 10, [0.1], [0.3]), (1, 6, 6)),
            ("CONV", registry["CONV"].build((1, 8, 8), 10, [0.1], [0.3]), (1, 8, 8)),
        )
    ]


@pytest.mark.parametrize(
    ("name", "model", "shape"), _networks(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_export_then_load_gives_the_same_bounds(
    name: str, model: nn.Module, shape: tuple[int, ...], tmp_path: Path
) -> None:
    model = with_batch_statistics(model, shape)
    path = tmp_path / "model.onnx"
    export_onnx(model, shape, path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    loaded = load_onnx(path)
    assert isinstance(loaded, OnnxModel) and parse_model(loaded, shape).input_shape == shape
    # the same operations as the model parsed directly, up to the bias Adds merged into their products
    read, parsed = parse_model(loaded, shape), parse_model(model.eval(), shape)
    assert read.is_chain == parsed.is_chain and len(read.relus) == len(parsed.relus)
    if name != "CONV":
        assert "BatchNormalization" in ops and ("Add" in ops or name == "CNN7")
    model, loaded = model.double(), loaded.double()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-12, rtol=0)
        for relaxation in ("IBP", "CROWN-IBP (R)", "DeepZ"):
            if relaxation == "DeepZ" and name == "CNN7":
                continue  # full backsubstitution through CNN7 is slow; CROWN-IBP covers its backward pass
            ours = compute_bounds(model, x, 0.01, relaxation, domain=(0.0, 1.0))
            theirs = compute_bounds(loaded, x, 0.01, relaxation, domain=(0.0, 1.0))
            scale = 1.0 + float(ours[1].abs().max())
            for a, b in zip(ours, theirs, strict=True):
                torch.testing.assert_close(a, b, atol=1e-12 * scale, rtol=0)


def test_export_command(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = relaxlab.get_registry().architectures["ResNet-S"].build((1, 28, 28), 10, [0.1], [0.3])
    model = with_batch_statistics(resnet, (1, 28, 28))
    checkpoint = save_resnet_checkpoint(tmp_path / "ckpt.pt", model, eps_test=0.05)
    onnx_path, vnnlib_dir = tmp_path / "out" / "model.onnx", tmp_path / "props"
    args = ["export", str(checkpoint), "--onnx", str(onnx_path), "--vnnlib", str(vnnlib_dir), "--n", "3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    loaded = load_onnx(onnx_path)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    instances = (vnnlib_dir / "instances.csv").read_text().splitlines()
    assert len(instances) == 3 and all(line.endswith(",60") for line in instances)
    images, labels = relaxlab.get_registry().datasets["mnist-mini"].load("test", None)
    for index in range(3):
        prop = read_vnnlib(vnnlib_dir / f"prop_{index}.vnnlib")
        flat = images[index].reshape(-1).double()
        assert (prop.num_inputs, prop.num_outputs, len(prop.regions)) == (784, 10, 1)
        lows = torch.tensor([float(v) for v in prop.regions[0].box.lower], dtype=torch.float64)
        torch.testing.assert_close(lows, (flat - 0.05).clamp(0, 1), atol=0, rtol=0)
        label = int(labels[index])
        assert prop.regions[0].disjuncts == tuple(
            (Atom(sorted([(label, 1), (j, -1)]), 0),) for j in range(10) if j != label
        )
    bad = CliRunner().invoke(cli, [*args[:4], "--eps", "2"])
    assert bad.exit_code != 0 and "eps must be in [0, 1]" in bad.output
