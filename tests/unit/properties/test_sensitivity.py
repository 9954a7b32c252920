"""Sensitivity (Sec. 4.3): degrees of the bound polynomials, growth factors, the paper's log-sensitivity,
the measured one counting unstable layers."""

from __future__ import annotations

import math

import pytest

import relaxlab
from relaxlab.examples import toy_continuity_network
from relaxlab.properties.sensitivity import (
    degree_on,
    growth_factor,
    log_sensitivity,
    measured_log_sensitivity,
    paper_degree,
)

# -- degrees ------------------------------------------------------------------------------------


def test_degree_trace_of_deepz() -> None:
    result = paper_degree(relaxlab.get_relaxation("DeepZ"), blocks=1, width=5)
    assert [str(c) for _, c in result.trace] == ["P_1", "R_2", "R_10", "R_30", "R_150"]


def test_every_registered_relaxation_has_a_degree_consistent_with_its_flags() -> None:
    from relaxlab.properties import derive

    for name in relaxlab.get_registry().relaxations.names():
        relaxation = relaxlab.get_relaxation(name)
        degree = degree_on(relaxation, [7, 7, 7]).degree
        if derive(relaxation).sensitive:
            assert degree > 7, name
        else:
            assert degree == 1, name


def test_growth_factor_and_paper_log_sensitivity() -> None:
    m = 400
    assert growth_factor(relaxlab.get_relaxation("IBP"), m) == 1
    assert growth_factor(relaxlab.get_relaxation("CROWN-IBP (R)"), m) == m
    assert growth_factor(relaxlab.get_relaxation("DeepZ"), m) == 3 * m
    assert log_sensitivity(relaxlab.get_relaxation("hBox"), [0, 3]) == [0.0, 0.0]
    assert log_sensitivity(relaxlab.get_relaxation("CROWN-IBP (R)"), [0, 1, 4]) == pytest.approx([0, 1, 4])
    paper = [(b + 1) * (1 + math.log(3) / math.log(m)) for b in range(4)]
    assert log_sensitivity(relaxlab.get_relaxation("CROWN"), [1, 2, 3, 4]) == pytest.approx(paper)


def test_measured_log_sensitivity_counts_unstable_layers() -> None:
    example = toy_continuity_network(0.0)  # its one ReLU layer is unstable
    values, counts = measured_log_sensitivity(
        example.model, example.center, 1.0, relaxlab.get_relaxation("CROWN"), width=10, domain=None
    )
    assert counts == [1]
    assert values[0] == pytest.approx(1 + math.log(3) / math.log(10))
    stable = toy_continuity_network(5.0)  # pre-activations in [4, 6]: stable
    values, counts = measured_log_sensitivity(
        stable.model, stable.center, 1.0, relaxlab.get_relaxation("CROWN"), width=10, domain=None
    )
    assert counts == [0] and values == [0.0]


def test_degree_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="positive integers"):
        degree_on(relaxlab.get_relaxation("IBP"), [3, 0])
