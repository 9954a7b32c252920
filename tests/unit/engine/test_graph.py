"""The graph engine: exactness against the chain engine and an independent backsubstitution,
soundness against the exact MILP, tracing rules and refusals.

Exactness (float64, 1e-9 absolute): a graph network and the same function written as an
``nn.Sequential`` chain (BatchNorm folded into the layer before it by hand, AvgPool as a fixed
convolution, a grouped convolution as a block-diagonal one, ``cat`` as stacked weights) get the
same bounds from every registered relaxation. For a residual network, IBP, CROWN, CROWN-IBP (R)
and DeepZ bounds (final and intermediate) equal a hand-unrolled dense backsubstitution written
here from the definitions (DESIGN.md's table; CROWN's lower slope 1 iff ``u > -l``, as
auto_LiRPA's backward mode).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relaxlab
from relaxlab.api import compute_bounds
from relaxlab.engine import Network, UnsupportedNetworkError, bound_network, intermediate_bounds, parse_model
from relaxlab.nn import Normalize
from relaxlab.reference.milp import MILP_ATOL, MILP_RTOL, milp_bounds
from relaxlab.testing.falsify import box_samples, pgd_extremes, spec_values

NAMES = sorted(relaxlab.get_registry().relaxations.names())
STANDARD = ["IBP", "CROWN", "CROWN-IBP (R)", "DeepZ"]


def _randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Random running statistics and affine parameters (negative scales included), eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(0.2 + torch.rand(n, generator=generator))
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    model.eval()


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale.detach(), (bn.bias - bn.running_mean * scale).detach()


def _fold_linear(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    scale, shift = _bn_affine(bn)
    folded = nn.Linear(linear.in_features, linear.out_features, dtype=linear.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale[:, None])
        folded.bias.copy_(linear.bias * scale + shift)
    return folded


def _fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale, shift = _bn_affine(bn)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        folded.bias.copy_(conv.bias * scale + shift)
    return folded


def _pool_as_conv(channels: int, kernel: int, stride: int, dtype: torch.dtype) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel, stride, bias=False, dtype=dtype)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[c, c] = 1.0 / kernel**2
    return conv


def _assert_same_bounds(
    graph: nn.Module, chain: nn.Sequential, x: Tensor, eps: float, name: str, tol: float
) -> None:
    relaxation = relaxlab.get_relaxation(name)
    assert isinstance(parse_model(graph, tuple(x.shape[1:]), clean=x), Network)
    assert isinstance(parse_model(chain, tuple(x.shape[1:])), Network)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), chain(x), atol=tol, rtol=0)
        spec = torch.randn(
            x.shape[0], 4, chain(x).shape[1], generator=torch.Generator().manual_seed(1), dtype=x.dtype
        )
        lb_g, ub_g = compute_bounds(graph, x, eps, relaxation, C=spec)
        lb_c, ub_c = compute_bounds(chain, x, eps, relaxation, C=spec)
    scale = 1.0 + float(torch.maximum(lb_c.abs(), ub_c.abs()).max())
    torch.testing.assert_close(lb_g, lb_c, atol=tol * scale, rtol=0)
    torch.testing.assert_close(ub_g, ub_c, atol=tol * scale, rtol=0)


TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_dense_batch_norm_equals_the_folded_chain(name: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    graph = nn.Sequential(
        Normalize([0.1, -0.2, 0.3], [0.5, 1.0, 2.0]),
        nn.Linear(3, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 4),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).to(dtype)
    _randomise_batch_norm(graph, generator)
    chain = nn.Sequential(
        graph[0],
        _fold_linear(graph[1], graph[2]),
        nn.ReLU(),
        _fold_linear(graph[4], graph[5]),
        nn.ReLU(),
        graph[7],
    )
    x = torch.randn(3, 3, generator=generator).to(dtype)
    _assert_same_bounds(graph, chain, x, 0.3, name, TOLERANCES[dtype])


class ConvBnPool(nn.Module):
    """Conv, BN2d, ReLU, AvgPool, Conv (two non-diagonal layers between ReLUs), BN, ReLU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 2, 2, stride=1)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(self.pool(x))))
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_conv_batch_norm_avgpool_equals_the_chain(name: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    graph = ConvBnPool().to(dtype)
    _randomise_batch_norm(graph, generator)
    chain = nn.Sequential(
        _fold_conv(graph.conv1, graph.bn1),
        nn.ReLU(),
        _pool_as_conv(3, 2, 2, dtype),
        _fold_conv(graph.conv2, graph.bn2),
        nn.ReLU(),
        nn.Flatten(),
        graph.fc,
    )
    x = torch.rand(2, 2, 6, 6, generator=generator).to(dtype)
    _assert_same_bounds(graph, chain, x, 0.1, name, TOLERANCES[dtype])


class CatNet(nn.Module):
    """Two branches from the input, concatenated along channels (before or after their ReLUs)."""

    def __init__(self, relu_first: bool) -> None:
        super().__init__()
        self.relu_first = relu_first
        self.a = nn.Conv2d(1, 2, 3)
        self.b = nn.Conv2d(1, 1, 3)
        self.c = nn.Conv2d(3, 2, 2, groups=1)
        self.grouped = nn.Conv2d(2, 4, 1, groups=2)
        self.fc = nn.Linear(4 * 2 * 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.relu_first:
            y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        else:
            y = F.relu(torch.cat((self.a(x), self.b(x)), 1))
        y = self.grouped(F.relu(self.c(y)))
        return self.fc(torch.flatten(F.relu(y), 1))


def _cat_chain(graph: CatNet) -> nn.Sequential:
    stacked = nn.Conv2d(1, 3, 3, dtype=torch.float64)
    grouped = nn.Conv2d(2, 4, 1, dtype=torch.float64)
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([graph.a.weight, graph.b.weight]))
        stacked.bias.copy_(torch.cat([graph.a.bias, graph.b.bias]))
        grouped.weight.zero_()
        grouped.weight[:2, :1] = graph.grouped.weight[:2]
        grouped.weight[2:, 1:] = graph.grouped.weight[2:]
        grouped.bias.copy_(graph.grouped.bias)
    return nn.Sequential(stacked, nn.ReLU(), graph.c, nn.ReLU(), grouped, nn.ReLU(), nn.Flatten(), graph.fc)


@pytest.mark.parametrize("relu_first", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_cat_and_grouped_conv_equal_the_chain(name: str, relu_first: bool) -> None:
    torch.manual_seed(3)
    graph = CatNet(relu_first).double()
    x = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _assert_same_bounds(graph, _cat_chain(graph), x, 0.2, name, 1e-9)


class TinyResidual(nn.Module):
    """``a1 = relu(W1 x + b1)``, ``a2 = relu(W2 a1 + b2)``, ``a3 = relu(W3 a2 + b3 + a1)``,
    output ``W4 a3 + b4 + S a1``."""

    def __init__(self, d: int = 3, h: int = 4, k: int = 3) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, h)
        self.fc4, self.skip = nn.Linear(h, k), nn.Linear(h, k, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a1 = torch.relu(self.fc1(x))
        a2 = F.relu(self.fc2(a1))
        out = self.fc3(a2)
        out += a1
        return self.fc4(torch.relu(out)) + self.skip(a1)


def _reference_lines(name: str, low: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(lower slope, lower offset, upper slope, upper offset)`` from DESIGN.md's table."""
    pos, neg = low >= 0, u <= 0
    unstable = ~pos & ~neg
    lam = torch.where(unstable, u / torch.where(unstable, u - low, 1.0), 0.0)
    one, zero = torch.ones_like(low), torch.zeros_like(low)
    if name == "IBP":
        return zero, torch.where(pos, low, zero), zero, torch.where(neg, zero, u)
    upper_slope = torch.where(unstable, lam, torch.where(pos, one, zero))
    upper_offset = torch.where(unstable, -lam * low, zero)
    if name == "DeepZ":
        return upper_slope, zero, upper_slope, upper_offset
    # CROWN: lower line x when u > -low, else 0
    lower_slope = torch.where(pos | (unstable & (u > -low)), one, zero)
    return lower_slope, zero, upper_slope, upper_offset


def _reference(model: TinyResidual, lower: Tensor, upper: Tensor, name: str, C: Tensor) -> tuple[Tensor, ...]:
    """Dense backsubstitution unrolled by hand for :class:`TinyResidual` (one example: 1-d boxes)."""
    W = {k: getattr(model, f"fc{k}").weight.detach() for k in (1, 2, 3, 4)}
    b = {k: getattr(model, f"fc{k}").bias.detach() for k in (1, 2, 3, 4)}
    S = model.skip.weight.detach()
    interval = name in ("IBP", "CROWN-IBP (R)")
    lines_name = "CROWN" if name == "CROWN-IBP (R)" else name
    lines: dict[int, tuple[Tensor, ...]] = {}
    boxes: dict[int, tuple[Tensor, Tensor]] = {}

    def concretize(c: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return c.clamp(min=0) @ lo + c.clamp(max=0) @ hi

    def relu_back(c: Tensor, k: int) -> tuple[Tensor, Tensor]:
        ls, lo, us, uo = lines[k]
        pos, neg = c.clamp(min=0), c.clamp(max=0)
        return pos * ls + neg * us, pos @ lo + neg @ uo

    def from_a1(c1: Tensor, const: Tensor) -> Tensor:
        cz1, k = relu_back(c1, 1)
        return const + k + cz1 @ b[1] + concretize(cz1 @ W[1], lower, upper)

    def from_a2_a1(c2: Tensor, c1: Tensor, const: Tensor) -> Tensor:
        cz2, k = relu_back(c2, 2)
        return from_a1(c1 + cz2 @ W[2], const + k + cz2 @ b[2])

    def from_z3_a1(c3: Tensor, c1: Tensor, const: Tensor) -> Tensor:  # rows on z3 (and a1)
        return from_a2_a1(c3 @ W[3], c1 + c3, const + c3 @ b[3])

    def interval_affine(w: Tensor, bias: Tensor, box: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        centre, radius = (box[0] + box[1]) / 2, (box[1] - box[0]) / 2
        return w @ centre + bias - w.abs() @ radius, w @ centre + bias + w.abs() @ radius

    def both(lower_of: object, n: int) -> tuple[Tensor, Tensor]:
        eye = torch.eye(n, dtype=lower.dtype)
        return lower_of(eye), -lower_of(-eye)  # type: ignore[operator]

    h = W[1].shape[0]
    zero = torch.zeros(h, dtype=lower.dtype)
    boxes[1] = both(lambda c: c @ b[1] + concretize(c @ W[1], lower, upper), h)
    for k in (1, 2, 3):
        if k == 2:
            if interval:
                boxes[2] = interval_affine(W[2], b[2], tuple(torch.relu(v) for v in boxes[1]))
            else:
                boxes[2] = both(lambda c: from_a1(c @ W[2], c @ b[2]), h)
        if k == 3:
            if interval:
                lo3, hi3 = interval_affine(W[3], b[3], tuple(torch.relu(v) for v in boxes[2]))
                boxes[3] = (lo3 + torch.relu(boxes[1][0]), hi3 + torch.relu(boxes[1][1]))
            else:
                boxes[3] = both(
                    lambda c: from_z3_a1(c, zero.expand_as(c), torch.zeros(c.shape[0], dtype=c.dtype)), h
                )
        lines[k] = _reference_lines(lines_name, *boxes[k])
    if name == "IBP":
        a3 = torch.relu(boxes[3][0]), torch.relu(boxes[3][1])
        a1 = torch.relu(boxes[1][0]), torch.relu(boxes[1][1])
        rows = torch.cat([C, -C])
        values = rows @ b[4] + concretize(rows @ W[4], *a3) + concretize(rows @ S, *a1)
    else:
        rows = torch.cat([C, -C])
        cz3, k = relu_back(rows @ W[4], 3)
        values = from_z3_a1(cz3, rows @ S, rows @ b[4] + k)
    s = C.shape[0]
    return values[:s], -values[s:], boxes[1], boxes[2], boxes[3]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", STANDARD)
def test_residual_bounds_equal_hand_written_backsubstitution(name: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyResidual().double()
    x = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    eps = 0.6 + 0.3 * seed
    C = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    relaxation = relaxlab.get_relaxation(name)
    with torch.no_grad():
        lb, ub = compute_bounds(model, x, eps, relaxation, C=C)
        pre, _ = intermediate_bounds(model, x - eps, x + eps, relaxation)
    unstable = 0
    for i in range(x.shape[0]):
        ref_lb, ref_ub, *ref_boxes = _reference(model, x[i] - eps, x[i] + eps, name, C)
        torch.testing.assert_close(lb[i], ref_lb, atol=1e-9, rtol=0)
        torch.testing.assert_close(ub[i], ref_ub, atol=1e-9, rtol=0)
        for (low, high), (ref_low, ref_high) in zip(pre, ref_boxes, strict=True):
            torch.testing.assert_close(low[i], ref_low, atol=1e-9, rtol=0)
            torch.testing.assert_close(high[i], ref_high, atol=1e-9, rtol=0)
            unstable += int(((ref_low < 0) & (ref_high > 0)).sum())
    assert unstable > 0  # the test exercises the unstable case


def _residual_as_chain(model: TinyResidual) -> nn.Sequential:
    """The same function as a chain: ``a1 >= 0`` rides along through the ReLUs unchanged."""
    h = model.fc1.out_features
    eye, zero = torch.eye(h, dtype=torch.float64), torch.zeros(h, h, dtype=torch.float64)
    second = nn.Linear(h, 2 * h, dtype=torch.float64)
    third = nn.Linear(2 * h, 2 * h, dtype=torch.float64)
    last = nn.Linear(2 * h, model.fc4.out_features, dtype=torch.float64)
    with torch.no_grad():
        second.weight.copy_(torch.cat([model.fc2.weight, eye]))
        second.bias.copy_(torch.cat([model.fc2.bias, torch.zeros(h, dtype=torch.float64)]))
        third.weight.copy_(torch.cat([torch.cat([model.fc3.weight, eye], 1), torch.cat([zero, eye], 1)]))
        third.bias.copy_(torch.cat([model.fc3.bias, torch.zeros(h, dtype=torch.float64)]))
        last.weight.copy_(torch.cat([model.fc4.weight, model.skip.weight], 1))
        last.bias.copy_(model.fc4.bias)
    return nn.Sequential(model.fc1, nn.ReLU(), second, nn.ReLU(), third, nn.ReLU(), last)


@pytest.mark.parametrize("seed", range(3))
def test_residual_bounds_contain_the_exact_milp_range(seed: int) -> None:
    """Every relaxation's bounds contain the exact range (MILP on the equivalent chain)."""
    torch.manual_seed(seed)
    model = TinyResidual().double()
    chain = _residual_as_chain(model)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, generator=generator, dtype=torch.float64)
    lower, upper = x - 0.5, x + 0.5
    with torch.no_grad():
        points = box_samples(lower, upper, 50)[0]
        torch.testing.assert_close(model(points), chain(points), atol=1e-12, rtol=0)
    exact_lb, exact_ub = milp_bounds(chain, lower, upper)
    tol = MILP_ATOL + MILP_RTOL * float(torch.maximum(exact_lb.abs(), exact_ub.abs()).max())
    for name in NAMES:
        with torch.no_grad():
            lb, ub = bound_network(model, lower, upper, relaxlab.get_relaxation(name))
        assert bool((lb <= exact_lb + tol).all()), name
        assert bool((ub >= exact_ub - tol).all()), name


@pytest.mark.parametrize("name", NAMES)
def test_graph_fast_path_chunking_and_grad_mode(name: str) -> None:
    """Interval relaxations: fast path = backsubstitution; chunking and autograd leave bounds alone."""
    torch.manual_seed(4)
    model = ConvBnPool().double()
    _randomise_batch_norm(model, torch.Generator().manual_seed(4))
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    relaxation = relaxlab.get_relaxation(name)
    lower, upper = x - 0.05, x + 0.05
    with torch.no_grad():
        reference = bound_network(model, lower, upper, relaxation)
        chunked = bound_network(model, lower, upper, relaxation, chunk_size=3)
        if relaxation.is_interval:
            slow = bound_network(model, lower, upper, relaxation, mode="backsub")
            for a, b in zip(reference, slow, strict=True):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with_grad = bound_network(model, lower, upper, relaxation)
    for a, b, c in zip(reference, chunked, with_grad, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        torch.testing.assert_close(a, c.detach(), atol=1e-12, rtol=0)


def test_bounds_are_differentiable_and_sound_in_float32() -> None:
    torch.manual_seed(5)
    model = TinyResidual()
    x = torch.randn(3, 3)
    lb, ub = compute_bounds(model, x, 0.3, "CROWN-IBP (R)")
    (lb.sum() - ub.sum()).backward()
    assert model.fc1.weight.grad is not None and bool(torch.isfinite(model.fc1.weight.grad).all())
    with torch.no_grad():
        values = spec_values(model, torch.eye(3).expand(3, 3, 3), box_samples(x - 0.3, x + 0.3, 200))
    assert bool((values >= lb.detach().unsqueeze(1) - 1e-5).all())
    assert bool((values <= ub.detach().unsqueeze(1) + 1e-5).all())


def test_batch_norm_in_train_mode_uses_the_clean_batch() -> None:
    """Train mode: BN is the affine map of the clean batch's statistics; bounds contain that network."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    running = model[1].running_mean.clone()
    lb, ub = compute_bounds(model, x, 0.1, "CROWN")
    assert torch.equal(model[1].running_mean, running)  # bounding does not touch the running statistics
    with torch.no_grad():
        hidden = model[0](x)
        mean, var = hidden.mean(0), hidden.var(0, unbiased=False)
        frozen = nn.BatchNorm1d(4).double().eval()
        frozen.running_mean.copy_(mean)
        frozen.running_var.copy_(var)
        frozen.weight.copy_(model[1].weight)
        frozen.bias.copy_(model[1].bias)
        chain_lb, chain_ub = compute_bounds(
            nn.Sequential(model[0], frozen, model[2], model[3]), x, 0.1, "CROWN"
        )
    torch.testing.assert_close(lb, chain_lb, atol=1e-12, rtol=0)
    torch.testing.assert_close(ub, chain_ub, atol=1e-12, rtol=0)
    with pytest.raises(UnsupportedNetworkError, match=r"batch statistics.*model.eval\(\)"):
        bound_network(model, x - 0.1, x + 0.1, relaxlab.get_relaxation("IBP"))


def test_chains_are_graphs_with_one_path() -> None:
    chain = nn.Sequential(Normalize([0.0], [1.0]), nn.Sequential(nn.Linear(2, 3), nn.Identity()), nn.ReLU())
    assert parse_model(chain, (2,)).is_chain
    assert parse_model(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3).eval()), (2,)).is_chain
    assert not parse_model(TinyResidual(2, 2, 2), (2,)).is_chain


def test_reshape_variants_and_forward() -> None:
    class Reshapes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 2)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x).relu().contiguous()
            a = y.view(y.size(0), -1)
            b = y.reshape(-1, 8)
            c = y.flatten(1)
            d = y.view(y.shape[0], 2, 4).flatten(start_dim=1)
            return self.fc(a) + self.fc(b) + self.fc(c) + self.fc(d)

    model = Reshapes().double()
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    net = parse_model(model, (1, 3, 3))
    assert not net.is_chain
    torch.testing.assert_close(net.forward(x), model(x))
    lb, ub = compute_bounds(model, x, 0.0, "CROWN")
    torch.testing.assert_close(lb, model(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(ub, model(x), atol=1e-12, rtol=0)


class _LinearTimesTwo(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


class _PlainRelu(nn.ReLU):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


class _Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.ones(2))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset


class _Branching(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return x
        return -x


class _MaxPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, 2, padding=1)


@pytest.mark.parametrize(
    ("model", "shape", "message"),
    [
        (nn.Sequential(_LinearTimesTwo(2, 2)), (2,), r"_LinearTimesTwo, traced into its forward"),
        (nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)), (2,), r"\(Dropout\) is random in training mode"),
        (_Constant(), (2,), r"reads the tensor model.offset"),
        (_Branching(), (2,), r"cannot be traced with torch.fx"),
        (_MaxPool(), (1, 5, 5), r"node 'max_pool2d' \(torch.nn.functional.*max_pool2d\)"),
        (
            nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm1d(2).eval()),
            (1, 3, 3),
            r"\(BatchNorm1d\) expects 2",
        ),
        (nn.Sequential(nn.Conv2d(1, 1, 2), nn.AvgPool2d(2, ceil_mode=True)), (1, 4, 4), "ceil_mode"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2, dilation=2)), (2, 6, 6), r"\(Conv2d\).*dilation"),
        (nn.Sequential(nn.Linear(3, 2), nn.Tanh()), (3,), r"node '_1' \(model.1\) \(Tanh\) is not supported"),
    ],
)
def test_unsupported_graphs_are_refused_naming_the_node(
    model: nn.Module, shape: tuple[int, ...], message: str
) -> None:
    model = model.double()
    with pytest.raises(UnsupportedNetworkError, match=message):
        compute_bounds(model, torch.rand(1, *shape, dtype=torch.float64), 0.1, "IBP")


def test_subclass_overriding_forward_is_not_its_base() -> None:
    # The tracer traces its forward faithfully (what it computes, not what ReLU computes).
    model = nn.Sequential(nn.Linear(2, 2), _PlainRelu(), nn.Linear(2, 1)).double()
    x = torch.rand(1, 2, dtype=torch.float64)
    assert [type(node.op).__name__ for node in parse_model(model, (2,)).nodes] == [
        "Input",
        "Linear",
        "Relu",
        "Linear",
    ]
    plain = nn.Sequential(model[0], nn.ReLU(), model[2])
    for a, b in zip(
        compute_bounds(model, x, 0.1, "CROWN"),
        bound_network(plain, x - 0.1, x + 0.1, relaxlab.get_relaxation("CROWN")),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_pgd_stays_inside_residual_conv_bounds() -> None:
    torch.manual_seed(7)
    model = ConvBnPool().double()
    _randomise_batch_norm(model, torch.Generator().manual_seed(7))
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    spec = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    for name in STANDARD:
        lb, ub = compute_bounds(model, x, 0.05, name, C=spec)
        low, high = pgd_extremes(model, spec, x - 0.05, x + 0.05, steps=20, restarts=1)
        assert bool((low >= lb - 1e-9).all() and (high <= ub + 1e-9).all()), name
