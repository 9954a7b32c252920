"""The six relaxations the prover once accepted and the engine then used unsoundly (issue 27, item 2).

Each is declared as a plugin author would, registered through the facade and used through the
facade's ``compute_bounds`` on ``x -> w·relu(x)`` with the ReLU's input bounds placed where the
relaxation is wrong, in float64 and float32. What must not happen is the silent wrong answer:
either relaxlab refuses by name (registration, look-up or the evaluator's domain check), or the
bounds contain every output (the exact range of ``w·relu`` over the box, in float64).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relaxlab import api
from relaxlab.core.expr import Opaque, Param, U, ge, switch
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE, UPPER, ZERO
from relaxlab.core.relaxation import CaseBounds, ParamSpec, ReluRelaxation, line
from relaxlab.registry import UnsoundRelaxationError

DTYPES = [torch.float64, torch.float32]


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _network(weight: float, dtype: torch.dtype) -> nn.Module:
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).to(dtype)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[2].weight.fill_(weight)
        model[2].bias.zero_()
    return model.eval()


def _never_silently_wrong(
    relaxation: ReluRelaxation, lookup: str, lower: float, upper: float, weight: float, dtype: torch.dtype
) -> str:
    """``"refused"`` when relaxlab refuses by name, ``"sound"`` when the bounds hold; fails otherwise."""
    lower, upper = (lower, upper) if dtype == torch.float64 else (_f32(lower), _f32(upper))
    centre, radius = (lower + upper) / 2, (upper - lower) / 2
    model = _network(weight, dtype)
    x = torch.tensor([[centre]], dtype=dtype)
    # the box the engine sees is [x - eps, x + eps] in dtype: the ReLU input bounds are those ends
    box_lo, box_hi = float(x - radius), float(x + radius)
    assert abs(box_lo - lower) <= 1e-6 * (1 + abs(lower)) and abs(box_hi - upper) <= 1e-6 * (1 + abs(upper))
    try:  # known by name inside the block only: nothing registered outlives the test
        with api.extended_registry([relaxation], source="runtime"), torch.no_grad():
            lb, ub = api.compute_bounds(model, x, radius, lookup)
    except (UnsoundRelaxationError, ValueError) as error:
        assert relaxation.name in str(error), str(error)
        return "refused"
    # w·relu(t) over t in [box_lo, box_hi]: its extremes are at the ends and at 0
    points = [box_lo, box_hi] + ([0.0] if box_lo < 0.0 < box_hi else [])
    outputs = [weight * max(t, 0.0) for t in points]
    assert float(lb) <= min(outputs) and float(ub) >= max(outputs), (
        f"{lookup} in {dtype}: bounds [{float(lb)!r}, {float(ub)!r}] miss outputs [{min(outputs)!r}, {max(outputs)!r}]"
    )
    return "sound"


def _named(base: str, dtype: torch.dtype) -> str:
    return f"{base} {str(dtype).rsplit('.', 1)[-1]}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_switch_on_a_constant_is_compared_as_evaluated(dtype: torch.dtype) -> None:
    """``u >= 4.1``: the evaluator used to compare against 4.1 rounded to float32 (4.0999999...), the
    prover against 4.1; between the two the then-branch (steep, wrong below 4.1) was used unproved."""
    name = _named("escape switch", dtype)
    relaxation = ReluRelaxation(
        name=name,
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, line(0.0, switch(ge(U, 4.1), 4.1 + 1e9 * (U - 4.1), U))),
    )
    upper = 4.09999995 if dtype == torch.float64 else _f32(4.1)  # float32: the float just below 4.1
    assert upper < 4.1
    _never_silently_wrong(relaxation, name, -0.09999995, upper, 1.0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_parameter_beyond_the_clipped_range_is_not_used_unproved(dtype: torch.dtype) -> None:
    """``u·(1.5 - θ/2000)`` is sound for θ <= 1000 only; θ >= 0 is unbounded, the prover clipped it to
    [0, 1000], and ``get("...(theta=5000)")`` only re-validated the range."""
    name = _named("escape theta", dtype)
    theta = Param("theta")
    relaxation = ReluRelaxation(
        name=name,
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        params=(ParamSpec("theta", 1.0, minimum=0.0),),
        unstable=CaseBounds(ZERO, line(0.0, U * (1.5 - theta / 2000))),
    )
    outcome = _never_silently_wrong(relaxation, f"{name}(theta=5000)", -1.0, 3.0, 1.0, dtype)
    assert outcome == "refused"
    with api.extended_registry([relaxation], source="runtime"):
        assert api.get_relaxation(f"{name}(theta=500)").parameters == {"theta": 500.0}  # proved values pass


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_line_proved_on_a_bounded_domain_is_not_used_beyond_it(dtype: torch.dtype) -> None:
    """``y <= 1e4`` is sound for u <= 1e4, which is where it was proved; it was used at u = 2e4."""
    name = _named("escape constant", dtype)
    relaxation = ReluRelaxation(
        name=name, negative=EXACT_NEGATIVE, positive=EXACT_POSITIVE, unstable=CaseBounds(ZERO, line(0.0, 1e4))
    )
    assert _never_silently_wrong(relaxation, name, -1.0, 2e4, 1.0, dtype) == "refused"


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_offset_inside_the_old_tolerance_is_not_amplified(dtype: torch.dtype) -> None:
    """A negative-case lower line ``y >= 5e-10`` passed the relative tolerance 1e-9·(1 + |l| + |u|);
    a weight of 1e9 made it a lower bound of 0.5 where every output is 0."""
    name = _named("escape offset", dtype)
    relaxation = ReluRelaxation(
        name=name,
        negative=CaseBounds(line(0.0, 5e-10), ZERO),
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, CHORD),
    )
    assert _never_silently_wrong(relaxation, name, -2.0, -1.0, 1e9, dtype) == "refused"


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_opaque_line_is_not_used_as_if_proved(dtype: torch.dtype) -> None:
    """An opaque upper line too low by u/2 only for 4 <= u <= 4.1: the sampled check passes it."""
    name = _named("escape opaque", dtype)
    sliver = Opaque("sliver", lambda env: env["u"] - 0.5 * env["u"] * ((env["u"] >= 4.0) & (env["u"] <= 4.1)))
    relaxation = ReluRelaxation(
        name=name,
        negative=EXACT_NEGATIVE,
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, line(0.0, sliver)),
    )
    assert _never_silently_wrong(relaxation, name, -1.0, 4.05, 1.0, dtype) == "refused"


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_line_zero_in_the_reals_but_not_in_float32_is_refused(dtype: torch.dtype) -> None:
    """``100·((u + 1e4) - 1e4 - u)`` is 0 in the reals and up to 0.05 in float32 (9e-11 in float64)."""
    name = _named("escape rounding", dtype)
    relaxation = ReluRelaxation(
        name=name,
        negative=CaseBounds(line(0.0, 100 * ((U + 1e4) - 1e4 - U)), ZERO),
        positive=EXACT_POSITIVE,
        unstable=CaseBounds(ZERO, UPPER),
    )
    assert _never_silently_wrong(relaxation, name, -2.0, -1.3, 1e9, dtype) == "refused"
