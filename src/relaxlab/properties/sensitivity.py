"""Sensitivity of a relaxation: do its bounds stay polynomial of degree 1 in ``(l, u)``?

Judged piece by piece (DESIGN.md §1): where switches or floor/ceil split the
``(l, u)`` domain, a slope constant on each piece and an offset affine on each
piece keep the bounds of degree 1; a slope that varies with ``l, u`` inside a
piece (``λ``, ``κ``), or an offset that is not affine there, makes the
relaxation *sensitive* (Sec. 4.3 of the paper).

- :func:`derive_sensitivity` reads the declared expressions (transform
  substituted) with :meth:`~relaxlab.core.expr.Expr.degree`;
- :func:`probe_sensitivity` measures: first differences of slopes and second
  differences of offsets at interior points of each piece, black-box.

On architectures (the degree recurrences of Sec. 4.3 / App. J):

Sensitivity of a relaxation on an architecture: the degree recurrences of Sec. 4.3 / App. J.

Sensitivity (Sec. 4.3 of *On the Paradox of Certified Training*): shift the first-layer
weights by ``δ``; every neuron's bounds become functions of ``δ``. A neuron is in
``P_N(δ)`` (polynomials of degree ``<= N``) or ``R_N(δ)`` (ratios of two such); the
sensitivity of a relaxation is the ``N`` of the network outputs. This module derives it
for *any* relaxation from its spec, with the bookkeeping rules the paper uses:

- the first affine layer puts every neuron in ``P_1``;
- an affine layer keeps ``P_N``; it takes ``M`` neurons of ``R_N`` to ``R_{MN}``
  (``M`` the fan-in: the common denominator of ``M`` ratios);
- a ReLU turns a neuron ``x`` whose bounds ``(l, u)`` are in a class ``K`` into
  ``max over cases, sides and pieces of (class(slope(l, u)) · class(x), class(offset(l, u)))``
  — a line ``a(l,u)·x + b(l,u)`` is one substitution; an identically zero slope
  drops the ``x`` term (IBP stops there);
- the class of a coefficient ``f(l, u)``: written in lowest terms as ``p(l,u)/q(l,u)``
  (exactly, with sympy), with ``l, u`` in ``P_N`` it is ``P_{N·deg p}`` when ``q`` is
  constant, else ``R_{N·max(deg p, deg q)}``; with ``l, u`` in ``R_N`` it is
  ``R_{N(d_l + d_u)}`` where ``d_l``/``d_u`` are the largest powers of ``l``/``u`` in
  ``p`` or ``q`` (clear both denominators). ``λ = u/(u-l)`` is then ``R_N`` on ``P_N``
  inputs and ``R_{2N}`` on ``R_N`` inputs, as in the paper;
- switches, floors and ceils split the ``(l, u)`` domain into pieces; every piece is
  counted separately (a floor is a constant on its piece); a sigmoid of ``l, u`` is not
  rational: the degree is then unbounded (:data:`math.inf`);
- ``(l, u)`` of a ReLU come from backsubstitution (``intermediate == "backsub"``: the
  neuron's own class) or from interval arithmetic (``"interval"``: the class of the
  interval bounds, which pass each ReLU as ``[relu(l'), relu(u')]`` with ``(l', u')`` the
  relaxation's transform). Forward propagation (``"forward"``, the hybrid zonotope) is
  counted as backsubstitution: its forms are the same products of weights and lines along
  every path, plus box parts ``|W|·r`` of the same degree, so a neuron's bounds have the
  neuron's own class. The recurrence is about a relaxation's lines and how bounds reach
  them; it does not see a mode's constant factors (tightness does).

With all layers of width ``M`` and ``B`` ReLU-affine blocks after the first ReLU
(``B = ⌊L/2⌋ - 1``) this gives 1 for IBP and hBox, ``2·3^B·M^(B+1)`` for DeepZ and CROWN
and ``(2M^(B+2) - M^(B+1) - M)/(M - 1)`` for CROWN-IBP (R) (tests check B = 1..4,
M = 2..400 exactly).

The measured *log-sensitivity* of App. E.2 (:func:`log_sensitivity`) counts ``B'``, the
ReLU-affine blocks whose ReLU layer holds an unstable neuron for the input at hand
(stable ReLU layers merge with their neighbours into one affine layer), and reports
``(B' + 1)·log_M(g)`` with ``g`` the per-block growth of the recurrence: ``0`` for
IBP/hBox, ``B' + 1`` for CROWN-IBP (R) and ``(B' + 1)(1 + log 3 / log M)`` for DeepZ and
CROWN, the paper's formulas.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import sympy
import torch
from attrs import frozen

from relaxlab.core import expr as ex
from relaxlab.core.relaxation import ReluRelaxation
from relaxlab.core.relaxer import check_relaxer
from relaxlab.core.stability import Stability
from relaxlab.engine.bounder import intermediate_bounds
from relaxlab.engine.box import input_box
from relaxlab.engine.ops import AffineOp, Conv, Linear, Relu
from relaxlab.engine.parse import parse_model
from relaxlab.properties.findings import SensitivityReason

if TYPE_CHECKING:
    from torch import Tensor, nn


#: Differences larger than this (relative) mean "varies"; float64 rounding is ~1e-16.
VARIATION_TOLERANCE = 1e-8


def derive_sensitivity(relaxation: ReluRelaxation) -> list[SensitivityReason] | None:
    """Reasons the declared lines are sensitive (empty: not sensitive; ``None``: opaque, unknown)."""
    reasons: list[SensitivityReason] = []
    for stability in Stability:
        case = relaxation.effective_case(stability)
        for side, line in (("lower", case.lower), ("upper", case.upper)):
            slope_degree, offset_degree = line.slope.degree(), line.offset.degree()
            if slope_degree is None or offset_degree is None:
                return None
            if slope_degree >= 1:
                kind = "a polynomial" if slope_degree != float("inf") else "a non-polynomial function"
                reasons.append(
                    SensitivityReason(
                        str(stability), side, "slope", f"{line.slope} is {kind} of l, u within a piece"
                    )
                )
            if offset_degree >= 2:
                reasons.append(
                    SensitivityReason(
                        str(stability), side, "offset", f"{line.offset} is not affine in l, u within a piece"
                    )
                )
    return reasons


def _interior_points(stability: Stability, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = 0.1 + 5 * torch.rand(count, generator=gen, dtype=torch.float64)
    b = 0.1 + 5 * torch.rand(count, generator=gen, dtype=torch.float64)
    if stability is Stability.NEGATIVE:
        return -(a + b), -b
    if stability is Stability.POSITIVE:
        return a, a + b
    return -a, b


def probe_sensitivity(
    relaxation: ReluRelaxation, count: int = 200, step: float = 1e-3
) -> list[SensitivityReason]:
    """Measured reasons: a slope that changes, or an offset that bends, inside a piece.

    Uses only :meth:`coefficients`. Points are drawn inside each case (raw bounds);
    stencils that cross a piece boundary (a switch or step) are skipped, detected
    by comparing the one-sided differences of the stencil.
    """
    reasons: list[SensitivityReason] = []
    for stability in Stability:
        lb, ub = _interior_points(stability, count, seed=list(Stability).index(stability))
        found: dict[tuple[str, str], str] = {}
        for direction in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
            dl, du = step * direction[0], step * direction[1]
            triple = [list(relaxation.coefficients(lb + k * dl, ub + k * du).tensors) for k in (-1, 0, 1)]
            # A piece boundary inside the stencil shows as one one-sided difference much bigger than
            # the other in some coefficient; such stencils say nothing about one piece: skip them.
            inside = torch.ones_like(lb, dtype=torch.bool)
            for index in range(4):
                minus, centre, plus = (t[index] for t in triple)
                scale = 1.0 + centre.abs()
                back, fwd = (centre - minus).abs(), (plus - centre).abs()
                inside &= (back <= 10 * fwd + 1e-12 * scale) & (fwd <= 10 * back + 1e-12 * scale)
            for index, (side, part) in enumerate(
                (("lower", "slope"), ("lower", "offset"), ("upper", "slope"), ("upper", "offset"))
            ):
                minus, centre, plus = (t[index] for t in triple)
                scale = 1.0 + centre.abs()
                if part == "slope":
                    change = torch.maximum((centre - minus).abs(), (plus - centre).abs())
                else:
                    change = (plus + minus - 2 * centre).abs()
                varies = inside & (change > VARIATION_TOLERANCE * scale)
                if bool(varies.any()) and (side, part) not in found:
                    i = int(varies.nonzero()[0, 0])
                    what = "changes" if part == "slope" else "bends"
                    found[(side, part)] = f"{what} near l={float(lb[i]):.3g}, u={float(ub[i]):.3g}"
        reasons.extend(
            SensitivityReason(str(stability), side, part, detail) for (side, part), detail in found.items()
        )
    return reasons


#: The paper's width for the measured log-sensitivity (App. E.2: the widest layer of FC).
PAPER_M = 400

_KINDS = ("zero", "polynomial", "rational", "transcendental")


@frozen(order=False)
class DegreeClass:
    """A set of functions of ``δ``: ``P_N`` (``"polynomial"``), ``R_N`` (``"rational"``).

    ``"zero"`` is the identically zero function (a vanished term); ``"transcendental"``
    is not rational at all (degree :data:`math.inf`).

    :param kind: one of ``"zero"``, ``"polynomial"``, ``"rational"``, ``"transcendental"``.
    :param degree: ``N`` (an int; ``0`` for zero and constants; ignored for transcendental).
    """

    kind: str
    degree: int = 0

    def __attrs_post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.degree < 0:
            raise ValueError(f"degree must be >= 0, got {self.degree}")

    @property
    def value(self) -> float:
        """``N`` as a number; :data:`math.inf` for a transcendental class."""
        return math.inf if self.kind == "transcendental" else self.degree

    def times(self, other: DegreeClass) -> DegreeClass:
        """The class of a product."""
        if "zero" in (self.kind, other.kind):
            return ZERO
        if "transcendental" in (self.kind, other.kind):
            return TRANSCENDENTAL
        kind = "polynomial" if self.kind == other.kind == "polynomial" else "rational"
        return DegreeClass(kind, self.degree + other.degree)

    def join(self, other: DegreeClass) -> DegreeClass:
        """The smallest class holding both (the worst case over cases and pieces)."""
        if self.kind == "zero":
            return other
        if other.kind == "zero":
            return self
        if "transcendental" in (self.kind, other.kind):
            return TRANSCENDENTAL
        kind = "polynomial" if self.kind == other.kind == "polynomial" else "rational"
        return DegreeClass(kind, max(self.degree, other.degree))

    def affine(self, fan_in: int) -> DegreeClass:
        """The class of a linear combination of ``fan_in`` such functions (plus a constant)."""
        if self.kind == "rational":
            return DegreeClass("rational", self.degree * fan_in)
        if self.kind == "zero":
            return CONSTANT
        return self

    def __str__(self) -> str:
        if self.kind == "transcendental":
            return "not rational (∞)"
        if self.kind == "zero":
            return "0"
        return f"{'P' if self.kind == 'polynomial' else 'R'}_{self.degree}"


ZERO = DegreeClass("zero", 0)
CONSTANT = DegreeClass("polynomial", 0)
LINEAR = DegreeClass("polynomial", 1)
TRANSCENDENTAL = DegreeClass("transcendental", 0)


class OpaqueRelaxationError(ValueError):
    """A relaxation uses opaque callables: its degree cannot be derived from the spec."""


# -- coefficients as exact rational functions ----------------------------------------------------

_L, _U = sympy.symbols("l u")


class _Pieces(ex.Interpretation[list[ex.Expr]]):
    """The expression on every piece of the domain: switches expanded into both branches.

    A floor/ceil or a condition stays as it is (constant on each piece, :class:`_Sympy` makes it a symbol).
    """

    def _itself(self, node: ex.Expr) -> list[ex.Expr]:
        return [node]

    const = var = param = step = ge = opaque = _itself

    def _binary(self, node: ex.Add | ex.Mul | ex.Div) -> list[ex.Expr]:
        left, right = node.children()
        return [type(node)(a, b) for a, b in itertools.product(self(left), self(right))]

    add = mul = div = _binary

    def sigmoid(self, node: ex.Sigmoid) -> list[ex.Expr]:
        return [ex.Sigmoid(a) for a in self(node.arg)]

    def switch(self, node: ex.Switch) -> list[ex.Expr]:
        return self(node.then) + self(node.otherwise)

    def named(self, node: ex.Named) -> list[ex.Expr]:
        return self(node.body)


def _pieces(expr: ex.Expr) -> Iterator[ex.Expr]:
    """The expression on every piece of the domain: switches expanded into both branches."""
    yield from _Pieces()(expr)


class _Sympy(ex.Interpretation[sympy.Expr]):
    """A switch-free expression as a sympy expression in ``l``, ``u``; floors and conditions become
    symbols (constant on each piece), appended to ``steps``."""

    def __init__(self, steps: list[sympy.Symbol]) -> None:
        self.steps = steps

    def const(self, node: ex.Const) -> sympy.Expr:
        return sympy.nsimplify(node.value, rational=True)

    def var(self, node: ex.Var) -> sympy.Expr:
        return _L if node.name == "l" else _U

    def param(self, node: ex.Param) -> sympy.Expr:
        return sympy.Symbol(f"param_{node.name}", positive=True)

    def add(self, node: ex.Add) -> sympy.Expr:
        return self(node.left) + self(node.right)

    def mul(self, node: ex.Mul) -> sympy.Expr:
        return self(node.left) * self(node.right)

    def div(self, node: ex.Div) -> sympy.Expr:
        return self(node.numerator) / self(node.denominator)

    def named(self, node: ex.Named) -> sympy.Expr:
        return self(node.body)

    def sigmoid(self, node: ex.Sigmoid) -> sympy.Expr:
        return 1 / (1 + sympy.exp(-self(node.arg)))

    def _piece_constant(self, node: ex.Expr) -> sympy.Expr:
        # Constant on each piece of the domain (a floor/ceil between two jumps; a 0/1 test).
        symbol = sympy.Symbol(f"piece_{len(self.steps)}")
        self.steps.append(symbol)
        return symbol

    step = ge = _piece_constant

    def switch(self, node: ex.Switch) -> sympy.Expr:
        raise TypeError("switches are expanded into pieces before they become sympy expressions")

    def opaque(self, node: ex.Opaque) -> sympy.Expr:
        raise OpaqueRelaxationError(f"opaque coefficient {node.name!r}")


def _to_sympy(expr: ex.Expr, steps: list[sympy.Symbol]) -> sympy.Expr:
    """``expr`` (switch-free) as a sympy expression in ``l``, ``u``; floors become constants."""
    return _Sympy(steps)(expr)


@frozen
class RationalShape:
    """Degrees of a coefficient written in lowest terms ``p(l, u)/q(l, u)``.

    :param zero: the coefficient is identically 0.
    :param rational: it is a rational function of ``l, u`` at all (no sigmoid of ``l, u``).
    :param polynomial: ``q`` is constant.
    :param total: ``max(deg p, deg q)`` (total degree).
    :param in_l: largest power of ``l`` in ``p`` or ``q``.
    :param in_u: largest power of ``u`` in ``p`` or ``q``.
    """

    zero: bool
    rational: bool
    polynomial: bool
    total: int
    in_l: int
    in_u: int


@functools.lru_cache(maxsize=4096)
def rational_shape(expr: ex.Expr) -> RationalShape:
    """The exact degrees of one switch-free coefficient (see :class:`RationalShape`)."""
    steps: list[sympy.Symbol] = []
    value = sympy.cancel(sympy.together(_to_sympy(expr, steps)))
    if value == 0:
        return RationalShape(True, True, True, 0, 0, 0)
    if not value.is_rational_function(_L, _U):
        return RationalShape(False, False, False, 0, 0, 0)
    num, den = sympy.fraction(value)
    p, q = sympy.Poly(num, _L, _U), sympy.Poly(den, _L, _U)
    return RationalShape(
        zero=False,
        rational=True,
        polynomial=q.total_degree() == 0,
        total=max(p.total_degree(), q.total_degree()),
        in_l=max(p.degree(_L), q.degree(_L), 0),
        in_u=max(p.degree(_U), q.degree(_U), 0),
    )


def coefficient_class(expr: ex.Expr, bounds: DegreeClass) -> DegreeClass:
    """The class of a coefficient ``f(l, u)`` when ``l, u`` are in ``bounds`` (worst piece).

    :raises OpaqueRelaxationError: the expression contains an opaque callable.
    """
    result = ZERO
    for piece in _pieces(expr):
        result = result.join(_piece_class(rational_shape(piece), bounds))
    return result


def _piece_class(shape: RationalShape, bounds: DegreeClass) -> DegreeClass:
    if shape.zero:
        return ZERO
    if not shape.rational:
        return TRANSCENDENTAL
    if shape.total == 0:
        return CONSTANT
    if bounds.kind == "transcendental":
        return TRANSCENDENTAL
    if bounds.kind in ("zero", "polynomial"):
        kind = "polynomial" if shape.polynomial else "rational"
        return DegreeClass(kind, bounds.degree * shape.total)
    return DegreeClass("rational", bounds.degree * (shape.in_l + shape.in_u))


# -- the recurrence over an architecture ---------------------------------------------------------


def relu_output_class(
    relaxation: ReluRelaxation,
    neuron: DegreeClass,
    bounds: DegreeClass,
    cases: Sequence[Stability] = tuple(Stability),
) -> DegreeClass:
    """Class of a ReLU's output for an input neuron in ``neuron`` with bounds ``(l, u)`` in ``bounds``.

    ``max`` over the given stability cases, both lines and every piece of
    ``slope(l,u)·class(x)`` and ``offset(l,u)``, the transform substituted (``effective_case``).
    """
    result = ZERO
    for stability in cases:
        case = relaxation.effective_case(stability)
        for ln in case.lines():
            result = result.join(coefficient_class(ln.slope, bounds).times(neuron))
            result = result.join(coefficient_class(ln.offset, bounds))
    return result


def _interval_class(relaxation: ReluRelaxation, bounds: DegreeClass) -> DegreeClass:
    """Class of the box ``[relu(l'), relu(u')]`` an interval-mode ReLU passes on."""
    if relaxation.is_interval:
        # The engine's interval fast path passes the lines' offsets (equal numbers).
        return relu_output_class(relaxation, ZERO, bounds)
    if relaxation.transform is None:
        return bounds
    return coefficient_class(relaxation.transform.lower, bounds).join(
        coefficient_class(relaxation.transform.upper, bounds)
    )


@frozen
class SensitivityResult:
    """The derived sensitivity of a relaxation on an architecture.

    :param relaxation: its label.
    :param output: the class of the network outputs (``R_N``/``P_N``).
    :param trace: the class after every layer, ``(layer, class)`` with layers named
        ``"affine 1"``, ``"relu 1"``, ...
    """

    relaxation: str
    output: DegreeClass
    trace: tuple[tuple[str, DegreeClass], ...]

    @property
    def degree(self) -> float:
        """The sensitivity ``N`` (an int, or :data:`math.inf` when not rational)."""
        return self.output.value


def _check_fan_ins(fan_ins: Sequence[int]) -> None:
    for index, fan_in in enumerate(fan_ins):
        if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
            raise ValueError(
                f"fan-in {index} is {fan_in!r}; give positive integers (the widths of the ReLU layers)"
            )


def degree_on(
    relaxation: ReluRelaxation,
    fan_ins: Sequence[int],
    *,
    cases: Sequence[Sequence[Stability]] | None = None,
) -> SensitivityResult:
    """Sensitivity of ``relaxation`` on a network with one ReLU layer per entry of ``fan_ins``.

    :param relaxation: any relaxation spec.
    :param fan_ins: for each ReLU layer, the fan-in ``M`` of the affine layer after it (the
        number of ReLU outputs a neuron of the next layer combines; the ReLU layer's width
        for fully connected layers).
    :param cases: for each ReLU layer, the stability cases that occur (default: all three,
        the paper's worst case).
    :return: the output class and the per-layer trace.
    :raises OpaqueRelaxationError: the spec uses opaque callables (probe it instead).
    """
    _check_fan_ins(fan_ins)
    if cases is None:
        cases = [tuple(Stability)] * len(fan_ins)
    if len(cases) != len(fan_ins):
        raise ValueError(f"cases has {len(cases)} entries but there are {len(fan_ins)} ReLU layers")
    if relaxation.intermediate not in ("backsub", "interval", "forward"):
        raise ValueError(f"{relaxation.name}: unknown intermediate mode {relaxation.intermediate!r}")
    neuron = box = LINEAR  # the first affine layer: P_1 for every relaxation
    trace: list[tuple[str, DegreeClass]] = [("affine 1", neuron)]
    for index, (fan_in, present) in enumerate(zip(fan_ins, cases, strict=True), start=1):
        interval = relaxation.intermediate == "interval" or relaxation.is_interval
        bounds = box if interval else neuron
        neuron = relu_output_class(relaxation, neuron, bounds, present)
        if interval:
            box = _interval_class(relaxation, box)
        trace.append((f"relu {index}", neuron))
        neuron = neuron.affine(fan_in)
        box = box.affine(fan_in)
        trace.append((f"affine {index + 1}", neuron))
    return SensitivityResult(relaxation.label, neuron, tuple(trace))


def paper_degree(relaxation: ReluRelaxation, blocks: int, width: int) -> SensitivityResult:
    """Sensitivity with ``blocks`` ReLU-affine blocks after the first ReLU, all layers of width ``width``.

    ``B = blocks`` is the paper's ``⌊L/2⌋ - 1``: the network has ``B + 1`` ReLU layers.
    """
    if blocks < 0:
        raise ValueError(f"blocks (B) must be >= 0, got {blocks}")
    return degree_on(relaxation, [width] * (blocks + 1))


def fan_ins_of(model: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """The fan-in after every ReLU of a network the engine accepts, in node order.

    The affine nodes between a ReLU and the next ReLUs combine at most ``min(#ReLU outputs,
    product of the fan-ins of the non-diagonal operations on a path)`` ReLU outputs per neuron
    (``Linear``: ``in_features``; ``Conv2d``: ``in_channels/groups·kh·kw``; the largest over paths).
    """
    net = parse_model(model, tuple(int(s) for s in input_shape))

    def fan_in(op: AffineOp) -> int:
        if isinstance(op, Linear):
            return int(op.weight.shape[-1])
        if isinstance(op, Conv):
            return int(op.weight.shape[1] * op.weight.shape[2] * op.weight.shape[3])
        return 1

    fan_ins = []
    for relu in net.relus:
        product = {relu: 1}
        largest = 1
        for index in range(relu + 1, len(net.nodes)):
            node = net.nodes[index]
            reached = [product[i] for i in node.inputs if i in product]
            if not reached or isinstance(node.op, Relu):
                continue
            assert isinstance(node.op, AffineOp)
            product[index] = max(reached) * fan_in(node.op)
            largest = max(largest, product[index])
        width = math.prod(net.nodes[relu].out_shape)
        fan_ins.append(max(1, min(width, largest)))
    return fan_ins


# -- measured log-sensitivity (App. E.2) -----------------------------------------------------------


def growth_factor(relaxation: ReluRelaxation, width: int) -> float:
    """``g``: the factor by which one ReLU-affine block of width ``width`` multiplies the degree, asymptotically.

    ``1`` for IBP/hBox, ``M`` for CROWN-IBP (R), ``3M`` for DeepZ/CROWN, ``inf`` when not rational.
    The recurrence per block is a maximum of affine maps of ``N``; its slope for large ``N``
    is read off exactly with integers.
    """
    base = degree_on(relaxation, [width, width])
    if base.output.kind == "transcendental":
        return math.inf
    if base.output.kind != "rational":
        return 1.0
    big = 10**9
    start = DegreeClass("rational", big)
    bounds_interval = relaxation.intermediate == "interval" or relaxation.is_interval
    box = LINEAR if bounds_interval else None

    def block(neuron: DegreeClass) -> int:
        bounds = box if box is not None else neuron
        return relu_output_class(relaxation, neuron, bounds).affine(width).degree

    return float(block(DegreeClass("rational", big + 1)) - block(start))


def unstable_layers(boxes: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """``(B, k)`` booleans: whether ReLU layer ``j`` holds an unstable neuron (``l < 0 < u``) for input ``b``.

    :param boxes: per ReLU layer, a pair ``(l, u)`` of ``(B, *shape)`` pre-activation bounds.
    """
    import torch

    flags = [((lb < 0) & (ub > 0)).flatten(1).any(dim=1) for lb, ub in boxes]
    return torch.stack(flags, dim=1)


def log_sensitivity(
    relaxation: ReluRelaxation,
    unstable_counts: Sequence[int],
    width: int = PAPER_M,
) -> list[float]:
    """App. E.2's measured log-sensitivity for each input, from its number of unstable ReLU layers.

    With ``u`` ReLU layers holding an unstable neuron, stable layers merge with their
    neighbours into one affine layer, so ``B' = u - 1`` blocks remain; the value is
    ``(B' + 1)·log_M(g)`` (``0`` when ``u = 0``: the bounds are then affine in ``δ``).

    :param unstable_counts: per input, the number ``u`` of unstable ReLU layers.
    :param width: ``M`` (the paper uses 400, the widest layer of its FC network).
    """
    if width < 2:
        raise ValueError(f"width M must be >= 2 for log_M, got {width}")
    g = growth_factor(relaxation, width)
    out = []
    for count in unstable_counts:
        if count < 0:
            raise ValueError(f"unstable layer counts must be >= 0, got {count}")
        if count == 0 or g == 1.0:
            out.append(0.0)
        else:
            out.append(count * math.log(g) / math.log(width) if math.isfinite(g) else math.inf)
    return out


def measured_log_sensitivity(
    model: nn.Module,
    x: Tensor,
    eps: float,
    relaxation: ReluRelaxation,
    *,
    width: int | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[list[float], list[int]]:
    """Log-sensitivity of App. E.2 for every input of a batch, and each input's ``B' + 1``.

    The unstable ReLU layers are those with an unstable neuron under ``relaxation``'s own
    intermediate bounds on the ``eps``-box of the input (clipped to ``domain``).

    :param width: ``M``; default: the widest ReLU layer of ``model`` (the paper's choice, 400 for FC).
    :return: ``(values, counts)`` with ``counts[b]`` the number of unstable ReLU layers.
    """
    check_relaxer(relaxation)  # returns it unchanged, or refuses what is not a relaxation
    lower, upper = input_box(x, eps, domain)
    with torch.no_grad():
        boxes, _ = intermediate_bounds(model, lower, upper, relaxation)
    if not boxes:
        return [0.0] * int(x.shape[0]), [0] * int(x.shape[0])
    # Stability as the relaxation sees it: on the (possibly widened) bounds its lines use.
    boxes = [relaxation.transform_bounds(lb, ub) for lb, ub in boxes]
    counts = [int(c) for c in unstable_layers(boxes).sum(dim=1)]
    if width is None:
        width = max(math.prod(lb.shape[1:]) for lb, _ in boxes)
    return log_sensitivity(relaxation, counts, max(width, 2)), counts
