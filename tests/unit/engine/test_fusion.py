"""Loss fusion: the exp chord, soundness of the fused cross-entropy bound, and what it refuses."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relaxlab
from relaxlab.engine.fusion import check_fusable, exp_chord, fused_ce_bound
from relaxlab.engine.spec import margin_bounds, worst_case_logits

FUSABLE = ("IBP", "CROWN-IBP (R)", "LooseIBP-C")


def test_the_chord_lies_above_exp_and_meets_it_at_both_ends() -> None:
    generator = torch.Generator().manual_seed(0)
    upper = -torch.rand(400, generator=generator, dtype=torch.float64) * 5
    widths = torch.cat([torch.zeros(10), torch.logspace(-12, 3, 390)]).to(torch.float64)
    lower = upper - widths
    slope = exp_chord(lower, upper)
    assert torch.all(slope >= 0) and torch.all(torch.isfinite(slope))
    t = lower.unsqueeze(1) + widths.unsqueeze(1) * torch.linspace(0, 1, 51, dtype=torch.float64)
    line = torch.exp(upper).unsqueeze(1) + slope.unsqueeze(1) * (t - upper.unsqueeze(1))
    assert torch.all(line >= torch.exp(t) - 1e-14)
    # it passes through (lower, exp(lower)): the chord, not a looser line
    assert torch.allclose(line[:, 0], torch.exp(lower), rtol=1e-9, atol=1e-15)
    assert torch.equal(slope[:10], torch.exp(lower[:10]))  # a point: the tangent's slope
    # both formulas agree where they meet (width 1)
    one = torch.tensor([1.0 - 1e-12, 1.0 + 1e-12], dtype=torch.float64)
    both = exp_chord(-one, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(both[0], both[1], rtol=1e-9)


def test_the_chord_has_finite_gradients_everywhere() -> None:
    lower = torch.tensor([-3.0, -1e4, -2.0, -0.5], requires_grad=True)
    upper = torch.tensor([-3.0, 0.0, -1.0, -0.5 + 1e-7], requires_grad=True)
    exp_chord(lower, upper).sum().backward()
    assert torch.all(torch.isfinite(lower.grad)) and torch.all(torch.isfinite(upper.grad))  # type: ignore[arg-type]


class _Residual(nn.Module):
    """A residual block and a BatchNorm: loss fusion on a graph (the margins from every ReLU's box)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, stride=2)
        self.bn = nn.BatchNorm2d(2)
        self.inner = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(h + self.inner(h))
        return self.fc(h.flatten(1))


def _nets() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Flatten(), nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    )
    conv = nn.Sequential(
        nn.Conv2d(1, 2, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4)
    )
    linear = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    residual = _Residual()
    with torch.no_grad():
        residual.bn.running_mean.uniform_(-0.5, 0.5)
        residual.bn.running_var.uniform_(0.5, 1.5)
        residual.bn.weight.uniform_(-1.5, 1.5)
    return [
        ("dense", dense.double(), (1, 1, 2)),
        ("conv", conv.double(), (1, 4, 4)),
        ("linear", linear.double(), (1, 1, 2)),
        ("residual", residual.double().eval(), (1, 4, 4)),
    ]


def _classes(net: nn.Module) -> int:
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1].out_features


def _points(x: torch.Tensor, eps: float, count: int) -> torch.Tensor:
    """Corners of the box (clipped to [0, 1]) of each example when small, plus uniform samples."""
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    generator = torch.Generator().manual_seed(1)
    samples = lower + (upper - lower) * torch.rand(count, *x.shape, generator=generator, dtype=x.dtype)
    if x[0].numel() > 4:
        return samples
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    corners = [
        torch.where(torch.tensor(bits, dtype=torch.bool), flat_u, flat_l).reshape(x.shape)
        for bits in itertools.product([False, True], repeat=flat_l.shape[1])
    ]
    return torch.cat([samples, torch.stack(corners)])


@pytest.mark.parametrize("name", FUSABLE)
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_the_fused_bound_is_above_the_cross_entropy_anywhere_in_the_box(name: str, eps: float) -> None:
    relaxation = relaxlab.get_relaxation(name)
    for label, net, shape in _nets():
        classes = _classes(net)
        x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        y = torch.arange(6) % classes
        bound = fused_ce_bound(net, x, y, eps, relaxation, num_classes=classes)
        points = _points(x, eps, 3000)  # (P, B, ...)
        with torch.no_grad():
            logits = net(points.flatten(0, 1)).reshape(points.shape[0], 6, classes)
            ce = F.cross_entropy(logits.permute(0, 2, 1), y.expand(points.shape[0], 6), reduction="none")
        worst = ce.amax(dim=0)
        assert torch.all(bound >= worst - 1e-10), (label, bound, worst)
        assert torch.all(bound >= 0)


@pytest.mark.parametrize("name", ["IBP", "CROWN-IBP (R)"])  # LooseIBP widens even a point
def test_at_radius_zero_the_bound_is_the_cross_entropy(name: str) -> None:
    for _, net, shape in _nets():
        classes = _classes(net)
        x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        y = torch.arange(5) % classes
        bound = fused_ce_bound(net, x, y, 0.0, relaxlab.get_relaxation(name), num_classes=classes)
        assert torch.allclose(bound, F.cross_entropy(net(x), y, reduction="none"), rtol=1e-10, atol=1e-12)


def test_for_ibp_the_fused_bound_is_never_looser_than_the_worst_case_logits() -> None:
    """Same margin intervals, and each chord lies below its interval's maximum (module docstring)."""
    ibp = relaxlab.get_relaxation("IBP")
    for _, net, shape in _nets():
        classes = _classes(net)
        x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        y = torch.arange(8) % classes
        bound = fused_ce_bound(net, x, y, 0.2, ibp, num_classes=classes)
        lb, others = margin_bounds(net, x, y, 0.2, ibp, num_classes=classes)
        unfused = F.cross_entropy(worst_case_logits(lb, others, classes), y, reduction="none")
        assert torch.all(bound <= unfused + 1e-12)


def test_large_logits_do_not_overflow_in_float32() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(300.0)
    x = torch.rand(6, 1, 1, 2, generator=torch.Generator().manual_seed(5))
    y = torch.arange(6) % 3
    points = _points(x.double(), 0.3, 2000)
    with torch.no_grad():
        logits = net.double()(points.flatten(0, 1)).reshape(points.shape[0], 6, 3)
        worst = F.cross_entropy(logits.permute(0, 2, 1), y.expand(points.shape[0], 6), reduction="none").amax(
            0
        )
    net.float()
    assert float(worst.max()) > 1e3  # exp of these margins overflows float32 without the shift
    for name in FUSABLE:
        bound = fused_ce_bound(net, x, y, 0.3, relaxlab.get_relaxation(name), num_classes=3)
        assert torch.all(torch.isfinite(bound))
        assert torch.all(bound.detach().double() >= worst * (1 - 1e-5) - 1e-5)  # float32 rounding
        net.zero_grad()
        bound.sum().backward()
        assert all(torch.all(torch.isfinite(p.grad)) for p in net.parameters())  # type: ignore[arg-type]


def test_backsubstitution_relaxations_are_refused_by_name() -> None:
    for name in ("CROWN", "DeepZ", "hBox"):
        with pytest.raises(ValueError, match=f"{name!r} computes them by backsubstitution"):
            check_fusable(relaxlab.get_relaxation(name))
