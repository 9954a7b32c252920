"""Properties of relaxations derived from their specs: soundness, continuity, sensitivity.

:func:`derive` gives the flags the paper uses (C: continuous, S: not sensitive)
with the reasons behind them; :func:`probe` measures the same properties
black-box. For every built-in both agree with the paper's flags (tests).

:func:`derive` and :func:`check_soundness_cached` (the check the facade's registry runs) keep
their answers in the verdict cache (:mod:`relaxlab.properties.cache`), keyed by the spec's
content: a spec seen before is answered without running the prover again, a new or changed one
runs exactly what :func:`check_soundness` and the derivations run. The modules that compute
(torch, sympy, the engine) load only then.
"""

from __future__ import annotations

import functools

from attrs import evolve

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.properties import cache, prover, soundness
from relaxlab.properties.findings import Discontinuity, Properties, SensitivityReason
from relaxlab.properties.soundness import Counterexample, Undecided, check_soundness

#: The classes a cached finding may hold.
FINDINGS = (Properties, Counterexample, Undecided, Discontinuity, SensitivityReason)

#: The check :func:`check_soundness_cached` runs and writes the verdicts of: bound here, when relaxlab is
#: imported, so that replacing ``relaxlab.properties.check_soundness`` later (a plugin at import) does not
#: change what is judged or cached.
_PROVER_CHECK = soundness.check_soundness


def check_soundness_cached(relaxation: ReluRelaxation) -> Counterexample | None:
    """:func:`check_soundness`, its verdict kept in the verdict cache (the prover runs on a miss).

    A verdict from the cache (or about to be written to it) is believed only if it holds up here: a
    "sound" only if this process's prover proves every part again (:func:`prover.parts_proved`,
    no tensors), a counterexample only if the lines violate at its point, an undecided never (it is
    recomputed). The file is untrusted input (docs/reliability.md, *The verdict cache*).
    """
    return cache.remember(relaxation, "soundness", _PROVER_CHECK, FINDINGS, verify=_holds)


def _holds(relaxation: ReluRelaxation, verdict: Counterexample | None) -> bool:
    if verdict is None:
        return prover.parts_proved(relaxation)
    if isinstance(verdict, Undecided) or verdict.relaxation != relaxation.name:
        return False
    setting = relaxation.with_params(**dict(verdict.params)) if relaxation.params else relaxation
    try:
        return (
            soundness.find_counterexample(setting, [verdict.lower], [verdict.upper], verdict.arithmetic)
            is not None
        )
    except ValueError:  # not a point at all (l > u, a foreign arithmetic)
        return False


@functools.lru_cache(maxsize=1024)
def derive(relaxation: ReluRelaxation) -> Properties:
    """Properties read off the declared expressions; opaque parts fall back to probing.

    The soundness finding is always the checked one (:func:`check_soundness_cached`), whatever the
    cache holds for the derivation.
    """
    found = cache.remember(relaxation, "derive", _derive, FINDINGS)
    return evolve(found, counterexample=check_soundness_cached(relaxation))


def _derive(relaxation: ReluRelaxation) -> Properties:
    from relaxlab.properties.continuity import derive_continuity, probe_continuity
    from relaxlab.properties.sensitivity import derive_sensitivity, probe_sensitivity

    sensitivity = derive_sensitivity(relaxation)
    method = "derived"
    if sensitivity is None:  # opaque callables: only measurement can tell
        sensitivity = probe_sensitivity(relaxation)
        method = "probed"
    discontinuities = derive_continuity(relaxation)
    if any(expr.is_opaque() for expr in relaxation.expressions()):
        discontinuities = discontinuities + probe_continuity(relaxation)
        method = "probed"
    return Properties(
        continuous=not discontinuities,
        sensitive=bool(sensitivity),
        discontinuities=tuple(discontinuities),
        sensitivity=tuple(sensitivity),
        counterexample=check_soundness_cached(relaxation),
        method=method,
    )


@functools.lru_cache(maxsize=1024)
def probe(relaxation: ReluRelaxation) -> Properties:
    """The same properties measured black-box from :meth:`coefficients` only."""
    from relaxlab.properties.continuity import probe_continuity
    from relaxlab.properties.sensitivity import probe_sensitivity

    discontinuities = probe_continuity(relaxation)
    sensitivity = probe_sensitivity(relaxation)
    return Properties(
        continuous=not discontinuities,
        sensitive=bool(sensitivity),
        discontinuities=tuple(discontinuities),
        sensitivity=tuple(sensitivity),
        counterexample=check_soundness(relaxation),
        method="probed",
    )


__all__ = [
    "Properties",
    "derive",
    "probe",
    "check_soundness",
    "check_soundness_cached",
    "Counterexample",
    "Discontinuity",
    "SensitivityReason",
]
