"""Public test helpers for plugin authors: Hypothesis strategies and conformance checks.

In a plugin's own test suite::

    from relaxlab.testing import assert_relaxation_sound

    def test_my_relaxation_is_sound():
        assert_relaxation_sound(MY_RELAXATION)
"""

from __future__ import annotations

from relaxlab.testing.conformance import assert_relaxation_sound, find_unsound_example
from relaxlab.testing.strategies import case_bounds, parameter_values, preactivation_bounds

__all__ = [
    "assert_relaxation_sound",
    "find_unsound_example",
    "case_bounds",
    "preactivation_bounds",
    "parameter_values",
]
