"""What the properties layer finds about a relaxation, as plain values.

:class:`Properties` is the answer of :func:`relaxlab.properties.derive` (and ``probe``);
:class:`Discontinuity` and :class:`SensitivityReason` are the reasons behind its flags. They
need attrs only, apart from the modules that compute them (torch, sympy, the engine), so that a
verdict read back from the verdict cache (:mod:`relaxlab.properties.cache`) costs no heavy import.
"""

from __future__ import annotations

from attrs import frozen

from relaxlab.properties.soundness import Counterexample


@frozen
class Discontinuity:
    """A place where the relaxation's lines jump."""

    source: str
    lower: float
    upper: float
    jump: float

    def __str__(self) -> str:
        return f"{self.source} near l={self.lower:.4g}, u={self.upper:.4g} (jump {self.jump:.3g})"


@frozen
class SensitivityReason:
    """Why a line makes the relaxation sensitive."""

    case: str
    side: str  # "lower" or "upper"
    part: str  # "slope" or "offset"
    detail: str

    def __str__(self) -> str:
        return f"{self.case} {self.side} {self.part}: {self.detail}"


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
