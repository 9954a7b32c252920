"""Every registered relaxation is sound: lower(x) <= relu(x) <= upper(x) for all x in [l, u].

Exact per (l, u) at x in {l, 0, u} (lines are linear in x); Hypothesis draws (l, u) with the hard
corners (exact zeros, widths near 1e-7, magnitudes 1e4) and parameters at their extremes.
"""

from __future__ import annotations

import pytest
import torch
from attrs import evolve
from hypothesis import example, given
from hypothesis import strategies as st

import relaxlab
from relaxlab.core.expr import L, U
from relaxlab.core.lines import CHORD, CHORD_LOW, IDENTITY, LAMBDA, SHIFTED, UPPER, ZERO
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, line
from relaxlab.properties.soundness import find_counterexample
from relaxlab.testing import assert_relaxation_sound, find_unsound_example
from relaxlab.testing.strategies import parameter_values, preactivation_bounds

NAMES = relaxlab.get_registry().relaxations.names()


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data(), pair=preactivation_bounds())
@example(data=None, pair=(0.0, 0.0))  # l == u == 0 belongs to NEGATIVE
@example(data=None, pair=(-1e-30, 1e-30))  # nearly degenerate chord
@example(data=None, pair=(-1e4, 1e-7))  # chord slope near 0
@example(data=None, pair=(-1e-7, 1e4))  # chord slope near 1
def test_lines_enclose_relu(name: str, data: st.DataObject | None, pair: tuple[float, float]) -> None:
    relaxation = relaxlab.get_relaxation(name)
    if data is not None:
        relaxation = data.draw(parameter_values(relaxation))
    counterexample = find_counterexample(relaxation, [pair[0]], [pair[1]])
    assert counterexample is None, str(counterexample)


@pytest.mark.parametrize("name", NAMES)
def test_public_conformance_check_passes(name: str) -> None:
    assert_relaxation_sound(relaxlab.get_relaxation(name), max_examples=40)


# Deliberately unsound specs, each wrong in one place only.
UNSOUND = {
    "upper chord too low": CaseBounds(ZERO, CHORD_LOW),
    "lower identity as upper": CaseBounds(ZERO, IDENTITY),
    "lower line above": CaseBounds(line(1.0, 1e-6), CHORD),
    "slightly flat chord": CaseBounds(ZERO, line(LAMBDA * 0.999999, -LAMBDA * L)),
    "upper u - 1e-6": CaseBounds(ZERO, line(0.0, U - 1e-6)),
}


@pytest.mark.parametrize("label", sorted(UNSOUND))
def test_unsound_specs_are_caught_with_a_real_counterexample(label: str) -> None:
    relaxation = evolve(relaxlab.get_relaxation("CROWN"), name="unsound", unstable=UNSOUND[label])
    counterexample = find_unsound_example(relaxation, max_examples=100)
    assert counterexample is not None
    # the counterexample really violates: recompute it independently
    lb = torch.tensor([counterexample.lower], dtype=torch.float64)
    ub = torch.tensor([counterexample.upper], dtype=torch.float64)
    ls, lo, us, uo = (float(v) for v in relaxation.coefficients(lb, ub).tensors)
    x = counterexample.x
    assert counterexample.lower <= x <= counterexample.upper
    value = (ls if counterexample.side == "lower" else us) * x + (
        lo if counterexample.side == "lower" else uo
    )
    gap = value - max(x, 0.0) if counterexample.side == "lower" else max(x, 0.0) - value
    assert gap > 0 and value == pytest.approx(counterexample.line_value)
    with pytest.raises(AssertionError, match="unsound"):
        assert_relaxation_sound(relaxation, max_examples=20)


def test_unsound_negative_and_positive_cases_are_caught() -> None:
    base = relaxlab.get_relaxation("hBox")
    assert find_unsound_example(evolve(base, name="n", negative=CaseBounds(ZERO, line(0.0, U)))) is not None
    # x - l is below x for positive ReLUs: sound as a lower line, unsound as an upper one
    assert find_unsound_example(evolve(base, name="p", positive=CaseBounds(SHIFTED, IDENTITY))) is None
    assert find_unsound_example(evolve(base, name="p2", positive=CaseBounds(IDENTITY, SHIFTED))) is not None
    # for negative ReLUs x - l >= 0 = relu(x): unsound as a lower line
    assert find_unsound_example(evolve(base, name="q", negative=CaseBounds(SHIFTED, SHIFTED))) is not None


def test_a_narrowing_transform_is_caught() -> None:
    relaxation = evolve(relaxlab.get_relaxation("IBP"), name="narrow", transform=BoundsTransform(L + 1e-3, U))
    counterexample = find_unsound_example(relaxation, max_examples=20)
    assert counterexample is not None and counterexample.side in ("transform", "lower", "upper")


def test_upper_u_is_unsound_for_positive_case_lower() -> None:
    relaxation = evolve(relaxlab.get_relaxation("IBP"), name="u-low", positive=CaseBounds(UPPER, UPPER))
    counterexample = find_unsound_example(relaxation, max_examples=20)
    assert counterexample is not None and counterexample.case == "positive" and counterexample.side == "lower"
