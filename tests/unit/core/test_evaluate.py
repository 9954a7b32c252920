"""The coefficient evaluator with per-element parameter values (``values=``)."""

from __future__ import annotations

import pytest
import torch
from attrs import evolve

import relaxlab
from relaxlab.core.expr import Param, U
from relaxlab.core.relaxation import PARAM_CLIP, CaseBounds, ParamSpec, ReluRelaxation, line
from relaxlab.core.stability import Stability, stability_masks

F64 = torch.float64
#: Per-element settings tried for each parameter: admissible for every built-in parameter.
SETTINGS = (0.25, 1.0, 3.0, 40.0)


def _alpha_crown() -> ReluRelaxation:
    """CROWN with the unstable lower slope a parameter α ∈ [0, 1] (sound for every α there)."""
    crown = relaxlab.get_relaxation("CROWN")
    return evolve(
        crown,
        name="alpha-CROWN",
        unstable=CaseBounds(line(Param("alpha"), 0.0), crown.unstable.upper),
        params=(ParamSpec("alpha", 0.5, minimum=0.0, maximum=1.0),),
        values=(),
    )


def _bounds(dtype: torch.dtype, n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(n, generator=gen, dtype=dtype) * 3 for _ in range(2))
    return torch.minimum(a, b), torch.maximum(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_element_values_equal_the_spec_set_to_each_value(dtype: torch.dtype) -> None:
    """Element by element, ``values=`` gives what the spec with that setting gives (to 2 ulp: a
    sigmoid's vectorised exp may differ by one), for the transform and the four coefficients."""
    lower, upper = _bounds(dtype)
    which = torch.arange(lower.numel()) % len(SETTINGS)
    tried = 0
    for relaxation in [*relaxlab.get_registry().relaxations.values(), _alpha_crown()]:
        for spec in relaxation.params:
            choices = [
                v
                for v in SETTINGS
                if spec.proved_range(spec.default)[0] < v <= spec.proved_range(spec.default)[1]
            ]
            per_element = torch.tensor(choices, dtype=dtype)[which % len(choices)]
            got_bounds = relaxation.transform_bounds(lower, upper, values={spec.name: per_element})
            got = relaxation.coefficients(lower, upper, values={spec.name: per_element}).tensors
            for k, value in enumerate(choices):
                mask = (which % len(choices)) == k
                fixed = relaxation.with_params(**{spec.name: value})
                expected_bounds = fixed.transform_bounds(lower[mask], upper[mask])
                expected = fixed.coefficients(lower[mask], upper[mask]).tensors
                eps = torch.finfo(dtype).eps
                for g, e in zip((*got_bounds, *got), (*expected_bounds, *expected), strict=True):
                    torch.testing.assert_close(
                        g[mask], e, rtol=2 * eps, atol=0.0, msg=f"{relaxation.name} {spec.name}={value}"
                    )
            tried += 1
    assert tried >= 5  # CROWN-Soft, CROWN-Soft-IBP, DeepZ-Soft, LooseIBP-C, LooseIBP-DC (2), alpha-CROWN


def test_gradients_flow_to_the_values() -> None:
    """d(sum of lower slopes)/dα is 1 exactly on the unstable elements (slope α there) and 0 elsewhere."""
    lower, upper = _bounds(F64)
    alpha = torch.full_like(lower, 0.3, requires_grad=True)
    lines = _alpha_crown().coefficients(lower, upper, values={"alpha": alpha})
    lines.lower_slope.sum().backward()
    assert alpha.grad is not None
    unstable = stability_masks(lower, upper)[Stability.UNSTABLE]
    assert unstable.any() and (~unstable).any()
    assert torch.equal(alpha.grad, unstable.to(F64))
    assert torch.equal(lines.lower_slope[unstable], alpha.detach()[unstable])


def test_values_without_a_proof_behind_them_are_refused_by_name() -> None:
    lower, upper = _bounds(F64, 8)
    alpha = _alpha_crown()
    bad = torch.full_like(lower, 0.5)
    bad[3] = 1.5
    cases: list[tuple[ReluRelaxation, dict[str, object], str]] = [
        (alpha, {"beta": 0.5}, "alpha-CROWN has no parameter 'beta' (its parameters: alpha)"),
        (alpha, {"alpha": bad}, "values of 'alpha' span [0.5, 1.5], outside [0, 1]"),
        (alpha, {"alpha": torch.full_like(lower, float("nan"))}, "values of 'alpha' span [nan, nan]"),
        (alpha, {"alpha": -0.1}, "outside [0, 1]"),
        (alpha, {"alpha": torch.full((3,), 0.5, dtype=F64)}, "does not broadcast to the bounds' shape (8,)"),
        # F > 0 is strict; γ has no maximum, so it is proved (and allowed) up to the clip only
        (relaxlab.get_relaxation("LooseIBP-DC"), {"F": torch.zeros_like(lower)}, "outside (0, "),
        (
            relaxlab.get_relaxation("CROWN-Soft"),
            {"gamma": torch.full_like(lower, 5 * PARAM_CLIP)},
            f"outside (0, {PARAM_CLIP:g}]",
        ),
    ]
    for relaxation, values, message in cases:
        with pytest.raises(ValueError) as caught:
            relaxation.coefficients(lower, upper, values=values)  # type: ignore[arg-type]
        assert message in str(caught.value), (values, str(caught.value))


def test_values_keep_the_bounds_dtype_and_broadcast() -> None:
    """A float32 tensor of values is evaluated in the bounds' float64; one value per row broadcasts."""
    lower, upper = (t.reshape(20, 30) for t in _bounds(F64))
    per_row = torch.linspace(0.0, 1.0, 20, dtype=torch.float32).reshape(20, 1)
    lines = _alpha_crown().coefficients(lower, upper, values={"alpha": per_row})
    assert all(t.dtype == F64 and t.shape == lower.shape for t in lines.tensors)
    unstable = stability_masks(lower, upper)[Stability.UNSTABLE]
    expected = per_row.to(F64).expand_as(lower)
    assert torch.equal(lines.lower_slope[unstable], expected[unstable])


def test_a_parameter_combined_before_it_meets_the_bounds_takes_values_in_float64_only() -> None:
    """``u·(1 - θ/2000)``: as a number θ/2000 is computed in float64 (what the prover models); per
    element it would be rounded in float32, so float32 bounds are refused and float64 ones served."""
    crown = relaxlab.get_relaxation("CROWN")
    theta = Param("theta")
    spec = evolve(
        crown,
        name="theta-upper",
        negative=CaseBounds(line(0.0, 0.0), line(0.0, U * (1.0 - theta / 2000.0))),
        params=(ParamSpec("theta", 0.0, minimum=0.0, maximum=1000.0),),
        values=(),
    )
    lower64, upper64 = _bounds(F64, 8)
    lower64, upper64 = lower64 - 20.0, upper64 - 10.0  # all negative: the case with θ
    got = spec.coefficients(lower64, upper64, values={"theta": torch.full_like(lower64, 500.0)})
    assert torch.equal(
        got.upper_offset, spec.with_params(theta=500.0).coefficients(lower64, upper64).upper_offset
    )
    with pytest.raises(ValueError, match="per-element values of 'theta' need float64 bounds"):
        spec.coefficients(lower64.float(), upper64.float(), values={"theta": torch.full_like(lower64, 500.0)})
    # a bare parameter, or its negation (exact), meets the bounds directly: any dtype
    lower32, upper32 = lower64.float(), upper64.float()
    assert (
        _alpha_crown()
        .coefficients(lower32, upper32, values={"alpha": torch.full_like(lower32, 0.5)})
        .lower_slope.dtype
        == torch.float32
    )
    loose = relaxlab.get_relaxation("LooseIBP-C")  # -ω: a sign change, exact
    assert (
        loose.transform_bounds(lower32, upper32, values={"omega": torch.full_like(lower32, 2.0)})[0].dtype
        == torch.float32
    )
