"""Properties of relaxations derived from their specs: soundness, continuity, sensitivity.

:func:`derive` gives the flags the paper uses (C: continuous, S: not sensitive)
with the reasons behind them; :func:`probe` measures the same properties
black-box. For every built-in both agree with the paper's flags (tests).
"""

from __future__ import annotations

import functools

from attrs import frozen

from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.properties.continuity import Discontinuity, derive_continuity, probe_continuity
from relaxlab.properties.sensitivity import SensitivityReason, derive_sensitivity, probe_sensitivity
from relaxlab.properties.soundness import Counterexample, check_soundness


@frozen
class Properties:
    """What relaxlab derives about one relaxation (at its current parameter values).

    :param continuous: the lines are continuous functions of ``(l, u)`` (✓C in the paper).
    :param sensitive: some slope varies, or some offset bends, within a piece (✗S in the paper).
    :param discontinuities: where the lines jump, with their source.
    :param sensitivity: why it is sensitive.
    :param counterexample: a soundness violation, if any.
    :param method: ``"derived"`` (from the spec) or ``"probed"`` (black-box measurements).
    """

    continuous: bool
    sensitive: bool
    discontinuities: tuple[Discontinuity, ...]
    sensitivity: tuple[SensitivityReason, ...]
    counterexample: Counterexample | None
    method: str

    @property
    def sound(self) -> bool:
        return self.counterexample is None

    @property
    def flags(self) -> str:
        """The paper's notation, e.g. ``✓C ✗S``."""
        return f"{'✓' if self.continuous else '✗'}C {'✗' if self.sensitive else '✓'}S"


@functools.lru_cache(maxsize=1024)
def derive(relaxation: ReluRelaxation) -> Properties:
    """Properties read off the declared expressions; opaque parts fall back to probing."""
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
        continuous=not discontinuities, sensitive=bool(sensitivity), discontinuities=tuple(discontinuities),
        sensitivity=tuple(sensitivity), counterexample=check_soundness(relaxation), method=method,
    )


@functools.lru_cache(maxsize=1024)
def probe(relaxation: ReluRelaxation) -> Properties:
    """The same properties measured black-box from :meth:`coefficients` only."""
    discontinuities = probe_continuity(relaxation)
    sensitivity = probe_sensitivity(relaxation)
    return Properties(
        continuous=not discontinuities, sensitive=bool(sensitivity), discontinuities=tuple(discontinuities),
        sensitivity=tuple(sensitivity), counterexample=check_soundness(relaxation), method="probed",
    )


__all__ = ["Properties", "derive", "probe", "check_soundness", "Counterexample", "Discontinuity",
           "SensitivityReason"]
