"""The paper's architectures (Table 7) and the architecture plugin hook."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import relaxlab
import relaxlab.registry as registry_module
from relaxlab.architectures import Architecture, relaxlab_architectures
from relaxlab.nn import Normalize


def _layers(net: nn.Sequential) -> list[str]:
    out = []
    for m in net:
        if isinstance(m, nn.Conv2d):
            out.append(f"conv{m.out_channels}k{m.kernel_size[0]}s{m.stride[0]}p{m.padding[0]}")
        elif isinstance(m, nn.Linear):
            out.append(f"fc{m.out_features}")
    return out


def build(name: str, shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Sequential:
    return relaxlab.get_registry().architectures[name].build(shape, 10, [0.5] * shape[0], [0.25] * shape[0])


def test_table7_layer_sequences() -> None:
    assert _layers(build("FC")) == ["fc400", "fc200", "fc100", "fc100", "fc10"]
    assert _layers(build("CONV")) == ["conv16k4s2p1", "fc100", "fc10"]
    assert _layers(build("CONV+")) == ["conv16k4s2p0", "conv32k4s1p0", "fc100", "fc10"]
    assert _layers(build("FC-S")) == ["fc100", "fc100", "fc10"]


@pytest.mark.parametrize(
    "name, shape, features",
    [
        ("CONV", (1, 28, 28), 16 * 14 * 14),  # the paper's code pads by 1: 16x14x14 on 28x28
        ("CONV", (3, 32, 32), 16 * 16 * 16),
        ("CONV+", (1, 28, 28), 32 * 10 * 10),  # 28 -> 13 -> 10
        ("CONV+", (3, 32, 32), 32 * 12 * 12),  # 32 -> 15 -> 12
        ("FC", (3, 32, 32), 3 * 32 * 32),
    ],
)
def test_generic_input_shapes(name: str, shape: tuple[int, int, int], features: int) -> None:
    net = build(name, shape)
    first_fc = next(m for m in net if isinstance(m, nn.Linear))
    assert first_fc.in_features == features
    assert net(torch.rand(2, *shape)).shape == (2, 10)


def test_every_network_starts_with_the_dataset_normalisation() -> None:
    net = (
        relaxlab.get_registry()
        .architectures["CONV"]
        .build((3, 32, 32), 10, (0.1, 0.2, 0.3), (0.5, 0.5, 0.25))
    )
    assert isinstance(net[0], Normalize)
    assert torch.allclose(net[0].mean, torch.tensor([0.1, 0.2, 0.3]))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(net[0](x)[0, 2], (x[0, 2] - 0.3) / 0.25)
    assert "0.mean" in net.state_dict()  # saved with the network


def test_build_refuses_bad_shapes() -> None:
    arch = relaxlab.get_registry().architectures["CONV+"]
    with pytest.raises(ValueError, match="too small"):
        arch.build((1, 6, 6), 10, [0.0], [1.0])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        arch.build((784,), 10, [0.0], [1.0])


def test_the_hook_returns_named_architectures() -> None:
    assert [a.name for a in relaxlab_architectures()] == ["FC", "CONV", "CONV+", "FC-S", "CNN7", "ResNet-S"]


def test_a_plugin_can_add_an_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    def tiny(input_shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
        return [
            nn.Flatten(),
            nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 7),
            nn.ReLU(),
            nn.Linear(7, num_classes),
        ]

    plugin = types.ModuleType("tiny_plugin")

    @relaxlab.hookimpl
    def relaxlab_architectures() -> list[Architecture]:
        return [Architecture(name="Tiny", builder=tiny, summary="FC 7")]

    plugin.relaxlab_architectures = relaxlab_architectures  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "tiny_plugin", plugin)
    monkeypatch.setattr(registry_module, "BUILTIN_PLUGINS", (*registry_module.BUILTIN_PLUGINS, "tiny_plugin"))
    registry = registry_module.build_registry(load_entry_points=False)
    assert registry.architectures.source("Tiny") == "tiny_plugin"
    net = registry.architectures["tiny"].build((1, 28, 28), 10, [0.0], [1.0])
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [7, 10]
