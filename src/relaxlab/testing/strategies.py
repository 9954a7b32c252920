"""Hypothesis strategies for relaxation tests.

They draw the hard corners often: bounds exactly 0, widths near 1e-7,
magnitudes up to 1e4, parameters at their extremes.
"""

from __future__ import annotations

from functools import partial

from hypothesis import strategies as st

from relaxlab.core.relaxation import ParamSpec, ReluRelaxation
from relaxlab.core.stability import Stability

#: Finite float64 without subnormals.
floats = partial(st.floats, allow_nan=False, allow_infinity=False, allow_subnormal=False)

_CORNERS = (0.0, 1e-7, 1e-4, 0.5, 1.0, 1e2, 1e4)


def _magnitude(max_magnitude: float) -> st.SearchStrategy[float]:
    corners = [c for c in _CORNERS if 0 < c <= max_magnitude]
    return st.one_of(st.sampled_from(corners), floats(min_value=1e-7, max_value=max_magnitude))


@st.composite
def case_bounds(draw: st.DrawFn, stability: Stability, max_magnitude: float = 1e4) -> tuple[float, float]:
    """``(l, u)`` in the given stability case (the convention of :mod:`relaxlab.core.stability`)."""
    width = draw(st.one_of(st.sampled_from([1e-7, 2e-7]), _magnitude(max_magnitude)))
    if stability is Stability.UNSTABLE:
        lower = -draw(_magnitude(max_magnitude))
        upper = draw(_magnitude(max_magnitude))
        return lower, upper
    if stability is Stability.NEGATIVE:
        upper = draw(st.one_of(st.just(0.0), st.builds(lambda m: -m, _magnitude(max_magnitude))))
        return upper - width, upper
    lower = draw(st.one_of(st.just(0.0), _magnitude(max_magnitude)))
    return lower, lower + width


@st.composite
def preactivation_bounds(draw: st.DrawFn, max_magnitude: float = 1e4) -> tuple[float, float]:
    """``(l, u)`` with ``l <= u`` from any stability case, corners included."""
    stability = draw(st.sampled_from(Stability))
    return draw(case_bounds(stability, max_magnitude))


def _parameter(spec: ParamSpec) -> st.SearchStrategy[float]:
    low = spec.minimum if spec.minimum is not None else -1e3
    high = spec.maximum if spec.maximum is not None else max(1e3, spec.default)
    inner = floats(min_value=low, max_value=high, exclude_min=spec.strict)
    extremes = [v for v in (low, high, spec.default) if not (spec.strict and v == low)]
    return st.one_of(st.sampled_from(extremes), inner)


@st.composite
def parameter_values(draw: st.DrawFn, relaxation: ReluRelaxation) -> ReluRelaxation:
    """The relaxation with admissible parameter values, extremes drawn often."""
    if not relaxation.params:
        return relaxation
    values = {spec.name: draw(_parameter(spec)) for spec in relaxation.params}
    return relaxation.with_params(**values)
