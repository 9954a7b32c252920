"""Relaxation specs: per-case unit tests for the built-ins, parameters, validation, evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from attrs import evolve

import relaxlab
from relaxlab.core.expr import L, Opaque, Param, Sigmoid, U
from relaxlab.core.lines import CHORD, EXACT_NEGATIVE, EXACT_POSITIVE, IDENTITY, ZERO
from relaxlab.core.relaxation import BoundsTransform, CaseBounds, Line, ParamSpec, ReluRelaxation, line
from relaxlab.core.stability import Stability, classify, stability_masks

F64 = torch.float64


def coefficients(name: str, lower: float, upper: float) -> tuple[float, float, float, float]:
    relaxation = relaxlab.get_relaxation(name)
    values = relaxation.coefficients(torch.tensor([lower], dtype=F64), torch.tensor([upper], dtype=F64))
    return tuple(float(v) for v in values.tensors)  # type: ignore[return-value]


def test_stability_boundary_convention() -> None:
    lb = torch.tensor([0.0, -1.0, 0.0, -1.0, 1.0])
    ub = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0])
    masks = stability_masks(lb, ub)
    assert masks[Stability.NEGATIVE].tolist() == [True, True, False, False, False]
    assert masks[Stability.POSITIVE].tolist() == [False, False, True, False, True]
    assert masks[Stability.UNSTABLE].tolist() == [False, False, False, True, False]
    assert sum(m.long() for m in masks.values()).eq(1).all()
    assert [classify(a, b) for a, b in zip(lb.tolist(), ub.tolist(), strict=True)] == [
        Stability.NEGATIVE,
        Stability.NEGATIVE,
        Stability.POSITIVE,
        Stability.UNSTABLE,
        Stability.POSITIVE,
    ]


# (name, l, u) -> (lower slope, lower offset, upper slope, upper offset): App. H / DESIGN.md table by hand.
CASES = [
    ("IBP", -3.0, -1.0, (0, 0, 0, 0)),
    ("IBP", -1.0, 3.0, (0, 0, 0, 3)),
    ("IBP", 1.0, 3.0, (0, 1, 0, 3)),
    ("hBox", -1.0, 3.0, (0, 0, 0, 3)),
    ("hBox", 1.0, 3.0, (1, 0, 1, 0)),
    ("DeepZ", -1.0, 3.0, (0.75, 0, 0.75, 0.75)),
    ("CROWN", -3.0, 1.0, (0, 0, 0.25, 0.75)),
    ("CROWN", -1.0, 3.0, (1, 0, 0.75, 0.75)),
    ("CROWN", -1.0, 1.0, (0, 0, 0.5, 0.5)),  # -l >= u picks the lower slope 0
    ("hBox-Diag", -1.0, 3.0, (1, 0, 1, 1)),
    ("hBox-Diag-C", -3.0, -1.0, (1, 0, 1, 3)),
    ("hBox-Switch", -3.0, 1.0, (0, 0, 0, 1)),
    ("hBox-Switch", -1.0, 3.0, (1, 0, 1, 1)),
    ("CROWN-0", -1.0, 3.0, (0, 0, 0.75, 0.75)),
    ("CROWN-1", -3.0, 1.0, (1, 0, 0.25, 0.75)),
    ("CROWN-0-C", 1.0, 3.0, (0, 1, 1, 0)),
    ("CROWN-1-C", -3.0, -1.0, (1, 0, 0, 0)),
    ("CROWN-0-Tria", -1.0, 3.0, (0, 0, 1, 1)),
    ("CROWN-1-Tria", -1.0, 3.0, (1, 0, 0, 3)),
    ("CROWN-0-Tria-C", -3.0, -1.0, (0, 0, 1, 3)),
    ("CROWN-0-Tria-C", 1.0, 3.0, (0, 1, 1, 0)),
    ("CROWN-1-Tria-C", -3.0, -1.0, (1, 0, 0, 0)),
    ("CROWN-1-Tria-C", 1.0, 3.0, (1, 0, 0, 3)),
    (
        "LooseIBP-C",
        1.0,
        3.0,
        (0, 0, 0, 4),
    ),  # [1, 3] widened by omega=1 to [0, 4]: unstable? no, l'=0 -> positive
]


@pytest.mark.parametrize(("name", "lower", "upper", "expected"), CASES)
def test_builtin_lines_per_case(name: str, lower: float, upper: float, expected: tuple[float, ...]) -> None:
    assert coefficients(name, lower, upper) == pytest.approx(expected, abs=1e-15)


def test_soft_relaxations_follow_kappa_and_pivot_the_upper_line() -> None:
    lower, upper = -1.0, 3.0
    kappa = float(torch.sigmoid(torch.tensor(lower / upper - upper / lower, dtype=F64)))
    lam = upper / (upper - lower)
    ls, lo, us, uo = coefficients("DeepZ-Soft", lower, upper)
    assert (ls, lo, us) == pytest.approx((kappa, 0.0, kappa))
    # kappa >= lambda here: the upper line pivots at (l, 0)
    assert kappa >= lam and uo == pytest.approx(-kappa * lower)
    ls, lo, us, uo = coefficients("DeepZ-Soft", -3.0, 1.0)
    kappa2 = float(torch.sigmoid(torch.tensor(-3.0 - 1 / -3.0, dtype=F64)))
    assert kappa2 < 0.25 and uo == pytest.approx(1.0 - kappa2 * 1.0)  # pivots at (u, u)
    assert coefficients("CROWN-Soft", lower, upper)[:2] == pytest.approx((kappa, 0.0))


def test_looseibp_dc_widens_by_floor_and_ceil() -> None:
    relaxation = relaxlab.get_relaxation("LooseIBP-DC").with_params(omega=0.5, F=10.0)
    lb, ub = relaxation.transform_bounds(torch.tensor([-0.13], dtype=F64), torch.tensor([0.27], dtype=F64))
    # ceil(-1.3) - (-1.3) = 0.3 -> l' = -0.13 - 0.15; 2.7 - floor(2.7) = 0.7 -> u' = 0.27 + 0.35
    assert float(lb) == pytest.approx(-0.28)
    assert float(ub) == pytest.approx(0.62)


def test_aliases_are_detected_from_identical_specs() -> None:
    relaxations = relaxlab.get_registry().relaxations
    assert relaxations.aliases("hBox") == ["DeepZ-Box"]
    assert relaxations.aliases("DeepZ-Switch") == ["hBox-Switch"]
    assert relaxations.primary("DeepZ-Diag-C") == "hBox-Diag-C"
    assert relaxations.aliases("CROWN") == []


def test_is_interval_only_for_all_constant_lines() -> None:
    flags = {n: relaxlab.get_relaxation(n).is_interval for n in relaxlab.get_registry().relaxations.names()}
    assert {n for n, f in flags.items() if f} == {"IBP", "LooseIBP-C", "LooseIBP-DC"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("LooseIBP-C(omega=-1)", "omega must be >= 0"),
        ("LooseIBP-DC(F=0)", "F must be > 0"),
        ("LooseIBP-DC(F=-2, omega=1)", "F must be > 0"),
        ("LooseIBP-C(omega=inf)", "must be finite"),
        ("LooseIBP-C(omega=nan)", "must be finite"),
        ("DeepZ-Soft(gamma=abc)", "needs a number"),
        ("DeepZ-Soft(beta=1)", "unknown parameter 'beta'"),
        ("CROWN(gamma=1)", "has no parameters"),
    ],
)
def test_bad_parameters_get_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        relaxlab.get_relaxation(text)


def test_parameters_by_name_and_label() -> None:
    relaxation = relaxlab.get_relaxation("looseibp dc (F=10, omega=0.5)")
    assert relaxation.parameters == {"omega": 0.5, "F": 10.0}
    assert relaxation.label == "LooseIBP-DC(omega=0.5, F=10)"
    assert relaxlab.get_relaxation("LooseIBP-C(omega=1)") == relaxlab.get_relaxation("LooseIBP-C")


def test_invalid_specs_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="undeclared parameter"):
        ReluRelaxation(
            name="x",
            negative=EXACT_NEGATIVE,
            positive=EXACT_POSITIVE,
            unstable=CaseBounds(ZERO, CHORD.substitute({"l": Param("p")})),
        )
    with pytest.raises(ValueError, match="not allowed"):
        evolve(relaxlab.get_relaxation("CROWN"), name="bad;name")
    with pytest.raises(ValueError, match="must be in"):
        evolve(relaxlab.get_relaxation("CROWN"), intermediate="sideways")
    with pytest.raises(ValueError, match="must be in"):
        evolve(relaxlab.get_relaxation("CROWN"), final="interval")
    with pytest.raises(ValueError, match="must be >= 0"):
        ReluRelaxation(
            name="y",
            negative=EXACT_NEGATIVE,
            positive=EXACT_POSITIVE,
            unstable=CaseBounds(IDENTITY, CHORD),
            params=(ParamSpec("w", -1.0, minimum=0.0),),
        )


def test_canonical_text_is_the_spec_and_only_the_spec() -> None:
    """Equal specs give equal text whatever their docs; every part that decides the lines changes it."""
    crown = relaxlab.get_relaxation("CROWN")
    text = crown.canonical()
    assert text is not None and json.loads(text)[0] == "ReluRelaxation"
    assert evolve(crown, summary="other words", reference="elsewhere").canonical() == text
    assert (
        ReluRelaxation(
            name="CROWN", negative=crown.negative, unstable=crown.unstable, positive=crown.positive
        ).canonical()
        == text
    )  # built again: the same text
    changed = [
        evolve(crown, name="CROWN-renamed"),  # the name is part of what a counterexample says
        evolve(crown, intermediate="interval"),
        evolve(crown, unstable=CaseBounds(ZERO, CHORD)),
        evolve(crown, transform=BoundsTransform(L - 1.0, U + 1.0)),
    ]
    loose = relaxlab.get_relaxation("LooseIBP-C")
    texts = [r.canonical() for r in changed] + [loose.canonical(), loose.with_params(omega=0.5).canonical()]
    assert len({text, *texts}) == len(texts) + 1


def test_specs_with_code_have_no_canonical_text() -> None:
    opaque = Line(Opaque("my-slope", lambda env: env["u"] / (env["u"] - env["l"])), 0.0)

    class MyLine(Line):
        pass

    class MyRelaxation(ReluRelaxation):
        pass

    crown = relaxlab.get_relaxation("CROWN")
    assert evolve(crown, unstable=CaseBounds(ZERO, opaque)).canonical() is None
    assert (
        evolve(crown, unstable=CaseBounds(ZERO, MyLine(crown.unstable.upper.slope, 0.0))).canonical() is None
    )
    assert (
        MyRelaxation(
            name="mine",
            negative=EXACT_NEGATIVE,
            unstable=CaseBounds(ZERO, line(1.0)),
            positive=EXACT_POSITIVE,
        ).canonical()
        is None
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coefficients_keep_shape_dtype_device_and_gradients_finite(
    dtype: torch.dtype, device: torch.device
) -> None:
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(4, 5, generator=gen, dtype=dtype) * 3
    radius = torch.rand(4, 5, generator=gen, dtype=dtype)
    centre[0, :3] = torch.tensor([0.0, 1e-30, -1e-30], dtype=dtype)
    radius[0, :3] = torch.tensor([0.0, 1e-30, 0.0], dtype=dtype)
    for name in relaxlab.get_registry().relaxations.names():
        lb = (centre - radius).to(device).requires_grad_(True)
        ub = (centre + radius).to(device).requires_grad_(True)
        values = list(relaxlab.get_relaxation(name).coefficients(lb, ub).tensors)
        for v in values:
            assert v.shape == lb.shape and v.dtype == dtype and v.device == lb.device
            assert torch.isfinite(v).all(), name
        sum(v.sum() for v in values).backward()
        for grad in (lb.grad, ub.grad):  # None where no line of the relaxation reads that bound
            assert grad is None or torch.isfinite(grad).all(), name


def _per_case_reference(
    relaxation: ReluRelaxation, lower: torch.Tensor, upper: torch.Tensor
) -> list[torch.Tensor]:
    """Coefficients computed the slow, obvious way: each case's lines on that case's elements only."""
    lb, ub = relaxation.transform_bounds(lower, upper)
    out = [torch.full_like(lb, math.nan) for _ in range(4)]
    for stability, mask in stability_masks(lb, ub).items():
        env = {"l": lb[mask], "u": ub[mask], **relaxation.parameters}
        values = [v for ln in relaxation.case(stability).lines() for v in ln.evaluate(env)]
        for target, value in zip(out, values, strict=True):
            target[mask] = value if isinstance(value, torch.Tensor) else torch.full_like(lb[mask], value)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coefficients_equal_the_per_case_evaluation_exactly(dtype: torch.dtype) -> None:
    """The evaluator (cases merged by equal expressions, float case weights, memoised names,
    representative points for divisions) changes no value: bitwise equal to evaluating every
    case on its own elements. Sigmoid lines may differ by one ulp (torch's vectorised and
    scalar exp differ), so those are compared to 2 ulp."""
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(4000, generator=gen, dtype=dtype) * 3 for _ in range(2))
    special = torch.tensor(
        [
            [0.0, 0.0],
            [-1.0, 0.0],
            [0.0, 1.0],
            [-0.0, 0.0],
            [0.0, -0.0],
            [1.0, 1.0],
            [-1.0, -1.0],
            [-1e-30, 1e-30],
            [-1e-20, 0.0],
            [0.0, 1e-20],
            [2.0, 2.0],
            [-3.0, 3.0],
            [-1.0, 1.0],
            [1e-6, 1e-6],
            [-5e3, 1e-3],
            [-1e-3, 5e3],
        ],
        dtype=dtype,
    )
    lower = torch.cat([torch.minimum(a, b), special[:, 0]])
    upper = torch.cat([torch.maximum(a, b), special[:, 1]])
    registry = relaxlab.get_registry().relaxations
    for name in registry.names():
        relaxation = registry.get(name)
        soft = any(isinstance(node, Sigmoid) for e in relaxation.expressions() for node in e.walk())
        got = list(relaxation.coefficients(lower, upper).tensors)
        for field_name, value, expected in zip(
            ("ls", "lo", "us", "uo"), got, _per_case_reference(relaxation, lower, upper), strict=True
        ):
            if soft:
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(
                    value, expected, rtol=2 * eps, atol=0.0, msg=f"{name} {field_name}"
                )
            else:
                assert torch.equal(value, expected), (name, field_name, (value != expected).nonzero()[:5])


def test_zero_hints_are_true_and_equal_plans_share_one_tensor() -> None:
    """``RelaxationTensors.zeros`` lets the engine skip products; a wrong hint would drop a term."""
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(500, generator=gen, dtype=F64) * 2 for _ in range(2))
    lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    registry = relaxlab.get_registry().relaxations
    for name in registry.names():
        lines = registry.get(name).coefficients(lower, upper)
        for field_name in lines.zeros:
            assert bool((getattr(lines, field_name) == 0).all()), (name, field_name)
    for name in ("IBP", "LooseIBP-DC"):
        assert relaxlab.get_relaxation(name).coefficients(lower, upper).zeros >= {
            "lower_slope",
            "upper_slope",
        }
    deepz = relaxlab.get_relaxation("DeepZ").coefficients(lower, upper)
    assert deepz.lower_slope is deepz.upper_slope and deepz.zeros == {"lower_offset"}
