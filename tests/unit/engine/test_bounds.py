"""The engine's checked entry point: the function the user gave, and numbers that stay numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import relaxlab
from relaxlab.engine.bounds import _check_centre, compute_bounds
from relaxlab.engine.network import UnsupportedNetworkError

F64 = torch.float64


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).double().eval()


class TimesTen(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * super().forward(x)


class PlusFive(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 5


class TimesThree(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * super().forward(x)


@pytest.mark.parametrize(
    "build",
    [
        lambda: TimesTen(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)),
        lambda: nn.Sequential(PlusFive(2, 4), nn.ReLU(), nn.Linear(4, 1)),
        lambda: nn.Sequential(nn.Linear(2, 4), TimesThree(), nn.Linear(4, 1)),
        lambda: nn.Sequential(nn.Sequential(TimesTen(nn.Linear(2, 4))), nn.ReLU(), nn.Linear(4, 1)),
    ],
    ids=["Sequential x10", "Linear +5", "ReLU x3", "nested Sequential x10"],
)
def test_a_layer_that_overrides_forward_is_bounded_as_it_computes_or_refused_by_name(build) -> None:  # noqa: ANN001
    """Never the base class's function: the override is traced (``10 * ...`` is affine and bounded as
    such) or refused naming the node (``super().forward(x)`` of Linear reads its weight inside forward)."""
    model = build().double()
    x = torch.rand(3, 2, dtype=F64)
    try:
        lb, ub = relaxlab.compute_bounds(model, x, 0.3, "CROWN")
    except UnsupportedNetworkError as error:
        assert any(text in str(error) for text in ("overrides forward", "traced into", "is not supported"))
        return
    with torch.no_grad():
        points = x + 0.3 * (2 * torch.rand(500, 3, 2, dtype=F64) - 1)
        values = model(points.flatten(0, 1)).reshape(500, 3, -1)
        at_zero = relaxlab.compute_bounds(model, x, 0.0, "CROWN")[0]
    assert bool((values >= lb - 1e-9).all()) and bool((values <= ub + 1e-9).all())
    torch.testing.assert_close(at_zero, model(x).detach(), atol=1e-12, rtol=0)


def test_hooks_are_refused_and_parametrized_weights_are_bounded_exactly() -> None:
    hooked = _net()
    hooked[0].register_forward_hook(lambda module, inputs, output: output * 3)
    with pytest.raises(UnsupportedNetworkError, match="hooks"):
        relaxlab.compute_bounds(hooked, torch.zeros(1, 2, dtype=F64), 0.0, "IBP")
    model = _net()

    class Doubled(nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return 2 * weight

    parametrize.register_parametrization(model[0], "weight", Doubled())
    x = torch.tensor([[0.3, -0.2]], dtype=F64)
    lb, ub = relaxlab.compute_bounds(model, x, 0.0, "CROWN")
    torch.testing.assert_close(lb, model(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(ub, model(x), rtol=0, atol=1e-12)


def test_the_centre_check_refuses_bounds_that_miss_the_model_output() -> None:
    model = _net()
    x = torch.zeros(1, 2, dtype=F64)
    out = model(x).detach()
    _check_centre(model, x, None, out - 1e-12, out + 1e-12)  # inside (within rounding): fine
    with pytest.raises(UnsupportedNetworkError, match="outside the bounds"):
        _check_centre(model, x, None, out + 1.0, out + 2.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"domain": (torch.tensor([float("nan"), 0.0]), 1.0)}, ValueError, "NaN"),
        ({"domain": (torch.zeros(7), 1.0)}, ValueError, "does not broadcast"),
        ({"C": torch.zeros(0, 1, dtype=F64)}, ValueError, "no rows"),
        ({"eps": 1e308}, OverflowError, "overflow"),
    ],
)
def test_bad_numbers_are_refused_with_a_message(kwargs: dict, error: type, match: str) -> None:
    options = {"eps": 0.1, **kwargs}
    eps = options.pop("eps")
    with pytest.raises(error, match=match):
        relaxlab.compute_bounds(_net(), torch.rand(3, 2, dtype=F64), eps, "CROWN", **options)


def test_overflowing_weights_give_an_error_naming_where_not_nan() -> None:
    model = (
        nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)).double().eval()
    )
    with torch.no_grad():
        model[2].weight.mul_(1e300)
        model[4].weight.mul_(1e200)
    for name in ("IBP", "CROWN"):
        with pytest.raises(OverflowError, match="overflow torch.float64 .* finite, in the last affine layer"):
            relaxlab.compute_bounds(model, torch.rand(2, 2, dtype=F64), 1.0, name)


def test_half_precision_and_empty_batches_are_refused() -> None:
    with pytest.raises(TypeError, match="float32 or float64 only"):
        compute_bounds(
            _net().half(), torch.zeros(1, 2, dtype=torch.float16), 0.1, relaxlab.get_relaxation("IBP")
        )
    with pytest.raises(TypeError, match="float32 or float64 only"):
        compute_bounds(
            _net().bfloat16(), torch.zeros(1, 2, dtype=torch.bfloat16), 0.1, relaxlab.get_relaxation("IBP")
        )
    with pytest.raises(ValueError, match="empty batch"):
        relaxlab.compute_bounds(_net(), torch.zeros(0, 2, dtype=F64), 0.1, "IBP")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    with pytest.raises(ValueError, match="empty batch"):
        relaxlab.compute_bounds(conv, torch.zeros(0, 1, 4, 4), 0.1, "CROWN")
