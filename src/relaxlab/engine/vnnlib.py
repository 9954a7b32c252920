"""VNN-LIB, the property format of VNN-COMP: one home for reading and writing it.

A VNN-LIB file states the *negation* of a safety property over a network with inputs ``X_i``
and outputs ``Y_j``: a verifier answers ``sat`` when some input satisfies every assertion (a
counterexample) and ``unsat`` when none does (the network is safe). The grammar read here is
the one the competition's files use:

- ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``: inputs and outputs, numbered
  ``0 .. n-1`` without gaps (``X_i`` is the C-order flattening of one input);
- ``(assert F)``, all asserted formulas holding together, where ``F`` is an atom or an
  ``and`` / ``or`` of formulas;
- atoms ``(<= a b)`` and ``(>= a b)`` of linear terms: numbers (``0.5``, ``-1``, ``1e-05``),
  variables, ``(+ t ...)``, ``(- t)``, ``(- t t ...)``, ``(* c t)`` with all factors but one
  constant, ``(/ t c)`` by a nonzero constant;
- an atom over inputs bounds *one* input by a constant (``(<= X_0 0.5)``, ``(>= -1 X_3)``,
  either order); an atom over outputs is any linear inequality among outputs and constants;
  an atom mixing inputs and outputs is refused;
- comments from ``;`` to the end of the line; the SMT-LIB commands that do not change a
  property's meaning (``set-logic``, ``set-info``, ``set-option``, ``check-sat``, ``get-model``,
  ``exit``) are skipped.

Anything else is refused with a :class:`VnnlibError` that names the file, line and column.

The formula is brought into disjunctive normal form. Each conjunctive term is an input box (the
intersection of its input bounds; every input needs both a lower and an upper bound) together
with a conjunction of output atoms; terms with an empty box or a constant false atom are
infeasible and dropped. Terms with the same box are grouped: a :class:`Property` is a list of
:class:`Region` s, each a box with the *disjunction* of its output conjunctions. Several boxes
arise where a file writes ``(assert (or (and ...X bounds... ...Y atoms...) ...))``.

Numbers are kept **exactly** (``fractions.Fraction`` of the decimal written); an output atom is
``sum_j c_j·Y_j <= b``. :meth:`InputBox.float_bounds` rounds the box *outward* to float64, so a
bound computed over the float box holds for every real point of the file's box.
:func:`format_property` writes any property back exactly (a decimal where the number has one,
``(/ p q)`` otherwise); reading what it wrote gives the same property.

:func:`write_vnnlib` writes the local robustness property of one input, as ``relaxlab export``
uses it.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, cast

from attrs import field, frozen
from torch import Tensor

from relaxlab.core.convert import as_tuple

__all__ = [
    "Atom",
    "InputBox",
    "Property",
    "Region",
    "VnnlibError",
    "format_property",
    "read_vnnlib",
    "parse_vnnlib",
    "robustness_property",
    "write_property",
    "write_text_atomic",
    "write_vnnlib",
]

#: The most conjunctive terms the normal form may have (a file whose ``or`` s multiply beyond
#: this is refused rather than expanded without end).
MAX_TERMS = 100_000
#: SMT-LIB commands that do not change what a property means.
_SKIPPED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"})
_VARIABLE = re.compile(r"([XY])_(0|[1-9][0-9]*)\Z")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_TOKEN = re.compile(r"\s+|;[^\n]*|\(|\)|[^\s();]+")


class VnnlibError(ValueError):
    """A VNN-LIB text relaxlab cannot read; the message starts with ``file:line:column:``."""


# --- the property as data ------------------------------------------------------------------


@frozen
class Atom:
    """The output constraint ``sum_j c_j·Y_j <= bound``, exactly.

    :param coefficients: ``(j, c_j)`` pairs, ``j`` increasing, every ``c_j`` nonzero (at least one).
    :param bound: the right-hand side ``b``.
    """

    coefficients: tuple[tuple[int, Fraction], ...] = field(
        converter=lambda pairs: tuple((int(j), Fraction(c)) for j, c in pairs)
    )
    bound: Fraction = field(converter=Fraction)

    def __attrs_post_init__(self) -> None:
        indices = [j for j, _ in self.coefficients]
        if (
            not indices
            or indices != sorted(set(indices))
            or any(c == 0 for _, c in self.coefficients)
            or indices[0] < 0
        ):
            raise ValueError(
                f"an atom needs nonzero coefficients at distinct increasing outputs, got "
                f"{self.coefficients!r}"
            )

    def holds(self, outputs: Sequence[float]) -> bool:
        """Whether ``outputs`` satisfy the atom, decided exactly (each float taken at its exact value).

        :param outputs: the values of ``Y_0 .. Y_{K-1}``.
        """
        return sum(c * Fraction(float(outputs[j])) for j, c in self.coefficients) <= self.bound


@frozen
class InputBox:
    """``lower[i] <= X_i <= upper[i]`` for every input, exactly; ``lower <= upper``."""

    lower: tuple[Fraction, ...] = field(converter=lambda v: tuple(map(Fraction, v)))
    upper: tuple[Fraction, ...] = field(converter=lambda v: tuple(map(Fraction, v)))

    def __attrs_post_init__(self) -> None:
        if len(self.lower) != len(self.upper) or any(
            lo > hi for lo, hi in zip(self.lower, self.upper, strict=True)
        ):
            raise ValueError(
                "an input box needs as many lower as upper ends, each lower end <= its upper end"
            )

    def float_bounds(self, *, inward: bool = False) -> tuple[list[float], list[float]]:
        """The box rounded to float64 ends.

        :param inward: round inward (every float point of the result lies in this box; the
            result may be empty) instead of outward (the result contains every real point of
            this box: what a bound must cover).
        :raises OverflowError: an end beyond the float64 range.
        """
        if inward:
            return [_round_up(v) for v in self.lower], [_round_down(v) for v in self.upper]
        return [_round_down(v) for v in self.lower], [_round_up(v) for v in self.upper]

    def contains(self, point: Sequence[float]) -> bool:
        """Whether ``point`` lies in the box, decided exactly.

        :param point: one value per input.
        """
        return len(point) == len(self.lower) and all(
            lo <= Fraction(float(v)) <= hi for v, lo, hi in zip(point, self.lower, self.upper, strict=True)
        )


@frozen
class Region:
    """One input box and the output conjunctions that, over it, would make a counterexample.

    A counterexample is a point ``x`` in ``box`` such that the network's output satisfies every
    atom of at least one conjunction of ``disjuncts`` (an empty conjunction: any output).
    """

    box: InputBox
    disjuncts: tuple[tuple[Atom, ...], ...] = field(converter=lambda d: tuple(tuple(c) for c in d))


@frozen
class Property:
    """A VNN-LIB property: a counterexample exists iff one exists in some :class:`Region`.

    No regions means no input satisfies the file's constraints (every term was infeasible).
    """

    num_inputs: int
    num_outputs: int
    regions: tuple[Region, ...] = field(converter=as_tuple)

    def __attrs_post_init__(self) -> None:
        for region in self.regions:
            if len(region.box.lower) != self.num_inputs:
                raise ValueError(f"a box has {len(region.box.lower)} inputs, the property {self.num_inputs}")
            for conjunction in region.disjuncts:
                for atom in conjunction:
                    if atom.coefficients[-1][0] >= self.num_outputs:
                        raise ValueError(
                            f"an atom uses Y_{atom.coefficients[-1][0]} of {self.num_outputs} outputs"
                        )


def _round_down(value: Fraction) -> float:
    result = float(value)  # int / int: correctly rounded to nearest
    if Fraction(result) > value:
        result = math.nextafter(result, -math.inf)
    if not math.isfinite(result):
        raise OverflowError(f"{value} is beyond the float64 range")
    return result


def _round_up(value: Fraction) -> float:
    return -_round_down(-value)


# --- reading -------------------------------------------------------------------------------


class _Token(NamedTuple):
    text: str
    line: int
    column: int


class _List(NamedTuple):
    items: tuple[_Token | _List, ...]
    line: int
    column: int


_Node = _Token | _List


class _Linear(NamedTuple):
    """``sum coefficients[name]·name + constant``."""

    coefficients: dict[str, Fraction]
    constant: Fraction


class _Literal(NamedTuple):
    """One atom of a formula: an input bound ``(i, is_upper, value)`` or an output atom (or a constant truth)."""

    node: _Node
    bound: tuple[int, bool, Fraction] | None = None
    atom: Atom | None = None
    truth: bool | None = None


@functools.lru_cache(maxsize=4096)
def _fraction(text: str) -> Fraction:
    """The exact value of a number token (files repeat a few numbers many times)."""
    return Fraction(text)


class _Reader:
    """Reads one text; every error names ``source:line:column``."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source
        self.declared: dict[str, _Token] = {}

    def fail(self, node: _Node | None, message: str) -> VnnlibError:
        if node is None:
            return VnnlibError(f"{self.source}: {message}")
        return VnnlibError(f"{self.source}:{node.line}:{node.column}: {message}")

    def tokens(self) -> Iterator[_Token]:
        line, line_start = 1, 0
        for match in _TOKEN.finditer(self.text):
            piece = match.group()
            if piece[0].isspace() or piece[0] == ";":
                newlines = piece.count("\n")
                if newlines:
                    line += newlines
                    line_start = match.start() + piece.rindex("\n") + 1
                continue
            yield _Token(piece, line, match.start() - line_start + 1)

    def expressions(self) -> list[_Node]:
        stack: list[tuple[_Token, list[_Node]]] = []
        top: list[_Node] = []
        for token in self.tokens():
            if token.text == "(":
                stack.append((token, []))
            elif token.text == ")":
                if not stack:
                    raise self.fail(token, "')' without a matching '('")
                opening, items = stack.pop()
                node = _List(tuple(items), opening.line, opening.column)
                (stack[-1][1] if stack else top).append(node)
            else:
                if token.text[0] in '"|':
                    raise self.fail(
                        token, f"{token.text[:20]!r}: quoted strings and symbols are not part of VNN-LIB"
                    )
                if not stack:
                    raise self.fail(
                        token, f"{token.text!r} outside parentheses; every command is '(command ...)'"
                    )
                stack[-1][1].append(token)
        if stack:
            raise self.fail(stack[-1][0], "'(' is never closed")
        return top

    # commands

    def read(self) -> Property:
        formulas: list[_List] = []
        for command in self.expressions():
            assert isinstance(command, _List)
            head = self.head(command)
            if head == "declare-const":
                self.declare(command)
            elif head == "assert":
                if len(command.items) != 2:
                    raise self.fail(command, f"assert takes one formula, got {len(command.items) - 1}")
                formulas.append(command)
            elif head not in _SKIPPED_COMMANDS:
                raise self.fail(command, f"unknown command {head!r}; VNN-LIB uses declare-const and assert")
        num_inputs, num_outputs = self.counts()
        return self.collect(formulas, num_inputs, num_outputs)

    def head(self, node: _List) -> str:
        if not node.items or not isinstance(node.items[0], _Token):
            raise self.fail(node, "expected '(name ...)'")
        return node.items[0].text

    def declare(self, command: _List) -> None:
        items = command.items
        if len(items) != 3 or not all(isinstance(item, _Token) for item in items[1:]):
            raise self.fail(command, "expected (declare-const NAME Real)")
        name, sort = items[1], items[2]
        assert isinstance(name, _Token) and isinstance(sort, _Token)
        if sort.text != "Real":
            raise self.fail(sort, f"{name.text} is declared {sort.text}; only Real variables are supported")
        if not _VARIABLE.match(name.text):
            raise self.fail(name, f"variable {name.text!r}: VNN-LIB names inputs X_i and outputs Y_j")
        if name.text in self.declared:
            first = self.declared[name.text]
            raise self.fail(name, f"{name.text} is declared twice (first at line {first.line})")
        self.declared[name.text] = name

    def counts(self) -> tuple[int, int]:
        counts = []
        for kind in "XY":
            indices = sorted(int(n[2:]) for n in self.declared if n[0] == kind)
            if not indices:
                raise self.fail(
                    None, f"no {kind}_ variable is declared; declare (declare-const {kind}_0 Real) ..."
                )
            missing = next((i for i, j in enumerate(indices) if i != j), None)
            if missing is not None:
                later = self.declared[f"{kind}_{indices[missing]}"]
                raise self.fail(
                    later,
                    f"{kind}_{indices[missing]} is declared but {kind}_{missing} is not: "
                    f"number the {'inputs' if kind == 'X' else 'outputs'} 0, 1, 2, ... without gaps",
                )
            counts.append(len(indices))
        return counts[0], counts[1]

    # formulas -> terms

    def collect(self, formulas: list[_List], num_inputs: int, num_outputs: int) -> Property:
        common: list[_Literal] = []  # literals of asserts that are a single term: shared by every term
        terms: list[list[_Literal]] = [[]]
        for command in formulas:
            dnf = self.dnf(command.items[1])
            if len(dnf) == 1:
                common.extend(dnf[0])
                continue
            if len(terms) * len(dnf) > MAX_TERMS:
                raise self.fail(
                    command,
                    f"the disjunctive normal form grows beyond {MAX_TERMS} terms here; "
                    "write the property with fewer nested or's",
                )
            terms = [term + extra for term in terms for extra in dnf]
        if any(literal.truth is False for literal in common):
            terms = []  # a constant false atom holds everywhere: nothing is feasible
        base = self.bounds(common, [None] * num_inputs, [None] * num_inputs)
        base_key = (tuple(base[0]), tuple(base[1]))
        base_list: list[tuple[Atom, ...]] | None = None
        regions: dict[
            tuple[tuple[Fraction | None, ...], tuple[Fraction | None, ...]], list[tuple[Atom, ...]]
        ] = {}
        for term in terms:
            if any(literal.truth is False for literal in term):
                continue
            if any(literal.bound is not None for literal in term):
                lower, upper = self.bounds(term, list(base[0]), list(base[1]))
                key = (tuple(lower), tuple(upper))
            else:
                key = base_key
            self.check_bounded(*key)
            lows, highs = cast("tuple[tuple[Fraction, ...], tuple[Fraction, ...]]", key)  # no None: checked
            if any(lo > hi for lo, hi in zip(lows, highs, strict=True)):
                continue  # an empty box
            conjunction = tuple(literal.atom for literal in [*common, *term] if literal.atom is not None)
            if key is base_key:  # a large box hashes slowly: look the common one up once
                if base_list is None:
                    base_list = regions.setdefault(key, [])
                base_list.append(conjunction)
            else:
                regions.setdefault(key, []).append(conjunction)
        return Property(
            num_inputs, num_outputs, tuple(Region(InputBox(*ends), tuple(d)) for ends, d in regions.items())
        )

    @staticmethod
    def bounds(
        literals: list[_Literal], lower: list[Fraction | None], upper: list[Fraction | None]
    ) -> tuple[list[Fraction | None], list[Fraction | None]]:
        """``lower`` and ``upper`` tightened by the input bounds among ``literals`` (in place)."""
        for literal in literals:
            if literal.bound is None:
                continue
            index, is_upper, value = literal.bound
            if is_upper:
                end = upper[index]
                upper[index] = value if end is None else min(end, value)
            else:
                end = lower[index]
                lower[index] = value if end is None else max(end, value)
        return lower, upper

    def check_bounded(self, lower: Sequence[Fraction | None], upper: Sequence[Fraction | None]) -> None:
        for index in range(len(lower)):
            for ends, word in ((lower, "lower"), (upper, "upper")):
                if ends[index] is None:
                    where = self.declared[f"X_{index}"]
                    raise self.fail(
                        where,
                        f"X_{index} has no {word} bound (in some input box); bound every input "
                        "from both sides, e.g. (assert (<= X_0 1.0)) and (assert (>= X_0 0.0))",
                    )

    def dnf(self, node: _Node) -> list[list[_Literal]]:
        if isinstance(node, _Token):
            if node.text in ("true", "false"):
                return [[_Literal(node, truth=node.text == "true")]]
            raise self.fail(node, f"expected a formula, got {node.text!r}")
        head = self.head(node)
        operands = node.items[1:]
        if head == "and":
            terms: list[list[_Literal]] = [[]]
            for operand in operands:
                sub = self.dnf(operand)
                if len(terms) * len(sub) > MAX_TERMS:
                    raise self.fail(node, f"the disjunctive normal form grows beyond {MAX_TERMS} terms here")
                terms = [term + extra for term in terms for extra in sub]
            return terms
        if head == "or":
            if not operands:
                return [[_Literal(node, truth=False)]]
            return [term for operand in operands for term in self.dnf(operand)]
        if head in ("<=", ">="):
            return [[self.literal(node, head)]]
        if head in ("<", ">"):
            raise self.fail(
                node, f"strict inequality {head!r} is not supported; VNN-LIB properties use <= and >="
            )
        if head in ("not", "=>", "=", "distinct", "xor", "ite"):
            raise self.fail(node, f"{head!r} is not supported; write the property with and, or, <= and >=")
        raise self.fail(node, f"expected a formula (and, or, <=, >=), got {head!r}")

    def literal(self, node: _List, head: str) -> _Literal:
        if len(node.items) != 3:
            raise self.fail(node, f"{head} takes two operands, got {len(node.items) - 1}")
        left, right = self.linear(node.items[1]), self.linear(node.items[2])
        if head == ">=":
            left, right = right, left
        # left <= right  <=>  (left - right) <= 0
        coefficients = dict(left.coefficients)
        for name, value in right.coefficients.items():
            coefficients[name] = coefficients.get(name, Fraction(0)) - value
        coefficients = {name: value for name, value in coefficients.items() if value != 0}
        constant = left.constant - right.constant
        kinds = {name[0] for name in coefficients}
        if not kinds:
            return _Literal(node, truth=constant <= 0)
        if kinds == {"X", "Y"}:
            raise self.fail(node, "an atom may constrain inputs (X) or outputs (Y), not both")
        if kinds == {"X"}:
            if len(coefficients) != 1:
                raise self.fail(
                    node,
                    "an input constraint must bound one input by a constant, "
                    "e.g. (<= X_0 0.5); linear constraints among inputs are not supported",
                )
            ((name, value),) = coefficients.items()
            # value·X + constant <= 0
            return _Literal(node, bound=(int(name[2:]), value > 0, -constant / value))
        pairs = sorted((int(name[2:]), value) for name, value in coefficients.items())
        return _Literal(node, atom=Atom(pairs, -constant))

    def linear(self, node: _Node) -> _Linear:
        if isinstance(node, _Token):
            if _NUMBER.match(node.text):
                return _Linear({}, _fraction(node.text))
            if node.text in self.declared:
                return _Linear({node.text: Fraction(1)}, Fraction(0))
            if _VARIABLE.match(node.text):
                raise self.fail(
                    node, f"{node.text} is used but not declared; add (declare-const {node.text} Real)"
                )
            raise self.fail(node, f"expected a number or a declared variable, got {node.text!r}")
        head = self.head(node)
        operands = [self.linear(item) for item in node.items[1:]]
        if not operands:
            raise self.fail(node, f"{head!r} needs operands")
        if head == "+":
            return _sum(operands, [1] * len(operands))
        if head == "-":
            if len(operands) == 1:
                return _sum(operands, [-1])
            return _sum(operands, [1] + [-1] * (len(operands) - 1))
        if head == "*":
            variable = [term for term in operands if term.coefficients]
            if len(variable) > 1:
                raise self.fail(
                    node, "a product may have one non-constant factor only (the terms must stay linear)"
                )
            factor = math.prod(
                (term.constant for term in operands if not term.coefficients), start=Fraction(1)
            )
            base = variable[0] if variable else _Linear({}, Fraction(1))
            return _sum([base], [factor])
        if head == "/":
            if len(operands) != 2 or operands[1].coefficients:
                raise self.fail(node, "division takes a term and a constant divisor: (/ t c)")
            if operands[1].constant == 0:
                raise self.fail(node, "division by zero")
            return _sum([operands[0]], [1 / operands[1].constant])
        raise self.fail(node, f"expected a linear term (+, -, *, /), got {head!r}")


def _sum(terms: Sequence[_Linear], factors: Sequence[Fraction | int]) -> _Linear:
    coefficients: dict[str, Fraction] = {}
    constant = Fraction(0)
    for term, factor in zip(terms, factors, strict=True):
        for name, value in term.coefficients.items():
            coefficients[name] = coefficients.get(name, Fraction(0)) + factor * value
        constant += factor * term.constant
    return _Linear({name: value for name, value in coefficients.items() if value != 0}, constant)


def parse_vnnlib(text: str, source: str = "<text>") -> Property:
    """Read a VNN-LIB text (the grammar of the module docstring).

    :param text: the file's contents.
    :param source: how errors name the text (a path).
    :raises VnnlibError: anything outside the grammar, with ``source:line:column``.
    """
    return _Reader(text, source).read()


def read_vnnlib(path: str | os.PathLike[str]) -> Property:
    """Read a ``.vnnlib`` file (:func:`parse_vnnlib`).

    :raises VnnlibError: a file outside the grammar; ``FileNotFoundError`` / ``OSError`` as ``open``.
    """
    with open(path, encoding="utf-8") as handle:
        return parse_vnnlib(handle.read(), os.fspath(path))


# --- writing -------------------------------------------------------------------------------


def _number(value: Fraction) -> str:
    """The exact value: a decimal where it has a finite one, else ``(/ p q)``."""
    value = Fraction(value)
    denominator = value.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return f"(/ {value.numerator} {value.denominator})"
    digits = max(twos, fives)
    scaled = abs(value.numerator) * 10**digits // value.denominator
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(scaled, 10**digits)
    text = f"{sign}{whole}" + (f".{fraction:0{digits}d}".rstrip("0") if digits else "")
    return text if "." in text else text + ".0"


def _atom_text(atom: Atom) -> str:
    terms = atom.coefficients
    if atom.bound == 0 and len(terms) == 2 and sorted(c for _, c in terms) == [-1, 1]:
        positive = next(j for j, c in terms if c == 1)
        negative = next(j for j, c in terms if c == -1)
        return f"(>= Y_{negative} Y_{positive})"  # Y_pos - Y_neg <= 0
    if len(terms) == 1 and terms[0][1] == 1:
        return f"(<= Y_{terms[0][0]} {_number(atom.bound)})"
    if len(terms) == 1 and terms[0][1] == -1:
        return f"(>= Y_{terms[0][0]} {_number(-atom.bound)})"
    parts = " ".join(f"(* {_number(c)} Y_{j})" for j, c in terms)
    return f"(<= (+ {parts}) {_number(atom.bound)})"


def _conjunction_text(parts: Sequence[str]) -> str:
    return f"(and {' '.join(parts)})" if parts else "(and)"


def format_property(prop: Property, comments: Iterable[str] = ()) -> str:
    """The VNN-LIB text of ``prop``; :func:`parse_vnnlib` of it gives ``prop`` back exactly.

    One region is written as the competition writes a single box (one ``assert`` per input
    bound, the output disjunction as ``(assert (or (and ...) ...))``); several regions as one
    ``(assert (or (and <box> <atoms>) ...))``. A property without regions is written as
    ``(assert false)`` after the declarations.

    :param comments: lines written first, each after ``; ``.
    """
    lines = [f"; {comment}" for comment in comments]
    if lines:
        lines.append("")
    lines += [f"(declare-const X_{i} Real)" for i in range(prop.num_inputs)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)]
    lines.append("")
    if not prop.regions:
        lines.append("(assert false)")
    elif len(prop.regions) == 1:
        region = prop.regions[0]
        lines.append("; input box")
        for i, (low, high) in enumerate(zip(region.box.lower, region.box.upper, strict=True)):
            lines.append(f"(assert (<= X_{i} {_number(high)}))")
            lines.append(f"(assert (>= X_{i} {_number(low)}))")
        lines += ["", "; output constraints", "(assert (or"]
        lines += [
            f"    {_conjunction_text([_atom_text(a) for a in conjunction])}"
            for conjunction in region.disjuncts
        ]
        lines.append("))")
    else:
        lines.append("(assert (or")
        for region in prop.regions:
            box = [
                f"(>= X_{i} {_number(low)}) (<= X_{i} {_number(high)})"
                for i, (low, high) in enumerate(zip(region.box.lower, region.box.upper, strict=True))
            ]
            for conjunction in region.disjuncts:
                lines.append(f"    {_conjunction_text([*box, *(_atom_text(a) for a in conjunction)])}")
        lines.append("))")
    return "\n".join(lines) + "\n"


def write_property(path: str | os.PathLike[str], prop: Property, comments: Iterable[str] = ()) -> None:
    """Write :func:`format_property` of ``prop`` to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, format_property(prop, comments))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file moved into place: a reader sees the old file or the new one."""
    target = Path(path)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def robustness_property(
    x: Sequence[float],
    eps: float,
    label: int,
    num_classes: int,
    domain: tuple[float, float] = (0.0, 1.0),
) -> Property:
    """The negated local robustness of one input: some class scores at least as high as ``label``.

    The box is ``[max(x_i - eps, lo), min(x_i + eps, hi)]`` computed in float64; each end is
    the shortest decimal that reads back as that float (Python's ``repr``), as the file states it.

    :param x: the input, flattened in C order.
    :param eps: the l_inf radius, ``>= 0``.
    :param label: the class that must stay on top, ``0 <= label < num_classes``.
    :param num_classes: the number of network outputs ``K`` (at least 2).
    :param domain: ``(lo, hi)`` the box is clipped to; ``x`` must lie inside it.
    :raises ValueError: for a bad radius, label, domain or input.
    """
    if not eps >= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if not 0 <= label < num_classes or num_classes < 2:
        raise ValueError(f"label {label} must lie in [0, {num_classes}) with at least 2 classes")
    lo, hi = float(domain[0]), float(domain[1])
    if not lo <= hi:
        raise ValueError(f"domain lower end exceeds its upper end: {domain!r}")
    values = [float(v) for v in x]
    if any(not lo <= v <= hi for v in values):
        raise ValueError(f"x lies outside the domain [{lo:g}, {hi:g}]")
    lower = [Fraction(repr(min(max(v - eps, lo), hi))) for v in values]
    upper = [Fraction(repr(max(min(v + eps, hi), lo))) for v in values]
    disjuncts = [
        (Atom([(min(j, label), 1 if j > label else -1), (max(j, label), -1 if j > label else 1)], 0),)
        for j in range(num_classes)
        if j != label
    ]
    return Property(len(values), num_classes, (Region(InputBox(lower, upper), disjuncts),))


def write_vnnlib(
    path: str | os.PathLike[str],
    x: Tensor | Sequence[float],
    eps: float,
    label: int,
    num_classes: int,
    domain: tuple[float, float] = (0.0, 1.0),
) -> None:
    """Write the local robustness property of one input (:func:`robustness_property`) as a VNN-LIB file.

    A verifier answering ``unsat`` has proved that ``label`` stays strictly on top over the box.

    :param x: one input (a tensor of any shape or a flat sequence), inside ``domain``.
    """
    flat = x.detach().double().reshape(-1).cpu().tolist() if isinstance(x, Tensor) else [float(v) for v in x]
    prop = robustness_property(flat, eps, label, num_classes, domain)
    write_property(
        path,
        prop,
        [
            f"local robustness of one input: l_inf radius {float(eps)!r} clipped to [{float(domain[0])!r}, "
            f"{float(domain[1])!r}], label {label}",
            "the property is the negation of robustness: unsat = robust",
        ],
    )
