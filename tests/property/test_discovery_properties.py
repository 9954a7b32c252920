"""Hypothesis: every discovered relaxation is sound, and every claimed tightness order holds, at random points."""

from __future__ import annotations

import functools

import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxlab.core.stability import classify
from relaxlab.discovery import Discovery, discover
from relaxlab.registry import build_registry


@functools.lru_cache(maxsize=1)
def _found() -> Discovery:
    return discover(build_registry(load_entry_points=False))


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def box_and_point(draw: st.DrawFn) -> tuple[float, float, float]:
    a, b = draw(finite), draw(finite)
    lower, upper = min(a, b), max(a, b)
    t = draw(st.floats(min_value=0.0, max_value=1.0))
    return lower, upper, min(max(lower + t * (upper - lower), lower), upper)


def _lines(relaxation, lower: float, upper: float, x: float) -> tuple[float, float]:  # noqa: ANN001
    lb = torch.tensor([lower], dtype=torch.float64)
    ub = torch.tensor([upper], dtype=torch.float64)
    ls, lo, us, uo = relaxation.coefficients(lb, ub).tensors
    return float(ls * x + lo), float(us * x + uo)


@given(index=st.integers(min_value=0, max_value=10_000), point=box_and_point())
def test_every_result_encloses_relu(index: int, point: tuple[float, float, float]) -> None:
    results = _found().results
    result = results[index % len(results)]
    lower, upper, x = point
    low, up = _lines(result.relaxation, lower, upper, x)
    tol = 1e-9 * (1 + abs(lower) + abs(upper))
    assert low <= max(x, 0.0) + tol, (result.name, point)
    assert up >= max(x, 0.0) - tol, (result.name, point)


@given(index=st.integers(min_value=0, max_value=10_000), point=box_and_point())
def test_claimed_per_case_order_holds(index: int, point: tuple[float, float, float]) -> None:
    import relaxlab

    found = _found()
    pairs = [(r, name, t) for r in found.results for name, t in r.relations.items()]
    result, name, tightness = pairs[index % len(pairs)]
    lower, upper, x = point
    verdict = dict(tightness.cases)[str(classify(lower, upper))]
    a_low, a_up = _lines(result.relaxation, lower, upper, x)
    b_low, b_up = _lines(relaxlab.get_relaxation(name), lower, upper, x)
    tol = 1e-8 * (1 + abs(lower) + abs(upper) + abs(a_low) + abs(a_up))
    if verdict in ("tighter", "equal"):
        assert a_low >= b_low - tol and a_up <= b_up + tol, (result.name, name, point)
    if verdict in ("looser", "equal"):
        assert a_low <= b_low + tol and a_up >= b_up - tol, (result.name, name, point)
