"""Bounds that hold in the floating-point arithmetic used (issue 27, items 4 and 5).

``rigorous=True`` rounds the input box outward and widens every bound by ``2·γ_K·A``, a bound on
its rounding error (Higham's for sums and products: ``A`` the same computation on absolute values,
``K`` the roundings on the longest path). The reference for "the function" is the network in
exact arithmetic, approximated here by float64 evaluation of the float32 weights at sampled points
(rounding there is ~1e-16 of the magnitudes, far below the float32 effects tested).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import relaxlab
from relaxlab.core.evaluate import OutsideProvedDomainError
from relaxlab.engine import UnsupportedNetworkError
from relaxlab.nn import Normalize


def _cancelling_network() -> nn.Sequential:
    """``relu(1e8·x1) - relu(x2) - 0.75``: float32 interval arithmetic cancels the constant away."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e8, 0.0], [0.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[2].bias.fill_(-0.75)
    return model.eval()


def test_float32_cancellation_is_caught_by_the_rounding_margin() -> None:
    model = _cancelling_network()
    x = torch.tensor([[0.0, 0.5]])
    plain, _ = relaxlab.compute_bounds(model, x, 0.5, "IBP")
    rigorous, _ = relaxlab.compute_bounds(model, x, 0.5, "IBP", rigorous=True)
    true_minimum = -1.0 - 0.75  # x1 <= 0 switches the first ReLU off; x2 = 1
    assert float(plain.detach()) > true_minimum  # the plain float32 bound is unsound here
    assert float(rigorous.detach()) <= true_minimum


@st.composite
def _cases(draw: st.DrawFn) -> tuple[nn.Sequential, torch.Tensor, float, object, torch.dtype]:
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    widths = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], 2))
    model = nn.Sequential(*layers).to(dtype)
    scale = draw(st.sampled_from([1.0, 1e4, 1e8]))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator) * scale ** draw(st.sampled_from([0, 1]))
            )
    x = torch.rand(2, widths[0], generator=generator).to(dtype)
    eps = draw(st.sampled_from([0.0, 1e-6, 0.1, 1.0]))
    name = draw(
        st.sampled_from(
            [
                "IBP",
                "CROWN",
                "DeepZ",
                "CROWN-IBP (R)",
                "hBox-Hybrid",
                "LooseIBP-C(omega=1e20)",
                "LooseIBP-C(omega=1e8)",
                "LooseIBP-DC(omega=1e10, F=3)",
            ]
        )
    )
    return model.eval(), x, eps, relaxlab.get_relaxation(name), dtype


@given(_cases())
def test_rigorous_bounds_hold_in_the_arithmetic_used(case: tuple) -> None:
    model, x, eps, relaxation, dtype = case
    try:
        lb, ub = relaxlab.compute_bounds(model, x, eps, relaxation, rigorous=True)
    except OverflowError:
        return  # refused by name: the magnitudes overflow the dtype
    except OutsideProvedDomainError as error:  # refused by name: beyond where the relaxation is proved sound
        assert relaxation.name.startswith("LooseIBP"), (
            error
        )  # the only entries here that are not scale invariant
        return
    exact = model.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x64 = x.double()
        points = x64 + eps * (2 * torch.rand(500, *x.shape, generator=generator, dtype=torch.float64) - 1)
        corners = x64 + eps * torch.sign(torch.randn(200, *x.shape, generator=generator, dtype=torch.float64))
        values = exact(torch.cat([points, corners]).flatten(0, 1)).reshape(700, *lb.shape)
    assert bool((values >= lb.double()).all()), float((lb.double() - values).max())
    assert bool((values <= ub.double()).all()), float((values - ub.double()).max())


def test_the_margin_is_tiny_in_float64_on_ordinary_networks() -> None:
    """Certification pays almost nothing for it: the widening is ~1e-13 of the magnitudes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 10)).double().eval()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    for name in ("IBP", "CROWN", "DeepZ"):
        plain = relaxlab.compute_bounds(model, x, 0.05, name)
        rigorous = relaxlab.compute_bounds(model, x, 0.05, name, rigorous=True)
        assert bool((rigorous[0] <= plain[0]).all()) and bool((rigorous[1] >= plain[1]).all())
        torch.testing.assert_close(rigorous[0], plain[0], atol=1e-10, rtol=0)


def test_a_network_that_differs_from_the_model_is_caught_in_float32_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 27, item 5: the float64 replay at the centres compares the parsed network with the model
    in every dtype (here a class whose forward changed behind the parser's back)."""
    model = nn.Sequential(Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(4, 2)).eval()

    def doubled(self: Normalize, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * (x - self.mean.reshape(1, -1, 1, 1)) / self.std.reshape(1, -1, 1, 1)

    monkeypatch.setattr(Normalize, "forward", doubled)
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(UnsupportedNetworkError, match="differs from what model"):
            relaxlab.compute_bounds(model.to(dtype), torch.rand(2, 1, 2, 2, dtype=dtype), 0.1, "IBP")
