"""Soundness of a relaxation: proved over the whole domain, exact per point, sampled only for opaque lines.

:func:`check_soundness` (what the registry, ``relaxlab check`` and discovery use) runs the
prover of :mod:`relaxlab.properties.prover` (:func:`prove_soundness` gives its full
verdict): every stability case and side proved by interval branch and bound over all
``(l, u)`` and every parameter value in range, for the coefficients as computed in float32 and
float64, counterexamples re-verified exactly; a part it cannot decide is refused, never passed.
Lines with opaque callables cannot be proved and fall back to :func:`sampled_check`.

The exact check of given pairs (:func:`find_counterexample`), its :class:`Counterexample`, the probe
grid and the sampled check live in :mod:`relaxlab.properties.pointwise` and are public here too.
"""

from __future__ import annotations

import math

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.scaling import BOUNDED_DOMAIN
from relaxlab.properties import prover
from relaxlab.properties.pointwise import (
    Counterexample,
    Undecided,
    find_counterexample,
    parameter_probes,
    parameter_settings,
    probe_pairs,
    sampled_check,
)
from relaxlab.properties.prover import SoundnessVerdict

__all__ = [
    "Counterexample",
    "Undecided",
    "SoundnessVerdict",
    "check_soundness",
    "find_counterexample",
    "parameter_probes",
    "parameter_settings",
    "probe_pairs",
    "prove_soundness",
    "sampled_check",
]


def prove_soundness(
    relaxation: ReluRelaxation, *, budget: int | None = None, bound: float | None = None
) -> SoundnessVerdict:
    """The prover's full verdict (:func:`relaxlab.properties.prover.prove_soundness`).

    :param budget: boxes per part before a part is ``undecided`` (default: the prover's).
    :param bound: ``|l|, |u|`` domain where the lines are not scale invariant (default
        :data:`~relaxlab.core.scaling.BOUNDED_DOMAIN`, where the evaluator allows them).
    """
    return prover.prove_soundness(
        relaxation,
        budget=budget if budget is not None else prover.DEFAULT_BUDGET,
        bound=bound if bound is not None else prover.DEFAULT_BOUND,
    )


def check_soundness(
    relaxation: ReluRelaxation, *, max_magnitude: float = BOUNDED_DOMAIN
) -> Counterexample | None:
    """``None`` when ``relaxation`` is proved sound (or, for opaque lines, passes sampling); else why not.

    Runs :func:`prove_soundness` over ``|l|, |u| <= max_magnitude`` (all scales where the lines
    are scale invariant) and every parameter value in range. Returns its first confirmed
    :class:`Counterexample`; a part the prover could not decide is refused too, as an
    :class:`Undecided` (a ``Counterexample`` with ``side="undecided"`` and no point): not
    proved is not sound. Lines with opaque callables are sampled (:func:`sampled_check`).
    """
    verdict = prove_soundness(relaxation, bound=max_magnitude)
    if verdict.counterexample is not None:
        return verdict.counterexample
    for part in verdict.parts:
        if part.outcome == "undecided":
            return Undecided(
                relaxation.name,
                part.case,
                "undecided",
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                tuple(sorted(relaxation.parameters.items())),
                line=part.side,
                detail=part.note,
            )
    return None
