"""Pointwise per-case tightness order (relaxlab.properties.tightness), against hand-derived verdicts."""

from __future__ import annotations

import torch
from attrs import evolve

import relaxlab
from relaxlab.core.expr import L, U
from relaxlab.core.lines import CHORD_LOW, CHORD_TOP, EXACT_NEGATIVE, EXACT_POSITIVE, UPPER, ZERO
from relaxlab.core.relaxation import CaseBounds, ReluRelaxation, line
from relaxlab.core.stability import Stability, stability_masks
from relaxlab.properties.tightness import (
    case_pairs,
    compare,
    compare_many,
    comparison_pairs,
    effective_intermediate,
    equivalent,
    line_values,
    profile,
    values_equal,
)


def _get(name: str) -> ReluRelaxation:
    return relaxlab.get_relaxation(name)


def test_hbox_is_tighter_than_ibp_in_the_positive_case_only() -> None:
    # hBox: y = x for l >= 0; IBP: l <= y <= u there. x >= l and x <= u on [l, u]; other cases identical.
    result = compare(_get("hBox"), _get("IBP"))
    assert dict(result.cases) == {"negative": "equal", "unstable": "equal", "positive": "tighter"}
    assert result.overall == "tighter"
    assert not result.same_intermediate  # hBox backsubstitutes, IBP is interval
    assert compare(_get("IBP"), _get("hBox")).overall == "looser"


def test_chord_is_tighter_than_box_upper_and_0_vs_x_lower_is_incomparable() -> None:
    # λx - λl <= u on [l, u] (it meets u only at x = u); lower 0 vs x: 0 > l at x = l but 0 < u at x = u.
    assert dict(compare(_get("CROWN-0"), _get("hBox")).cases)["unstable"] == "tighter"
    assert dict(compare(_get("CROWN-0"), _get("CROWN-1")).cases)["unstable"] == "incomparable"
    assert compare(_get("CROWN"), _get("CROWN-0")).overall == "incomparable"


def test_numerically_equal_lines_are_equal_even_when_written_differently() -> None:
    deepz_top = ReluRelaxation(
        name="DeepZ written through (u, u)",
        negative=EXACT_NEGATIVE,
        unstable=CaseBounds(CHORD_LOW, CHORD_TOP),
        positive=EXACT_POSITIVE,
    )
    assert deepz_top.spec_key() != _get("DeepZ").spec_key()
    assert equivalent(deepz_top, _get("DeepZ"))
    assert equivalent(_get("hBox"), _get("DeepZ-Box"))
    assert not equivalent(_get("CROWN"), _get("CROWN-IBP (R)"))  # same lines, other intermediate mode


def test_a_perturbation_of_1e_6_is_not_equal() -> None:
    shifted = evolve(_get("hBox"), name="hBox shifted", unstable=CaseBounds(ZERO, line(0.0, U * (1 + 1e-6))))
    result = compare(shifted, _get("hBox"))
    assert dict(result.cases)["unstable"] == "looser"
    assert not equivalent(shifted, _get("hBox"))


def test_all_zero_slopes_mean_interval_intermediate() -> None:
    ibp_lines_backsub = evolve(_get("IBP"), name="IBP lines, backsub", intermediate="backsub")
    assert effective_intermediate(ibp_lines_backsub) == "interval"
    assert equivalent(ibp_lines_backsub, _get("IBP"))
    assert effective_intermediate(_get("hBox")) == "backsub"


def test_comparison_pairs_cover_every_case_and_values_are_lines() -> None:
    lower, upper = comparison_pairs()
    assert bool((lower <= upper).all())
    for stability in Stability:
        lb, ub = case_pairs(stability)
        assert lb.numel() > 50
        assert bool(stability_masks(lb, ub)[stability].all())
    values = line_values(line(2.0, L), Stability.UNSTABLE)  # 2x + l at x = l, 0, u
    lb, ub = case_pairs(Stability.UNSTABLE)
    expected = torch.stack((3 * lb, lb, 2 * ub + lb), dim=-1)
    assert values_equal(values, expected, Stability.UNSTABLE)
    assert not values_equal(values, line_values(UPPER, Stability.UNSTABLE), Stability.UNSTABLE)


def test_batched_comparison_equals_one_at_a_time_across_batches() -> None:
    # every registered relaxation (more than fit in one batch) against hBox, in order
    others = [relaxlab.get_relaxation(n) for n in relaxlab.get_registry().relaxations.names()]
    hbox = _get("hBox")
    batched = compare_many(
        profile(hbox), effective_intermediate(hbox), [(profile(o), effective_intermediate(o)) for o in others]
    )
    assert len(others) > 12 and batched == [compare(hbox, o) for o in others]
    assert {t.overall for t in batched} >= {"equal", "tighter", "looser", "incomparable"}
