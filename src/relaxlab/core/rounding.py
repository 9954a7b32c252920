"""Floating point as the evaluator computes: the two arithmetics, their rounding, and the tolerance of a line.

Relaxations are evaluated in float32 or float64 (:mod:`relaxlab.core.evaluate`), never in the
reals. This module names what that means, once, for the prover (which proves the lines *as
computed* in each of the two) and the evaluator (which refuses bounds outside what was proved):

- :class:`Arithmetic` — one floating-point format: its unit roundoff ``2**-p`` (round to nearest:
  each operation's result is the exact result times ``1 + δ`` with ``|δ| <= unit``, outside the
  subnormal range), the division guard of :class:`~relaxlab.core.expr.Div` (``sqrt(tiny)``), the
  largest finite value, and the tolerance of a line;
- :data:`FLOAT32`, :data:`FLOAT64`, :data:`ARITHMETICS`;
- the rounding of a Python number to float32 (nearest, up, down) without torch.

**The tolerance of a line.** A line ``a·x + b`` computed in arithmetic ``D`` at bounds ``(l, u)``
is *sound within tolerance* when, for every real ``x`` in ``[l, u]``,
``a·x + b <= relu(x) + tol`` (a lower line) or ``a·x + b >= relu(x) - tol`` (an upper line), with

    ``tol = D.relative·(|l| + |u|) + D.absolute``,
    ``relative = 256·unit`` (1.5e-5 in float32, 2.8e-14 in float64),
    ``absolute = 2**-60`` (8.7e-19) in float32, ``2**-500`` (3.1e-151) in float64.

Rounding the coefficients costs a few units of roundoff relative to ``|l| + |u|``; the factor 256
leaves room for the prover's enclosures. The absolute term covers the division guard
(``sqrt(tiny)``, 1.1e-19 in float32), below which :class:`~relaxlab.core.expr.Div` does not divide
by the true denominator. Nothing else is tolerated: an offset of 5e-10 where the ReLU is 0, at
bounds of magnitude 1, is a violation in both arithmetics.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from attrs import frozen

_FLOAT32_MAX = 3.4028234663852886e38


@frozen
class Arithmetic:
    """One floating-point format as the evaluator uses it.

    :param name: ``"float32"`` or ``"float64"`` (a torch dtype's name).
    :param unit: unit roundoff: a correctly rounded result is ``r·(1 + δ)``, ``|δ| <= unit``.
    :param guard: :class:`~relaxlab.core.expr.Div`'s smallest denominator magnitude, ``sqrt(tiny)``.
    :param largest: the largest finite value.
    :param absolute: the absolute term of the line tolerance.
    """

    name: str
    unit: float
    guard: float
    largest: float
    absolute: float

    @property
    def relative(self) -> float:
        """The relative term of the line tolerance: 256 units of roundoff."""
        return 256.0 * self.unit

    def tolerance(self, lower: float, upper: float) -> float:
        """The tolerance of a line at bounds ``(lower, upper)``."""
        return self.relative * (abs(lower) + abs(upper)) + self.absolute

    def exact_tolerance(self, lower: Fraction, upper: Fraction) -> Fraction:
        """:meth:`tolerance` in exact arithmetic (for re-verifying a counterexample without rounding)."""
        return Fraction(self.relative) * (abs(lower) + abs(upper)) + Fraction(self.absolute)

    def round(self, value: float) -> float:
        """``value`` rounded to nearest in this format (how torch converts a Python number)."""
        return value if self.name == "float64" else round32(value)

    def __str__(self) -> str:
        return self.name


FLOAT32 = Arithmetic("float32", 2.0**-24, 1.0842021724855044e-19, _FLOAT32_MAX, 2.0**-60)
FLOAT64 = Arithmetic("float64", 2.0**-53, 1.4916681462400413e-154, 1.7976931348623157e308, 2.0**-500)
#: The arithmetics relaxations are evaluated (and proved) in.
ARITHMETICS = (FLOAT32, FLOAT64)


def arithmetic(name: str) -> Arithmetic:
    """The :class:`Arithmetic` of a dtype name (``"float32"``, ``"torch.float64"``)."""
    short = name.rsplit(".", 1)[-1]
    for candidate in ARITHMETICS:
        if candidate.name == short:
            return candidate
    raise ValueError(f"relaxations are evaluated in float32 or float64, not {name}")


def round32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float; overflow gives ±inf."""
    if not math.isfinite(value):
        return value
    if abs(value) >= _FLOAT32_MAX:
        # values beyond the largest float32 round to it up to half an ulp past it, else to infinity
        return math.copysign(_FLOAT32_MAX if abs(value) < _FLOAT32_MAX + 2.0**103 else math.inf, value)
    return struct.unpack("f", struct.pack("f", value))[0]


def round32_up(value: float) -> float:
    """The smallest float32 that is ``>= value`` (``value`` finite)."""
    nearest = round32(value)
    if nearest >= value:
        return nearest
    if nearest == -math.inf:
        return -_FLOAT32_MAX
    if nearest == 0.0:
        return 2.0**-149  # the smallest positive subnormal
    bits = struct.unpack("<i", struct.pack("<f", nearest))[0]
    return struct.unpack("<f", struct.pack("<i", bits + 1 if nearest > 0 else bits - 1))[0]


def round32_down(value: float) -> float:
    """The largest float32 that is ``<= value``."""
    return -round32_up(-value)
