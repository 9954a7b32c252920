"""``verify`` never answers wrongly: unsat against an exact MILP (one atom) or sampling (several), sat confirmed.

For random small ReLU networks and random properties (one or two boxes, conjunctions of one to
three random atoms whose constants sit near the outputs at the box centre, so that both answers
occur):

- ``unsat``: for every conjunction of ONE atom ``c·y <= b``, the exact minimum of ``c·y`` over
  its box (MILP, :mod:`relaxlab.reference.milp`) is above ``b`` up to the MILP's tolerance; for
  conjunctions of several atoms no sampled input (corners, centre, 300 uniform points) satisfies
  them all (sampled: evidence, not proof);
- ``sat``: the counterexample lies in a box and a fresh forward pass satisfies one conjunction.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from relaxlab.engine.vnnlib import Atom, InputBox, Property, Region
from relaxlab.evaluation.verify import (
    AttackStage,
    SplitStage,
    relaxation_bound,
    resolve_stage,
    verify_property,
)
from relaxlab.reference.milp import MILP_ATOL, MILP_RTOL, milp_bounds

PLAN = [
    resolve_stage("IBP"),
    resolve_stage("CROWN"),
    AttackStage(rounds=1, starts=4, steps=20),
    SplitStage("split", relaxation_bound("CROWN"), batch=32, max_boxes=256),
]
values = st.floats(-1.0, 1.0, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def problems(draw: st.DrawFn) -> tuple[nn.Sequential, Property]:
    inputs, hidden, outputs = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    layers = [nn.Linear(inputs, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, outputs)]
    with torch.no_grad():
        for layer in layers:
            for tensor in (layer.weight, layer.bias):
                drawn = draw(st.lists(values, min_size=tensor.numel(), max_size=tensor.numel()))
                tensor.copy_(torch.tensor(drawn).reshape(tensor.shape))
    model = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2]).double().eval()
    regions = []
    for _ in range(draw(st.integers(1, 2))):
        centre = [draw(values) for _ in range(inputs)]
        radius = draw(st.sampled_from([0.0, 0.01, 0.1, 0.3, 1.0]))
        box = InputBox(
            [Fraction(c) - Fraction(radius) for c in centre], [Fraction(c) + Fraction(radius) for c in centre]
        )
        with torch.no_grad():
            y = model(torch.tensor([centre], dtype=torch.float64))[0]
        conjunctions = []
        for _ in range(draw(st.integers(1, 2))):
            atoms = []
            for _ in range(draw(st.integers(1, 3))):
                coefficients = [
                    (j, Fraction(draw(st.sampled_from([-1, 1, 2]))))
                    for j in sorted(draw(st.sets(st.integers(0, outputs - 1), min_size=1)))
                ]
                at_centre = sum(float(c) * float(y[j]) for j, c in coefficients)
                offset = draw(st.floats(-1.5, 0.1, allow_nan=False))  # mostly below the centre's value
                atoms.append(Atom(coefficients, Fraction(round(at_centre + offset, 3))))
            conjunctions.append(atoms)
        if box not in [region.box for region in regions]:
            regions.append(Region(box, conjunctions))
    return model, Property(inputs, outputs, regions)


def _box_points(box: InputBox) -> torch.Tensor:
    lower = torch.tensor([float(v) for v in box.lower], dtype=torch.float64)
    upper = torch.tensor([float(v) for v in box.upper], dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.stack([lo, hi]) for lo, hi in zip(lower, upper, strict=True)])
    corners = corners.reshape(-1, lower.numel())
    uniform = lower + (upper - lower) * torch.rand(
        300, lower.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    return torch.cat([corners, ((lower + upper) / 2).unsqueeze(0), uniform])


@given(problems())
def test_verify_answers_are_never_wrong(problem: tuple[nn.Sequential, Property]) -> None:
    model, prop = problem
    result = verify_property(model, prop, plan=PLAN, timeout=60)
    assert result.status in ("unsat", "sat", "unknown"), result.reason
    if result.status == "sat":
        example = result.counterexample
        assert example is not None
        with torch.no_grad():
            outputs = model(torch.tensor([example.inputs], dtype=torch.float64))[0].tolist()
        assert outputs == list(example.outputs)
        assert any(
            region.box.contains(example.inputs)
            and any(all(a.holds(outputs) for a in conjunction) for conjunction in region.disjuncts)
            for region in prop.regions
        )
        return
    if result.status != "unsat":
        return
    for region in prop.regions:
        lower = torch.tensor([[float(v) for v in region.box.lower]], dtype=torch.float64)
        upper = torch.tensor([[float(v) for v in region.box.upper]], dtype=torch.float64)
        points = _box_points(region.box)
        with torch.no_grad():
            sampled = model(points).tolist()
        for conjunction in region.disjuncts:
            if len(conjunction) == 1:
                (atom,) = conjunction
                row = torch.zeros(1, prop.num_outputs, dtype=torch.float64)
                for j, c in atom.coefficients:
                    row[0, j] = float(c)
                minimum, _ = milp_bounds(model, lower, upper, row)
                slack = MILP_ATOL + MILP_RTOL * (1 + abs(float(atom.bound)))
                assert float(minimum) >= float(atom.bound) - slack, (atom, float(minimum))
            assert not any(all(a.holds(y) for a in conjunction) for y in sampled), conjunction
