"""Soundness at given points: the exact check of one pair ``(l, u)``, its counterexamples, the probe grid.

For one pair ``(l, u)`` the check is exact: ``relu(x) - line(x)`` is piecewise
linear in ``x`` with its only kink at 0, so its extremes on ``[l, u]`` are at
``l``, ``u`` or ``0``. A relaxation is unsound when some line, with the coefficients the
library computes in float32 or float64 (:func:`find_counterexample` takes the arithmetic),
is on the wrong side of the ReLU at one of those points beyond the line tolerance of
:mod:`relaxlab.core.rounding` (``256·unit·(|l| + |u|)`` plus a tiny absolute term; the gap is
computed exactly). A widening transform must really widen (``l' <= l``, ``u' >= u``), or
interval intermediate bounds would not contain the ReLU's range.

The prover (:mod:`relaxlab.properties.prover`) confirms its counterexamples here;
:func:`sampled_check` is all there is for opaque lines: the exact check on a deterministic grid of
hard pairs (exact zeros, widths near 1e-7, magnitudes up to 1e8) at the extremes of every
parameter. :mod:`relaxlab.properties.soundness` is the public face of both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

from attrs import frozen

from relaxlab.core.relaxation import ParamSpec, ReluRelaxation
from relaxlab.core.rounding import FLOAT64, arithmetic
from relaxlab.core.scaling import BOUNDED_DOMAIN
from relaxlab.core.stability import classify

if TYPE_CHECKING:  # torch loads with the first check, not with the verdict classes
    import torch


@frozen
class Counterexample:
    """A concrete point where a relaxation's line is on the wrong side of the ReLU."""

    relaxation: str
    case: str
    side: str  # "lower", "upper" or "transform"
    lower: float
    upper: float
    x: float
    line_value: float
    relu_value: float
    params: tuple[tuple[str, float], ...] = ()
    #: The arithmetic the lines were evaluated in (``"float32"`` or ``"float64"``).
    arithmetic: str = "float64"

    def __str__(self) -> str:
        where = f"case {self.case}, l={self.lower!r}, u={self.upper!r}"
        if self.params:
            where += ", " + ", ".join(f"{k}={v!r}" for k, v in self.params)
        if self.arithmetic != FLOAT64.name:
            where += f" (in {self.arithmetic})"
        if self.side == "transform":
            return f"{where}: the transform narrows the bounds to [{self.line_value!r}, {self.relu_value!r}]"
        op = ">" if self.side == "lower" else "<"
        return (
            f"{where}, x={self.x!r}: {self.side} line {self.line_value!r} {op} relu(x) = {self.relu_value!r}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "relaxation": self.relaxation,
            "case": self.case,
            "side": self.side,
            "l": self.lower,
            "u": self.upper,
            "x": self.x,
            "line_value": self.line_value,
            "relu_value": self.relu_value,
            "params": dict(self.params),
            "arithmetic": self.arithmetic,
        }


@frozen
class Undecided(Counterexample):
    """A refusal without a point: the prover could not decide one part (``side`` is ``"undecided"``).

    :param line: the side of the part left open (``"lower"``, ``"upper"`` or ``"transform"``).
    :param detail: why (budget spent, the open box; or no normal form).
    """

    line: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return f"case {self.case}, {self.line} line: soundness not proved (undecided: {self.detail})"


def find_counterexample(
    relaxation: ReluRelaxation,
    lower: Sequence[float] | torch.Tensor,
    upper: Sequence[float] | torch.Tensor,
    dtype: str | torch.dtype = "float64",
) -> Counterexample | None:
    """The first violation over the given pairs ``(l, u)`` (``l <= u``), or ``None``. Exact per pair.

    :param dtype: the arithmetic the relaxation is evaluated in (``"float32"`` or ``"float64"``, or
        the torch dtype); the pairs are rounded to it first. A violation is a gap beyond the line
        tolerance of :mod:`relaxlab.core.rounding`, confirmed in exact arithmetic.
    """
    import torch

    kind = arithmetic(str(dtype))
    lb64 = torch.as_tensor(lower, dtype=torch.float64).reshape(-1)
    ub64 = torch.as_tensor(upper, dtype=torch.float64).reshape(-1)
    if bool((lb64 > ub64).any()):
        raise ValueError("find_counterexample needs l <= u for every pair")
    working = getattr(torch, kind.name)
    lb, ub = lb64.to(working), ub64.to(working)
    params = tuple(sorted(relaxation.parameters.items()))
    # screened in float64 (the gap as computed has rounding of its own), then confirmed exactly
    lb64, ub64 = lb.double(), ub.double()
    tol = kind.relative * (lb64.abs() + ub64.abs()) + kind.absolute
    tl, tu = (t.double() for t in relaxation.transform_bounds(lb, ub))

    def case(i: int) -> str:
        return str(classify(float(tl[i]), float(tu[i])))

    narrowed = ~((tl <= lb64 + 2 * tol) & (tu >= ub64 - 2 * tol))
    for i in narrowed.nonzero().flatten().tolist():
        slack = kind.exact_tolerance(Fraction(float(lb64[i])), Fraction(float(ub64[i])))
        if not (math.isfinite(float(tl[i])) and math.isfinite(float(tu[i]))) or (
            Fraction(float(tl[i])) - Fraction(float(lb64[i])) > slack
            or Fraction(float(ub64[i])) - Fraction(float(tu[i])) > slack
        ):
            return Counterexample(
                relaxation.name,
                case(i),
                "transform",
                float(lb64[i]),
                float(ub64[i]),
                float("nan"),
                float(tl[i]),
                float(tu[i]),
                params,
                kind.name,
            )
    ls, lo, us, uo = (c.double() for c in relaxation.coefficients(lb, ub).tensors)
    zero = torch.zeros_like(lb64)
    points = (lb64, ub64, torch.where((lb64 < 0) & (ub64 > 0), zero, lb64))
    for x in points:
        relu = x.clamp_min(0)
        for side, slope, offset in (("lower", ls, lo), ("upper", us, uo)):
            value = slope * x + offset
            gap = value - relu if side == "lower" else relu - value
            for i in (~(gap <= tol / 2)).nonzero().flatten().tolist():  # NaN counts as a violation
                exact = _exact_gap(side, float(slope[i]), float(offset[i]), float(x[i]))
                slack = kind.exact_tolerance(Fraction(float(lb64[i])), Fraction(float(ub64[i])))
                if exact is None or exact > slack:
                    return Counterexample(
                        relaxation.name,
                        case(i),
                        side,
                        float(lb64[i]),
                        float(ub64[i]),
                        float(x[i]),
                        float(value[i]),
                        float(relu[i]),
                        params,
                        kind.name,
                    )
    return None


def _exact_gap(side: str, slope: float, offset: float, x: float) -> Fraction | None:
    """How far the line is on the wrong side of ``relu(x)``, exactly; ``None`` for a non-finite coefficient."""
    if not (math.isfinite(slope) and math.isfinite(offset)):
        return None
    value = Fraction(slope) * Fraction(x) + Fraction(offset)
    relu = max(Fraction(x), Fraction(0))
    return value - relu if side == "lower" else relu - value


def probe_pairs(max_magnitude: float = 1e4) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic grid of hard ``(l, u)`` pairs covering all three cases.

    Exact zeros on either side, widths near 1e-7, magnitudes from 1e-7 to ``max_magnitude`` (never
    beyond), and pairs straddling 0 very unevenly (where ``λ`` is near 0 or 1).
    """
    import torch

    magnitudes = [1e-7, 1e-4, 0.01, 0.3, 1.0, 2.0, 7.5, 100.0, max_magnitude]
    values = sorted({0.0, *magnitudes, *(-m for m in magnitudes)})
    pairs = [(a, b) for a, b in itertools.product(values, values) if a <= b]
    for centre in (-max_magnitude, -1.0, -1e-7, 0.0, 1e-7, 1.0, max_magnitude):
        for width in (1e-7, 2e-7):
            pairs.append((centre - width / 2, centre + width / 2))
            pairs.append((centre, centre + width))
            pairs.append((centre - width, centre))
    # all within |l|, |u| <= max_magnitude: where relaxations that are not scale invariant are proved and evaluated
    lower, upper = zip(*(p for p in pairs if max(abs(p[0]), abs(p[1])) <= max_magnitude), strict=True)
    return torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64)


def parameter_probes(spec: ParamSpec) -> list[float]:
    """Default, extremes and a few magnitudes of one parameter, all admissible."""
    low = spec.minimum if spec.minimum is not None else -1e3
    candidates = [spec.default, 1e-3, 0.1, 1.0, 10.0, 1e3]
    if spec.minimum is not None:
        candidates.append(spec.minimum if not spec.strict else spec.minimum + 1e-6)
    if spec.maximum is not None:
        candidates.append(spec.maximum)
    admissible = []
    for value in candidates:
        if spec.minimum is not None and (value < low or (spec.strict and value <= low)):
            continue
        if spec.maximum is not None and value > spec.maximum:
            continue
        admissible.append(float(value))
    return sorted(set(admissible))


def parameter_settings(relaxation: ReluRelaxation) -> Iterable[ReluRelaxation]:
    """The relaxation at its current values and at every combination of parameter probes."""
    yield relaxation
    if not relaxation.params:
        return
    names = [p.name for p in relaxation.params]
    for combination in itertools.product(*(parameter_probes(p) for p in relaxation.params)):
        yield relaxation.with_params(**dict(zip(names, combination, strict=True)))


def sampled_check(
    relaxation: ReluRelaxation, *, max_magnitude: float = BOUNDED_DOMAIN
) -> Counterexample | None:
    """The sampled check: exact on the probe grid, at every parameter probe; the first violation or ``None``.

    Only as good as its samples (a violation confined to a window of ``u`` or of a parameter
    between probes passes); :func:`check_soundness` uses it only for opaque lines.
    """
    lower, upper = probe_pairs(max_magnitude)
    for setting in parameter_settings(relaxation):
        found = find_counterexample(setting, lower, upper)
        if found is not None:
            return found
    return None
