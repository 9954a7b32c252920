"""Margins, the certified loss and what "certified" means (relaxlab.engine.spec)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relaxlab
from relaxlab.engine.box import check_eps
from relaxlab.engine.spec import CERT_ATOL, is_certified, margin_bounds, worst_case_logits
from relaxlab.nn import Normalize
from relaxlab.training.loss import robust_ce


def _tiny() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(Normalize([0.5], [0.5]), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize("elision", [True, False])
def test_robust_loss_at_eps_zero_is_the_natural_loss(elision: bool) -> None:
    # At eps = 0 the margin bounds are the margins, and CE is shift-invariant: z_worst = z - z_y.
    net = _tiny().double()
    x, y = torch.rand(5, 1, 2, 2, dtype=torch.float64) * 0.8 + 0.1, torch.tensor([0, 1, 2, 0, 1])
    relaxation = relaxlab.get_relaxation("CROWN")
    lb, others = margin_bounds(net, x, y, 0.0, relaxation, num_classes=3, elision=elision)
    robust = robust_ce(lb, others, y, 3)
    assert robust.item() == pytest.approx(F.cross_entropy(net(x), y).item(), abs=1e-9)


def test_worst_case_logits_layout() -> None:
    lb = torch.tensor([[1.0, -2.0]])
    others = torch.tensor([[0, 2]])
    assert worst_case_logits(lb, others, 3).tolist() == [[-1.0, 0.0, 2.0]]


def test_elision_is_at_least_as_tight_for_ibp() -> None:
    net = _tiny()
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    ibp = relaxlab.get_relaxation("IBP")
    elided, _ = margin_bounds(net, x, y, 0.1, ibp, num_classes=3, elision=True)
    plain, _ = margin_bounds(net, x, y, 0.1, ibp, num_classes=3, elision=False)
    assert bool((elided >= plain - 1e-6).all()) and bool((elided > plain + 1e-6).any())


def test_a_zero_margin_is_never_certified() -> None:
    # Two identical output rows: the margin between classes 0 and 1 is exactly 0.
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[1] = layer.weight[0]
        layer.bias[1] = layer.bias[0]
    net = nn.Sequential(nn.Flatten(), layer)
    x = torch.rand(1, 1, 2, 2)
    for label in (0, 1):
        lb, _ = margin_bounds(
            net, x, torch.tensor([label]), 0.0, relaxlab.get_relaxation("IBP"), num_classes=3
        )
        assert not bool(is_certified(lb, net(x)).any())


def test_certified_needs_the_tolerance_not_just_a_positive_bound() -> None:
    logits = torch.tensor([[0.0, 0.0]])
    assert not bool(is_certified(torch.tensor([[CERT_ATOL / 2]]), logits).any())
    assert bool(is_certified(torch.tensor([[2 * CERT_ATOL]]), logits).all())


def test_eps_outside_the_pixel_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\]"):
        check_eps(1.5, maximum=1.0)
    with pytest.raises(ValueError, match=r"eps must be >= 0"):
        check_eps(-0.01, maximum=1.0)
