"""The VNN-LIB reader and writer: the competition's files, the grammar, errors by line, exact round trips."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxlab.engine.export import write_vnnlib  # the writer's old home keeps working
from relaxlab.engine.vnnlib import (
    Atom,
    InputBox,
    Property,
    Region,
    VnnlibError,
    format_property,
    parse_vnnlib,
    read_vnnlib,
    robustness_property,
    write_property,
)

SHARED = Path(__file__).resolve().parents[4] / "shared" / "vnncomp2021"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/vnncomp2021")
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="the VNN-COMP 2021 files are not on this machine"
)


def _header(inputs: int = 1, outputs: int = 2) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(inputs)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(outputs)
    )


# -- the competition's files ---------------------------------------------------------------------


@needs_shared
def test_every_shared_file_reads_and_writes_back() -> None:
    files = sorted(SHARED.glob("*/*.vnnlib"))
    assert len(files) == 38
    written_back = set()
    for path in files:
        prop = read_vnnlib(path)
        assert prop.regions, path
        if path.parent.name not in written_back:  # one file per benchmark: the 784-input ones take time
            assert parse_vnnlib(format_property(prop)) == prop, path
            written_back.add(path.parent.name)


@needs_shared
def test_mnistfc_property_is_the_negated_robustness_of_its_label() -> None:
    prop = read_vnnlib(SHARED / "mnistfc" / "prop_0_0.03.vnnlib")  # "Mnist property with label: 8."
    assert (prop.num_inputs, prop.num_outputs, len(prop.regions)) == (784, 10, 1)
    (region,) = prop.regions
    assert region.disjuncts == tuple((Atom(sorted([(8, 1), (j, -1)]), 0),) for j in range(10) if j != 8)
    assert region.box.upper[776] == Fraction("0.029999999329447746") and region.box.lower[776] == 0


@needs_shared
def test_acasxu_properties_read_as_written() -> None:
    one = read_vnnlib(SHARED / "acasxu" / "prop_1.vnnlib")
    (region,) = one.regions
    assert region.box.lower[0] == Fraction("0.6") and region.box.upper[0] == Fraction("0.679857769")
    # (assert (>= Y_0 3.991125645861615)): -Y_0 <= -3.991125645861615
    assert region.disjuncts == ((Atom([(0, -1)], Fraction("-3.991125645861615")),),)
    three = read_vnnlib(SHARED / "acasxu" / "prop_3.vnnlib")
    # four atoms Y_0 <= Y_j in ONE conjunction: "COC is minimal"
    assert three.regions[0].disjuncts == (tuple(Atom([(0, 1), (j, -1)], 0) for j in range(1, 5)),)


@needs_shared
def test_box_and_outputs_inside_one_or_of_ands() -> None:
    # (assert (or (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100))))
    prop = read_vnnlib(SHARED / "test" / "test_small.vnnlib")
    assert prop.regions == (Region(InputBox([-1], [1]), [[Atom([(0, -1)], -100)]]),)


# -- the grammar ---------------------------------------------------------------------------------


def test_bounds_in_either_order_signs_exponents_and_comments() -> None:
    text = (
        _header(3)
        + """
        ; a comment (assert (<= X_0 99)) that is not read
        (assert (>= 0.5 X_0)) (assert (<= -1 X_0))   ; constant first
        (assert (<= X_1 1e-3)) (assert (>= X_1 (- 2.5)))
        (assert (<= (* 2 X_2) 1)) (assert (<= (- X_2) 3))
        (assert (<= Y_0 Y_1))
    """
    )
    (region,) = parse_vnnlib(text).regions
    assert region.box == InputBox(
        [-1, Fraction(-5, 2), Fraction(-3)], [Fraction(1, 2), Fraction(1, 1000), Fraction(1, 2)]
    )
    assert region.disjuncts == ((Atom([(0, 1), (1, -1)], 0),),)


def test_linear_output_terms_with_constants_on_either_side() -> None:
    text = (
        _header(1, 3)
        + """
        (assert (<= X_0 1)) (assert (>= X_0 0))
        (assert (<= (+ Y_0 (* 2 Y_1) 0.5) (- Y_2 1)))
        (assert (>= 3 (/ (- Y_0 Y_2 Y_0) 4)))
    """
    )
    (region,) = parse_vnnlib(text).regions
    # Y_0 + 2 Y_1 - Y_2 <= -1.5   and   -Y_2 / 4 <= 3
    assert region.disjuncts == (
        (Atom([(0, 1), (1, 2), (2, -1)], Fraction(-3, 2)), Atom([(2, Fraction(-1, 4))], 3)),
    )


def test_or_of_boxes_becomes_regions_and_and_of_ors_distributes() -> None:
    text = (
        _header(1, 2)
        + """
        (assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))
        (assert (or (<= Y_0 0) (<= Y_1 0)))
    """
    )
    prop = parse_vnnlib(text)
    first, second = (Atom([(0, 1)], 0),), (Atom([(1, 1)], 0),)
    assert prop.regions == (
        Region(InputBox([0], [1]), [first, second]),
        Region(InputBox([2], [3]), [first, second]),
    )


def test_infeasible_terms_are_dropped_and_constant_atoms_decided() -> None:
    text = (
        _header(1, 1)
        + """
        (set-logic QF_LRA)
        (assert (<= X_0 1)) (assert (>= X_0 0))
        (assert (or (and (>= X_0 2) (<= Y_0 0)) (and (<= 1 2) (>= Y_0 5)) (and (>= 1 2) (<= Y_0 7))))
        (check-sat)
    """
    )
    prop = parse_vnnlib(text)  # the first term has an empty box, the third a false atom
    assert prop.regions == (Region(InputBox([0], [1]), [[Atom([(0, -1)], -5)]]),)
    nothing = parse_vnnlib(_header(1, 1) + "(assert (<= X_0 1)) (assert (>= X_0 2)) (assert (<= Y_0 0))")
    assert nothing.regions == ()
    anything = parse_vnnlib(_header(1, 1) + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= 0 1))")
    assert anything.regions == (Region(InputBox([0], [1]), [[]]),)  # no output constraint: every input


ERRORS = [
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1)", "3:1", "never closed"),
    (_header() + "(assert (<= X_0 1)))", "4:20", "without a matching"),
    (_header() + "(define-fun f () Real 1)", "4:1", "unknown command 'define-fun'"),
    (_header() + "(assert (<= X_3 1))", "4:13", "X_3 is used but not declared"),
    (_header() + "(assert (<= X_0 Y_0))", "4:9", "not both"),
    (
        "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\n(assert (<= (+ X_0 X_1) 1))",
        "2:9",
        "linear constraints among inputs",
    ),
    (_header() + "(assert (< Y_0 1))", "4:9", "strict inequality"),
    (_header() + "(assert (not (<= Y_0 1)))", "4:9", "'not' is not supported"),
    ("(declare-const X_0 Int)", "1:20", "only Real"),
    ("(declare-const x Real)", "1:16", "VNN-LIB names inputs X_i"),
    (_header() + "(declare-const Y_1 Real)", "4:16", "declared twice (first at line 3)"),
    ("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)", "1:40", "X_1 is not"),
    (_header() + "(assert (>= X_0 0))(assert (<= Y_0 1))", "1:16", "X_0 has no upper bound"),
    (_header() + "(assert (<= (* Y_0 Y_1) 1))", "4:13", "one non-constant factor"),
    (_header() + "(assert (<= (/ Y_0 0) 1))", "4:13", "division by zero"),
    (_header() + "assert", "4:1", "outside parentheses"),
    (_header() + '(assert (<= Y_0 "1"))', "4:17", "quoted strings"),
    (_header() + "(assert (<= Y_0 1 2))", "4:9", "two operands"),
    (_header() + "(assert (<= Y_0 abc))", "4:17", "expected a number or a declared variable"),
    ("(declare-const Y_0 Real)", "", "no X_ variable is declared"),
]


@pytest.mark.parametrize(("text", "where", "message"), ERRORS, ids=[e[2] for e in ERRORS])
def test_errors_name_the_line_and_column(text: str, where: str, message: str) -> None:
    with pytest.raises(
        VnnlibError, match="^prop.vnnlib" + (f":{where}: " if where else ": ") + ".*" + re.escape(message)
    ):
        parse_vnnlib(text, "prop.vnnlib")


def test_a_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.vnnlib"
    path.write_text(_header() + "\n\n   (assert (<= X_0 (* X_0 X_0)))\n")
    with pytest.raises(VnnlibError, match=f"^{path}:6:20: "):
        read_vnnlib(path)


# -- exact numbers -------------------------------------------------------------------------------


decimals = st.builds(
    lambda sign, whole, digits, exponent: Fraction(f"{sign}{whole}.{digits}e{exponent}"),
    st.sampled_from(["", "-"]),
    st.integers(0, 10**6),
    st.integers(0, 10**20),
    st.integers(-30, 30),
)


@given(decimals)
def test_float_box_rounds_outward_and_inward(value: Fraction) -> None:
    box = InputBox([value], [value])
    (low,), (high,) = box.float_bounds()
    assert Fraction(low) <= value <= Fraction(high)
    assert math.nextafter(low, math.inf) > value or low == value  # the nearest float below, not any
    assert math.nextafter(high, -math.inf) < value or high == value
    (inner_low,), (inner_high,) = box.float_bounds(inward=True)
    assert (
        Fraction(inner_low) >= value >= Fraction(inner_high)
    )  # a point box has a float inside only if exact
    assert box.contains([low]) == (Fraction(low) == value)


def test_atoms_hold_exactly_not_in_floating_point() -> None:
    atom = (
        parse_vnnlib(_header(1, 1) + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= Y_0 0.1))")
        .regions[0]
        .disjuncts[0][0]
    )
    assert atom.bound == Fraction(1, 10)
    assert not atom.holds([0.1])  # the float 0.1 is 0.1000000000000000055... > 1/10
    assert atom.holds([math.nextafter(0.1, 0.0)])


# -- writing -------------------------------------------------------------------------------------


fractions = st.one_of(
    decimals,
    st.builds(Fraction, st.integers(-(10**6), 10**6), st.integers(1, 10**4)),  # 1/3: written as (/ 1 3)
    st.floats(-1e6, 1e6, allow_nan=False).map(Fraction),
)


@st.composite
def properties(draw: st.DrawFn) -> Property:
    inputs, outputs = draw(st.integers(1, 4)), draw(st.integers(1, 4))

    def atom() -> Atom:
        indices = draw(st.lists(st.integers(0, outputs - 1), min_size=1, max_size=outputs, unique=True))
        coefficients = [(j, draw(fractions.filter(bool))) for j in sorted(indices)]
        return Atom(coefficients, draw(fractions))

    boxes = []
    for _ in range(draw(st.integers(1, 3))):
        ends = [sorted((draw(fractions), draw(fractions))) for _ in range(inputs)]
        box = InputBox([lo for lo, _ in ends], [hi for _, hi in ends])
        if box not in boxes:  # equal boxes are one region when read
            boxes.append(box)
    regions = [
        Region(
            box, [[atom() for _ in range(draw(st.integers(0, 3)))] for _ in range(draw(st.integers(1, 3)))]
        )
        for box in boxes
    ]
    return Property(inputs, outputs, regions)


@given(properties())
def test_write_then_read_gives_the_same_property(prop: Property) -> None:
    assert parse_vnnlib(format_property(prop, ["a comment", "(assert false) in a comment"])) == prop


def test_write_property_is_atomic_and_reads_back(tmp_path: Path) -> None:
    prop = Property(1, 2, [Region(InputBox([Fraction(1, 3)], [1]), [[Atom([(0, 1), (1, -1)], 0)]])])
    write_property(tmp_path / "p.vnnlib", prop)
    assert read_vnnlib(tmp_path / "p.vnnlib") == prop
    assert [p.name for p in tmp_path.iterdir()] == ["p.vnnlib"]  # no temporary file left
    assert "(/ 1 3)" in (tmp_path / "p.vnnlib").read_text()


def test_robustness_property_as_relaxlab_export_writes_it(tmp_path: Path) -> None:
    x = torch.tensor([[0.0, 0.95], [0.5, 1.0 / 3.0]], dtype=torch.float64)
    write_vnnlib(tmp_path / "p.vnnlib", x, 0.1, label=2, num_classes=4)
    prop = read_vnnlib(tmp_path / "p.vnnlib")
    assert prop == robustness_property(x.reshape(-1).tolist(), 0.1, 2, 4)
    box = prop.regions[0].box
    for i, value in enumerate(x.reshape(-1).tolist()):  # the decimals written read back as the same floats
        assert (float(box.lower[i]), float(box.upper[i])) == (max(value - 0.1, 0.0), min(value + 0.1, 1.0))
    # Y_2 - Y_j <= 0 for j = 0, 1, 3: some other class scores at least as high as label 2
    assert prop.regions[0].disjuncts == tuple((Atom(sorted([(2, 1), (j, -1)]), 0),) for j in (0, 1, 3))
    assert "(>= Y_0 Y_2)" in (tmp_path / "p.vnnlib").read_text()  # as the competition writes it
    for bad, match in (({"label": 4}, "label"), ({"eps": -0.1}, "eps"), ({"domain": (1.0, 0.0)}, "domain")):
        arguments = {"eps": 0.1, "label": 2, "num_classes": 4, **bad}
        with pytest.raises(ValueError, match=match):
            write_vnnlib(tmp_path / "q.vnnlib", x, **arguments)
    with pytest.raises(ValueError, match="outside the domain"):
        write_vnnlib(tmp_path / "q.vnnlib", x + 1, 0.1, 2, 4)
