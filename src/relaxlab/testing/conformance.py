"""The soundness check every relaxation, built-in or third-party, should pass.

:func:`assert_relaxation_sound` runs the exact end-point check of
:mod:`relaxlab.properties.soundness` on its deterministic grid of hard pairs,
then lets Hypothesis search for more ``(l, u)`` pairs and parameter values.
On failure it raises ``AssertionError`` with a concrete counterexample
``(case, l, u, x, line value, relu value)``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.properties.soundness import Counterexample, check_soundness, find_counterexample
from relaxlab.testing.strategies import parameter_values, preactivation_bounds


def find_unsound_example(relaxation: ReluRelaxation, max_examples: int = 300) -> Counterexample | None:
    """A counterexample found by the prover (:func:`check_soundness`) or by Hypothesis, or ``None``."""
    found = check_soundness(relaxation)
    if found is not None:
        return found
    return search_unsound_example(relaxation, max_examples=max_examples)


def search_unsound_example(relaxation: ReluRelaxation, max_examples: int = 300) -> Counterexample | None:
    """A counterexample Hypothesis finds among ``max_examples`` random parameter values and ``(l, u)`` pairs.

    Sampling only: ``None`` says nothing was found, not that the relaxation is sound.
    """
    failures: list[Counterexample] = []

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        setting=parameter_values(relaxation), pairs=st.lists(preactivation_bounds(), min_size=1, max_size=8)
    )
    def search(setting: ReluRelaxation, pairs: list[tuple[float, float]]) -> None:
        lower, upper = zip(*pairs, strict=True)
        counterexample = find_counterexample(setting, list(lower), list(upper))
        if counterexample is not None:
            failures.append(counterexample)
            raise AssertionError(str(counterexample))

    try:
        search()
    except AssertionError:
        return failures[-1]  # Hypothesis replays the shrunk example last
    return None


def assert_relaxation_sound(relaxation: ReluRelaxation, max_examples: int = 300) -> None:
    """Raise ``AssertionError`` with a counterexample unless ``relaxation`` is sound."""
    counterexample = find_unsound_example(relaxation, max_examples=max_examples)
    if counterexample is not None:
        raise AssertionError(f"{relaxation.label} is unsound: {counterexample}")
