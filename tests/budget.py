"""Hypothesis example counts that follow the loaded profile (tests/conftest.py).

A test that needs fewer examples than the profile's default (a slow case) asks for its count in
the ``ci`` profile; any other profile scales it by the same factor, so ``explore`` searches harder
everywhere.
"""

from __future__ import annotations

from hypothesis import settings

#: ``max_examples`` of the ``ci`` profile, the counts below are relative to it.
CI_EXAMPLES = 60


def examples(ci_count: int) -> int:
    """``ci_count`` examples in the ``ci`` profile, scaled with the loaded profile's ``max_examples``."""
    return max(1, settings().max_examples * ci_count // CI_EXAMPLES)
