"""ReLU relaxations declared as data.

A :class:`ReluRelaxation` gives, for each stability case (see
:mod:`relaxlab.core.stability`), a lower and an upper :class:`Line`
``slope(l, u)·x + offset(l, u)`` whose coefficients are expressions of
:mod:`relaxlab.core.expr`. It also says how intermediate bounds are obtained
(``"backsub"`` or ``"interval"``) and may widen ``[l, u]`` before the ReLU
(:class:`BoundsTransform`). Parameters (``gamma``, ``omega``, ``F``) are
declared with :class:`ParamSpec` and set with :meth:`ReluRelaxation.with_params`.

Shapes: every tensor method takes ``lower``/``upper`` of any shape and returns
tensors of that shape, dtype and device.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from attrs import evolve, field, frozen, validators

from relaxlab.core import evaluate
from relaxlab.core.convert import as_tuple
from relaxlab.core.expr import BOUND_VARIABLES, Const, Expr, ExprLike, Opaque, as_expr
from relaxlab.core.stability import Stability

if TYPE_CHECKING:
    from torch import Tensor

    from relaxlab.core.relaxer import RelaxationTensors

#: Readable names: letters, digits, spaces and ``-_().,+=/`` (``CROWN-IBP (R)``, ``LooseIBP-DC``).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _\-().,+=/λκ·]*$"

#: How the bounds of every ReLU's input are obtained (docs/engine.md, "Propagation").
INTERMEDIATE_MODES = ("backsub", "interval", "forward")
#: How the final specification is bounded.
FINAL_MODES = ("backsub", "forward")
#: Unbounded parameter ranges are proved (and per-element values allowed) within ``[-PARAM_CLIP, PARAM_CLIP]``.
PARAM_CLIP = 1e3


def _format_coefficient(expr: Expr) -> str:
    text = str(expr)
    if text.startswith("(") and text.endswith(")"):
        return text
    return f"({text})" if any(op in text for op in (" + ", " - ", " if ")) else text


@frozen
class Line:
    """The line ``slope(l, u)·x + offset(l, u)``."""

    slope: Expr = field(converter=as_expr)
    offset: Expr = field(converter=as_expr)

    def evaluate(self, env: Mapping[str, Any]) -> tuple[Any, Any]:
        memo: dict[int, Any] = {}  # a name in both (λ) is evaluated once
        return self.slope.evaluate(env, memo), self.offset.evaluate(env, memo)

    def expressions(self) -> tuple[Expr, Expr]:
        return (self.slope, self.offset)

    def substitute(self, mapping: Mapping[str, Expr]) -> Line:
        return Line(self.slope.substitute(mapping), self.offset.substitute(mapping))

    def __str__(self) -> str:
        if self.slope.is_zero():
            return str(self.offset)
        slope = (
            ""
            if self.slope.is_one()
            else ("-" if self.slope == Const(-1.0) else _format_coefficient(self.slope))
        )
        # a slope written as a word (a parameter's name) is kept apart from x: alpha·x, not alphax
        head = f"{slope}·x" if len(slope) > 1 and slope[-1].isalpha() and slope[-1].isascii() else f"{slope}x"
        if self.offset.is_zero():
            return head
        offset = str(self.offset)
        if offset.startswith("-") and " " not in offset:
            return f"{head} - {offset[1:]}"
        return f"{head} + {_format_coefficient(self.offset)}"


def line(slope: ExprLike, offset: ExprLike = 0.0) -> Line:
    """Shorthand for :class:`Line`."""
    return Line(as_expr(slope), as_expr(offset))


@frozen
class CaseBounds:
    """The lower and upper line used for one stability case."""

    lower: Line
    upper: Line

    def lines(self) -> tuple[Line, Line]:
        return (self.lower, self.upper)

    def __str__(self) -> str:
        if self.lower == self.upper:
            return f"y = {self.lower}"
        return f"{self.lower} <= y <= {self.upper}"


@frozen
class BoundsTransform:
    """Replace ``[l, u]`` by ``[lower(l, u), upper(l, u)]`` before the ReLU.

    It must widen: ``lower(l, u) <= l`` and ``upper(l, u) >= u`` (checked by
    :func:`relaxlab.properties.soundness.check_soundness`).
    """

    lower: Expr = field(converter=as_expr)
    upper: Expr = field(converter=as_expr)

    def __str__(self) -> str:
        return f"[{self.lower}, {self.upper}]"


@frozen
class ParamSpec:
    """A parameter of a relaxation with its default and admissible range.

    :param name: the name used by :class:`~relaxlab.core.expr.Param` nodes.
    :param default: the default value.
    :param minimum: smallest admissible value (``None``: unbounded).
    :param strict: whether ``minimum`` itself is excluded (``F > 0``).
    :param description: one line for listings.
    :param start: where optimisation starts (:mod:`relaxlab.engine.optimise`): an expression of the
        ReLU's bounds ``l`` and ``u``, evaluated per neuron and clipped into the range (``None``: the
        parameter's value). Plain evaluation always uses the value.
    """

    name: str
    default: float
    minimum: float | None = None
    strict: bool = False
    maximum: float | None = None
    description: str = ""
    start: Expr | None = field(default=None, validator=lambda self, _, value: self._check_start(value))

    def _check_start(self, value: Expr | None) -> None:
        if value is not None and not value.variables() <= {"l", "u"}:
            raise ValueError(
                f"parameter {self.name}: start may use only l and u, "
                f"not {sorted(value.variables() - {'l', 'u'})}"
            )

    def validate(self, value: float, relaxation: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{relaxation}: parameter {self.name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{relaxation}: parameter {self.name} must be finite, got {value!r}")
        if self.minimum is not None:
            if (self.strict and value <= self.minimum) or value < self.minimum:
                op = ">" if self.strict else ">="
                raise ValueError(
                    f"{relaxation}: parameter {self.name} must be {op} {_fmt(self.minimum)}, got {_fmt(value)}"
                )
        if self.maximum is not None and value > self.maximum:
            raise ValueError(
                f"{relaxation}: parameter {self.name} must be <= {_fmt(self.maximum)}, got {_fmt(value)}"
            )
        return value

    def proved_range(self, current: float, clip: float = PARAM_CLIP) -> tuple[float, float]:
        """``(lo, hi)``: the values the prover covers for this parameter when its setting is ``current``.

        The declared range, with an unbounded end clipped to ``±clip`` (widened to contain the
        default and ``current``); ``lo`` itself is excluded when the minimum is strict.
        """
        lo = self.minimum if self.minimum is not None else min(-clip, self.default, current)
        hi = self.maximum if self.maximum is not None else max(clip, self.default, current, lo)
        return float(lo), float(hi)


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _check_name(instance: object, attribute: object, value: str) -> None:
    if not re.match(NAME_PATTERN, value):
        raise ValueError(
            f"relaxation name {value!r} is not allowed: use letters, digits, spaces and -_().,+=/"
        )


def _full_values(values: Any, self_: ReluRelaxation) -> tuple[tuple[str, float], ...]:
    """Current values with the defaults filled in, sorted: equal settings compare equal however given.

    Unknown names are kept (and refused by the checks after initialisation, with the message).
    """
    current = dict(values)
    full = {p.name: current.get(p.name, p.default) for p in self_.params}
    full.update({k: v for k, v in current.items() if k not in full})
    # numbers as floats; anything else stays as given, for the checks to name it
    return tuple(
        sorted(
            (k, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in full.items()
        )
    )


@frozen(kw_only=True, cache_hash=True)
class ReluRelaxation:
    """A ReLU relaxation: one :class:`CaseBounds` per stability case.

    :param name: the name the literature uses (``CROWN-0-C``); look-up ignores case, spaces and punctuation.
    :param negative: lines for ``u <= 0``.
    :param unstable: lines for ``l < 0 < u``.
    :param positive: lines for ``l >= 0`` (and ``u > 0``).
    :param intermediate: how the input bounds of every ReLU are obtained: ``"backsub"`` (full
        backsubstitution to the input box), ``"interval"`` (interval arithmetic, the "(R)"
        variants) or ``"forward"`` (forward affine forms of the input with a box part: the hybrid
        zonotope of the paper's code, linear bound propagation).
    :param final: how the final specification is bounded: ``"backsub"`` or ``"forward"`` (the
        rows applied to the forward forms after the last ReLUs). A relaxation whose lines all
        have slope 0 (IBP) is interval arithmetic either way.
    :param transform: optional widening of ``[l, u]`` before the ReLU; lines and the
        stability case are then evaluated on the widened bounds.
    :param params: declared parameters.
    :param values: current parameter values as ``(name, value)`` pairs (defaults fill the rest).
    :param summary: one line for listings and docs.
    :param reference: where it comes from (paper, section).
    """

    name: str = field(validator=_check_name)
    negative: CaseBounds
    unstable: CaseBounds
    positive: CaseBounds
    intermediate: str = field(default="backsub", validator=validators.in_(INTERMEDIATE_MODES))
    final: str = field(default="backsub", validator=validators.in_(FINAL_MODES))
    transform: BoundsTransform | None = None
    params: tuple[ParamSpec, ...] = field(default=(), converter=as_tuple)
    values: tuple[tuple[str, float], ...] = field(
        # mypy's attrs plugin supports no attrs.Converter, and the stub's takes_self overload wants a
        # converter that accepts any attrs instance as self, not this class.
        default=(),
        converter=attrs.Converter(_full_values, takes_self=True),  # type: ignore[misc, call-overload]
    )
    summary: str = field(default="", eq=False)
    reference: str = field(default="", eq=False)

    def __attrs_post_init__(self) -> None:
        declared = {p.name for p in self.params}
        if len(declared) != len(self.params):
            raise ValueError(f"{self.name}: a parameter is declared twice")
        used = set().union(*(e.variables() for e in self.expressions())) - BOUND_VARIABLES
        undeclared = used - declared
        if undeclared:
            raise ValueError(
                f"{self.name}: expressions use undeclared parameter(s) {sorted(undeclared)}; "
                "declare them in params=(ParamSpec(...),)"
            )
        specs = {p.name: p for p in self.params}
        for key, value in self.values:
            if key not in specs:
                raise ValueError(f"{self.name}: unknown parameter {key!r}; it has {sorted(specs) or 'none'}")
            specs[key].validate(value, self.name)
        for spec in self.params:
            spec.validate(spec.default, self.name)

    # -- structure ----------------------------------------------------------
    def case(self, stability: Stability) -> CaseBounds:
        """The lines for one stability case."""
        return {
            Stability.NEGATIVE: self.negative,
            Stability.UNSTABLE: self.unstable,
            Stability.POSITIVE: self.positive,
        }[stability]

    def cases(self) -> tuple[tuple[Stability, CaseBounds], ...]:
        return tuple((s, self.case(s)) for s in Stability)

    def expressions(self) -> Iterator[Expr]:
        """Every coefficient expression, the transform's included."""
        for _, case in self.cases():
            for ln in case.lines():
                yield from ln.expressions()
        if self.transform is not None:
            yield self.transform.lower
            yield self.transform.upper

    def effective_case(self, stability: Stability) -> CaseBounds:
        """The lines of a case as functions of the *raw* ``(l, u)``, transform substituted."""
        case = self.case(stability)
        if self.transform is None:
            return case
        mapping = {"l": self.transform.lower, "u": self.transform.upper}
        return CaseBounds(case.lower.substitute(mapping), case.upper.substitute(mapping))

    @property
    def is_interval(self) -> bool:
        """Every line of every case has slope identically 0.

        Backsubstitution then stops at every ReLU and equals interval
        arithmetic, so the engine may take its interval fast path.
        """
        return evaluate.plan_of(self).is_interval

    @property
    def parameters(self) -> dict[str, float]:
        """Current parameter values, defaults filled in."""
        return dict(self.values)

    @property
    def label(self) -> str:
        """The name with non-default parameter values, e.g. ``LooseIBP-C(omega=0.5)``."""
        current = dict(self.values)
        changed = [
            f"{p.name}={_fmt(current[p.name])}"
            for p in self.params
            if current.get(p.name, p.default) != p.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def spec_key(self) -> tuple[Any, ...]:
        """Everything but the name and docs: two relaxations with equal keys are aliases."""
        return (
            self.negative,
            self.unstable,
            self.positive,
            self.intermediate,
            self.final,
            self.transform,
            self.params,
            tuple(sorted(self.parameters.items())),
        )

    def canonical(self) -> str | None:
        """The spec as canonical JSON text, or ``None`` when part of it is code rather than data.

        It holds everything that decides what the relaxation computes and how its findings read:
        the name, the lines of every case, the intermediate mode, the transform, the declared
        parameters and their values (not ``summary`` or ``reference``). Equal text means an
        equal spec; the verdict cache (:mod:`relaxlab.properties.cache`) keys on its hash. A
        spec with an :class:`~relaxlab.core.expr.Opaque` callable, or with a class from outside
        this package (a plugin's own ``Expr`` or ``Line`` subclass), has no canonical form:
        its behaviour is code that the text cannot capture.
        """
        try:
            data = _canonical_data(self)
        except _NotData:
            return None
        return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def with_params(self, **values: float) -> ReluRelaxation:
        """A copy with some parameters set (validated: a bad value raises ``ValueError``)."""
        if not self.params and values:
            raise ValueError(f"{self.name} has no parameters, got {sorted(values)}")
        return evolve(self, values={**dict(self.values), **values})

    # -- evaluation ---------------------------------------------------------
    def transform_bounds(
        self, lower: Tensor, upper: Tensor, values: Mapping[str, Tensor | float] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The bounds the lines are evaluated on (``[l, u]`` unless a transform widens them).

        :param values: per-element parameter values (see :func:`relaxlab.core.evaluate.coefficients`).
        """
        return evaluate.transform_bounds(self, lower, upper, values)

    def coefficients(
        self, lower: Tensor, upper: Tensor, values: Mapping[str, Tensor | float] | None = None
    ) -> RelaxationTensors:
        """The lines at raw pre-activation bounds (see :func:`relaxlab.core.evaluate.coefficients`).

        :param values: parameter names to per-element values (tensors broadcastable to ``lower``)
            overriding this spec's; gradients flow to them.
        """
        return evaluate.coefficients(self, lower, upper, values)

    def __str__(self) -> str:
        return self.label


class _NotData(Exception):
    """A value whose behaviour is code, not data (see :meth:`ReluRelaxation.canonical`)."""


def _canonical_data(value: object) -> object:
    """JSON-ready nested lists: ``[class name, {field: value}]`` for the spec's own attrs classes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return [_canonical_data(item) for item in value]
    cls = type(value)
    if cls.__module__ not in (Expr.__module__, __name__) or cls is Opaque or not attrs.has(cls):
        raise _NotData(cls.__qualname__)
    return [
        cls.__qualname__,
        {f.name: _canonical_data(getattr(value, f.name)) for f in attrs.fields(cls) if f.eq},
    ]
