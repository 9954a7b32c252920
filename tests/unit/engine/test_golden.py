"""Every bound the engine computed before its rewrite (issue 21) is computed the same now.

``tests/data/engine_golden.pt`` holds the bounds of the two engines of main at fcb1c38 (the chain
engine and the graph engine) on seven float64 networks (four chains, three graphs: residual,
CNN7-like with BatchNorm, concatenation with a grouped convolution) for every built-in relaxation
and its options then (patches off, sparse rows, lower bounds only, interval relaxations forced
through backsubstitution), written by ``tests/data/make_engine_golden.py`` on that code.

The one engine must reproduce them to rounding: where the order of operations changed (the
interval images of ``Normalize`` and ``BatchNorm`` are now a scale and a shift, the constants of
patches are summed per window, a chain's first segment is mapped in centre/radius form without
the old halving trick) results differ by a few ulps of the magnitudes involved, so the tolerance
is relative to the largest magnitude of the case (1e-12 of it, plus 1e-12). Relaxations with
jumps (switches, floors) can land on the other side of a jump when a bound sits exactly on it;
none of the recorded cases does (the test would say which).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from relaxlab.engine import bound_network, intermediate_bounds, parse_model
from relaxlab.engine.box import input_box

DATA = Path(__file__).resolve().parents[2] / "data"
GOLDEN = torch.load(DATA / "engine_golden.pt", weights_only=False)
_spec = importlib.util.spec_from_file_location("make_engine_golden", DATA / "make_engine_golden.py")
assert _spec is not None and _spec.loader is not None
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)

NETWORKS = maker.networks()
RELAXATIONS = {r.label: r for r in maker.relaxations()}
CASES = sorted({key.rsplit("/", 1)[0] for key in GOLDEN["bounds"]})
#: Checked on every run: every relaxation on the chains, the paper's five and two App. H relaxations
#: on the small graphs, three on the residual network (backsubstitution of its 1,000-neuron layers
#: costs seconds per relaxation); every case with ``-m slow``.
_QUICK = {"IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)", "CROWN-0-C", "DeepZ-Soft"}
_RESNET = {"IBP", "CROWN-IBP (R)", "CROWN"}


def _marks(case: str) -> list[pytest.MarkDecorator]:
    net, label = case.split("/", 1)
    quick = net.startswith("chain") or (label in _RESNET if net == "graph_resnet" else label in _QUICK)
    return [] if quick else [pytest.mark.slow]


PARAMS = [pytest.param(case, marks=_marks(case), id=case) for case in CASES]


def _close(got: torch.Tensor, want: torch.Tensor, scale: float, what: str) -> None:
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{what}: infinite entries differ"
    error = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    assert error <= 1e-12 + 1e-12 * scale, f"{what}: differs by {error:.3g} (magnitude {scale:.3g})"


@pytest.mark.parametrize("case", PARAMS)
def test_bounds_equal_the_engine_before_the_rewrite(case: str) -> None:
    net_name, label = case.split("/", 1)
    model, shape = NETWORKS[net_name]
    model.load_state_dict(GOLDEN["states"][net_name])
    outputs = model(torch.zeros(1, *shape, dtype=torch.float64)).shape[1]
    x, _, spec = maker.inputs(shape, outputs)
    lower, upper = input_box(x, GOLDEN["eps"], (0.0, 1.0))
    network = parse_model(model, shape, dtype=torch.float64)
    relaxation = RELAXATIONS[label]
    variants = [key.rsplit("/", 1)[1] for key in GOLDEN["bounds"] if key.rsplit("/", 1)[0] == case]
    for variant in variants:
        want = GOLDEN["bounds"][f"{case}/{variant}"]
        options = {
            "default": {},
            "lower_only": {"lower_only": True},
            "no_patches": {"patches": False},
            "sparse": {"sparse": True},
            "backsub": {"mode": "backsub"},
        }[variant]
        with torch.no_grad():
            lb, ub = bound_network(network, lower, upper, relaxation, spec, **options)
            boxes, _ = intermediate_bounds(
                network, lower, upper, relaxation, **{k: v for k, v in options.items() if k != "lower_only"}
            )
        pre = want["pre"] if want["pre"] is not None else GOLDEN["bounds"][f"{case}/default"]["pre"]
        scale = max(1.0, float(want["lb"][torch.isfinite(want["lb"])].abs().max()))
        for recorded in pre:
            if recorded is not None:
                scale = max(scale, float(recorded[0].abs().max()), float(recorded[1].abs().max()))
        _close(lb, want["lb"], scale, f"{case}/{variant} lb")
        _close(ub, want["ub"], scale, f"{case}/{variant} ub")
        assert len(boxes) == len(pre), f"{case}/{variant}: {len(boxes)} ReLUs, recorded {len(pre)}"
        for k, ((lo, hi), recorded) in enumerate(zip(boxes, pre, strict=True)):
            if recorded is None:  # not kept (make_engine_golden.trim)
                continue
            _close(lo, recorded[0], scale, f"{case}/{variant} ReLU {k} lower")
            _close(hi, recorded[1], scale, f"{case}/{variant} ReLU {k} upper")
