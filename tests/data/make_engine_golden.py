"""Record the bounds of the engine before its rewrite (issue 21), as the reference the new engine is held to.

Run once, on the code *before* the rewrite (main at fcb1c38), from the repository root::

    python tests/data/make_engine_golden.py

It writes ``tests/data/engine_golden.pt``: the state of six small float64 networks (four chains,
two graphs) and, for every built-in relaxation (and two parameter settings of the LooseIBP
family), their final margin bounds and the pre-activation bounds of every ReLU, with the engine's
options of the time (patches off, sparse rows, lower bounds only, forced backsubstitution for
interval relaxations). ``tests/unit/engine/test_golden.py`` recomputes them with the current engine.
Running the script again on a later engine rewrites the reference: don't, unless a change of the
recorded numbers is intended and explained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import relaxlab
from relaxlab.architectures import _cnn7, _resnet_small
from relaxlab.engine.spec import margin_spec
from relaxlab.nn import Normalize

HERE = Path(__file__).resolve().parent
OUT = HERE / "engine_golden.pt"
EPS = 0.08
BATCH = 3


class CatNet(nn.Module):
    """Two branches joined by ``torch.cat`` along the channels, then a grouped convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 3, 3, stride=1, padding=1)
        self.group = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(6 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        h = torch.relu(self.group(torch.relu(h)))
        return self.fc(h.flatten(1))


def networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """The recorded networks (float64, eval mode), built from fixed seeds."""
    torch.manual_seed(0)
    nets: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    nets["chain_fc"] = (
        nn.Sequential(
            Normalize([0.4], [0.3]),
            nn.Flatten(),
            nn.Linear(16, 12),
            nn.ReLU(),
            nn.Linear(12, 10),
            nn.ReLU(),
            nn.Linear(10, 5),
        ),
        (1, 4, 4),
    )
    nets["chain_conv"] = (
        nn.Sequential(
            Normalize([0.4], [0.3]),
            nn.Conv2d(1, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 5, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 4 * 4, 8),
            nn.ReLU(),
            nn.Linear(8, 5),
        ),
        (1, 8, 8),
    )
    nets["chain_conv_plus"] = (
        nn.Sequential(
            nn.Conv2d(1, 3, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 6),
            nn.ReLU(),
            nn.Linear(6, 4),
        ),
        (1, 10, 10),
    )
    nets["chain_linear_linear"] = (
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(9, 7),
            nn.Linear(7, 6),
            nn.ReLU(),
            nn.Linear(6, 6),
            nn.ReLU(),
            nn.ReLU(),
            nn.Linear(6, 3),
        ),
        (1, 3, 3),
    )
    nets["graph_resnet"] = (nn.Sequential(*_resnet_small((3, 8, 8), 4)), (3, 8, 8))
    nets["graph_cnn7"] = (nn.Sequential(*_cnn7(width=3, hidden=8)((2, 6, 6), 4)), (2, 6, 6))
    nets["graph_cat"] = (CatNet(), (2, 6, 6))
    generator = torch.Generator().manual_seed(1)
    for model, _ in nets.values():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                with torch.no_grad():
                    module.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                    module.weight.copy_(torch.randn(n, generator=generator))
                    module.bias.copy_(0.3 * torch.randn(n, generator=generator))
        model.double().eval()
    return nets


def relaxations() -> list[object]:
    registry = relaxlab.get_registry().relaxations
    chosen = [registry.get(name) for name in registry.names()]
    chosen.append(registry.get("LooseIBP-C").with_params(omega=0.05))
    chosen.append(registry.get("LooseIBP-DC").with_params(omega=0.05, F=3.0))
    return chosen


def inputs(shape: tuple[int, ...], outputs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(BATCH, *shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, outputs, (BATCH,), generator=generator)
    return x, labels, margin_spec(labels, outputs, dtype=torch.float64)


def record() -> dict[str, object]:  # pragma: no cover - run by hand on the old engine
    from relaxlab.engine.graph import GraphNetwork, bound_graph, graph_intermediate_bounds

    from relaxlab.engine import bound_network, intermediate_bounds, parse_model
    from relaxlab.engine.box import input_box

    result: dict[str, object] = {"eps": EPS, "states": {}, "bounds": {}}
    for net_name, (model, shape) in networks().items():
        result["states"][net_name] = {k: v.clone() for k, v in model.state_dict().items()}
        outputs = model(torch.zeros(1, *shape, dtype=torch.float64)).shape[1]
        x, _, spec = inputs(shape, outputs)
        lower, upper = input_box(x, EPS, (0.0, 1.0))
        network = parse_model(model, shape, dtype=torch.float64)
        is_graph = isinstance(network, GraphNetwork)
        bound = bound_graph if is_graph else bound_network
        middle = graph_intermediate_bounds if is_graph else intermediate_bounds
        for relaxation in relaxations():
            key = f"{net_name}/{relaxation.label}"
            variants: dict[str, dict[str, object]] = {"default": {}, "lower_only": {"lower_only": True}}
            if not relaxation.is_interval:
                if not is_graph:
                    variants["no_patches"] = {"patches": False}
                    if relaxation.intermediate == "backsub":
                        variants["sparse"] = {"sparse": True}
            else:
                variants["backsub"] = {"mode": "backsub"}
            for variant, options in variants.items():
                with torch.no_grad():
                    lb, ub = bound(network, lower, upper, relaxation, spec, **options)
                    boxes, _ = middle(
                        network,
                        lower,
                        upper,
                        relaxation,
                        **{k: v for k, v in options.items() if k != "lower_only"},
                    )
                result["bounds"][f"{key}/{variant}"] = {
                    "lb": lb.clone(),
                    "ub": ub.clone(),
                    "pre": [(lo.clone(), hi.clone()) for lo, hi in boxes],
                }
    return result


def trim(result: dict[str, object]) -> dict[str, object]:
    """Keep the file small: ``lower_only`` computes the default's pre-activation bounds (not stored
    twice), and of the residual network only its last three ReLUs' pre-activation bounds are kept
    (its first layers hold most neurons and the least information)."""
    for key, value in result["bounds"].items():  # type: ignore[union-attr]
        if key.endswith("/lower_only"):
            value["pre"] = None
        elif key.startswith("graph_resnet/"):
            value["pre"] = [None] * (len(value["pre"]) - 3) + list(value["pre"][-3:])
    return result


if __name__ == "__main__":  # pragma: no cover
    if OUT.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{OUT} exists; pass --force to overwrite the reference (see the docstring)")
    torch.save(trim(record()), OUT)
    print(f"wrote {OUT}")
