"""Example third-party plugin: the 'example-Half-Slope' relaxation and the candidate line x/2.

A plugin imports only relaxlab's public API and has no side effects at import time.
"""

from __future__ import annotations

from collections.abc import Iterable

import relaxlab
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE
from relaxlab.core.relaxation import CaseBounds, Line, ReluRelaxation, line

#: ``y >= x/2``: sound below the ReLU for every case where x can be positive or negative.
HALF = line(0.5, 0.0)

HALF_SLOPE = ReluRelaxation(
    name="example-Half-Slope",
    negative=EXACT_NEGATIVE,
    unstable=CaseBounds(lower=HALF, upper=CHORD),
    positive=EXACT_POSITIVE,
    summary="CROWN's upper chord with a fixed lower slope 1/2: continuous at neither boundary.",
    reference="relaxlab example plugin",
)


@relaxlab.hookimpl
def relaxlab_relaxations() -> Iterable[ReluRelaxation]:
    return (HALF_SLOPE,)


@relaxlab.hookimpl
def relaxlab_candidate_lines() -> Iterable[tuple[str, str, Line]]:
    return (("x/2", "lower", HALF),)
