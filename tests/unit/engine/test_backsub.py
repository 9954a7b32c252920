"""The engine on hand-computed networks, its layer machinery, gradients and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import relaxlab
from relaxlab.api import compute_bounds
from relaxlab.core.relaxer import RelaxationTensors
from relaxlab.engine import (
    Network,
    UnsupportedNetworkError,
    bound_network,
    intermediate_bounds,
    margin_spec,
    parse_model,
)
from relaxlab.engine.network import Node
from relaxlab.engine.ops import Conv, Input, Linear, Relu, Reshape, transposed_conv
from relaxlab.examples import app_a_network, crown_example_network, toy_continuity_network
from relaxlab.nn import Normalize

EXACT = {"atol": 1e-12, "rtol": 0.0}


def _chain(input_shape: tuple[int, ...], *ops: object) -> Network:
    """A network of ``ops`` in a row (built by hand, bypassing the op table)."""
    nodes = [Node("input", Input(input_shape), ())]
    nodes += [Node(f"op{k}", op, (k,)) for k, op in enumerate(ops)]  # type: ignore[arg-type]
    return Network(tuple(nodes), input_shape)


def _bounds(example: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return compute_bounds(example.model, example.center, example.eps, name)  # type: ignore[attr-defined]


# -- the worked examples ---------------------------------------------------------------------------


def test_app_a_deepz() -> None:
    """App. A of the paradox paper: DeepZ gives x31 in [-1, 3] and x32 in [-2, 2]."""
    lb, ub = _bounds(app_a_network(), "DeepZ")
    torch.testing.assert_close(lb, torch.tensor([[-1.0, -2.0]], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(ub, torch.tensor([[3.0, 2.0]], dtype=torch.float64), **EXACT)


def test_app_a_intermediate_deepz() -> None:
    """App. A: the first layer's bounds are [-2, 2] for both neurons, λ = 1/2."""
    example = app_a_network()
    relaxation = relaxlab.get_relaxation("DeepZ")
    boxes, lines = intermediate_bounds(example.model, example.lower, example.upper, relaxation)
    torch.testing.assert_close(boxes[0][0], torch.full((1, 2), -2.0, dtype=torch.float64), **EXACT)
    torch.testing.assert_close(boxes[0][1], torch.full((1, 2), 2.0, dtype=torch.float64), **EXACT)
    torch.testing.assert_close(lines[0].upper_slope, torch.full((1, 2), 0.5, dtype=torch.float64), **EXACT)
    torch.testing.assert_close(lines[0].upper_offset, torch.full((1, 2), 1.0, dtype=torch.float64), **EXACT)


def test_lirpa_example_ibp() -> None:
    """App. A.4 of auto_LiRPA: IBP gives [-56, 32]."""
    lb, ub = _bounds(crown_example_network(), "IBP")
    assert lb.item() == pytest.approx(-56.0, abs=1e-12)
    assert ub.item() == pytest.approx(32.0, abs=1e-12)


def test_lirpa_example_crown_0() -> None:
    """App. A.4 of auto_LiRPA: backward mode with lower slope 0 gives [-42, 170/7 = 24.2857…]."""
    lb, ub = _bounds(crown_example_network(), "CROWN-0")
    assert lb.item() == pytest.approx(-42.0, abs=1e-12)
    assert ub.item() == pytest.approx(170.0 / 7.0, abs=1e-12)


def test_lirpa_example_intermediate_bounds() -> None:
    """App. A.4: pre-activation bounds [-5, 7], [-10, 18] then [-36, 28], [0, 24.29] (170/7)."""
    example = crown_example_network()
    boxes, _ = intermediate_bounds(
        example.model, example.lower, example.upper, relaxlab.get_relaxation("CROWN-0")
    )
    torch.testing.assert_close(boxes[0][0], torch.tensor([[-5.0, -10.0]], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(boxes[0][1], torch.tensor([[7.0, 18.0]], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(boxes[1][0], torch.tensor([[-36.0, 0.0]], dtype=torch.float64), **EXACT)
    torch.testing.assert_close(boxes[1][1], torch.tensor([[28.0, 170.0 / 7.0]], dtype=torch.float64), **EXACT)


@pytest.mark.parametrize("w", [-1.0, -0.75, -0.5, -1e-9, 0.0])
def test_toy_crown_lower_bound_is_one_for_nonpositive_w(w: float) -> None:
    """Sec. 4.2: CROWN's l31 = 1 for w in [-1, 0] (lower line 0 while -l >= u)."""
    for name in ("CROWN", "CROWN-IBP (R)"):
        lb, _ = _bounds(toy_continuity_network(w), name)
        assert lb[0, 0].item() == pytest.approx(1.0, abs=1e-12), name


@pytest.mark.parametrize("w", [1e-9, 0.25, 0.5, 0.999, 1.0])
def test_toy_crown_lower_bound_is_w_for_positive_w(w: float) -> None:
    """Sec. 4.2: CROWN's l31 = w for w in (0, 1]: the jump from 1 to ~0 at w = 0."""
    for name in ("CROWN", "CROWN-IBP (R)"):
        lb, _ = _bounds(toy_continuity_network(w), name)
        assert lb[0, 0].item() == pytest.approx(w, abs=1e-12), name


@pytest.mark.parametrize("w", [-0.999, -0.5, 0.0, 0.5, 0.999999])
def test_toy_hbox_lower_bound_inside(w: float) -> None:
    """Sec. 4.2: hBox's l32 = -1 - w for w in (-1, 1)."""
    lb, _ = _bounds(toy_continuity_network(w), "hBox")
    assert lb[0, 1].item() == pytest.approx(-1.0 - w, abs=1e-12)


@pytest.mark.parametrize("w", [1.0, 1.5, 3.0])
def test_toy_hbox_lower_bound_stable(w: float) -> None:
    """Sec. 4.2: hBox's l32 = 0 for w >= 1 (both ReLUs stable, x2j = x1j): the jump from -2 to 0."""
    lb, _ = _bounds(toy_continuity_network(w), "hBox")
    assert lb[0, 1].item() == pytest.approx(0.0, abs=1e-12)


# -- layers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding"),
    [(5, 3, 1, 0), (5, 3, 2, 1), (6, 3, 2, 1), (7, 4, 2, 1), (6, 2, 3, 0), (28, 4, 2, 1), (5, 1, 2, 0)],
)
def test_conv_backward_is_the_transposed_jacobian(size: int, kernel: int, stride: int, padding: int) -> None:
    """``Conv.backward`` equals ``A @ J`` with J the dense Jacobian, output_padding included."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, dtype=torch.float64)
    net = parse_model(nn.Sequential(conv), (2, size, size))
    layer = net.nodes[1].op
    assert isinstance(layer, Conv)
    x = torch.randn(1, 2, size, size, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: conv(v).flatten(), x).reshape(-1, x.numel())
    coef = torch.randn(2, 4, *layer.out_shape, dtype=torch.float64)
    (pulled,), bias = layer.backward(coef)
    expected = coef.reshape(2, 4, -1) @ jacobian
    torch.testing.assert_close(pulled.reshape(2, 4, -1), expected, atol=1e-12, rtol=1e-12)
    expected_bias = (coef.sum(dim=(-2, -1)) * conv.bias).sum(-1)
    assert bias is not None
    torch.testing.assert_close(bias, expected_bias, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding"),
    [
        (5, 3, 1, 0),
        (5, 3, 2, 1),
        (6, 3, 2, 1),
        (7, 4, 2, 1),
        (6, 2, 3, 0),
        (28, 4, 2, 1),
        (5, 1, 2, 0),
        (9, 5, 3, 2),
        (8, 3, 1, 2),
        (7, 2, 3, 0),
    ],
)
def test_conv_backward_in_phase_order_pairs_with_the_phase_layout(
    size: int, kernel: int, stride: int, padding: int
) -> None:
    """Concretisation next to the input uses ``backward_phases`` against ``phase_layout(box)``:
    every pairing of a coefficient with an input value must be the one ``backward`` gives, and
    padding positions must pair with 0 (also when the coefficients there are not 0)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, dtype=torch.float64)
    layer = parse_model(nn.Sequential(conv), (2, size, size)).nodes[1].op
    assert isinstance(layer, Conv)
    coef = torch.randn(2, 4, *layer.out_shape, dtype=torch.float64)
    values = torch.randn(2, 2, size, size, dtype=torch.float64)
    (pulled,), bias = layer.backward(coef)
    phases, phase_bias = layer.backward_phases(coef)
    laid_out = layer.phase_layout(values)
    assert phases.shape[:2] == (2, 4) and laid_out.shape == (2, phases.shape[2])
    expected = (pulled.reshape(2, 4, -1) * values.reshape(2, 1, -1)).sum(-1)
    torch.testing.assert_close((phases * laid_out.unsqueeze(1)).sum(-1), expected, atol=1e-12, rtol=1e-12)
    # Each input value the convolution reads appears exactly once; everything else is 0.
    ones = layer.phase_layout(torch.ones(1, 2, size, size, dtype=torch.float64))
    read = int((layer.backward(torch.ones(1, 1, *layer.out_shape, dtype=torch.float64))[0][0] != 0).sum())
    assert set(ones.unique().tolist()) <= {0.0, 1.0} and read <= float(ones.sum()) <= 2 * size * size
    assert phase_bias is not None and bias is not None
    torch.testing.assert_close(phase_bias, bias, atol=0.0, rtol=0.0)


def test_polyphase_transposed_conv_matches_torch() -> None:
    """``transposed_conv`` equals ``F.conv_transpose2d`` (with the output padding the input size needs)."""
    generator = torch.Generator().manual_seed(1)
    checked = 0
    for k_h, k_w, s_h, s_w, p_h, p_w, height, width in itertools.product(
        [1, 2, 3, 4, 5], [1, 3], [1, 2, 3], [1, 2], [0, 1, 2], [0, 1], [5, 6, 8], [5, 7]
    ):
        if p_h >= k_h or p_w >= k_w:
            continue
        weight = torch.randn(3, 2, k_h, k_w, generator=generator, dtype=torch.float64)
        out_h, out_w = (height + 2 * p_h - k_h) // s_h + 1, (width + 2 * p_w - k_w) // s_w + 1
        coef = torch.randn(4, 3, out_h, out_w, generator=generator, dtype=torch.float64)
        output_padding = ((height + 2 * p_h - k_h) % s_h, (width + 2 * p_w - k_w) % s_w)
        expected = torch.nn.functional.conv_transpose2d(
            coef, weight, None, (s_h, s_w), (p_h, p_w), output_padding
        )
        got = transposed_conv(coef, weight, (s_h, s_w), (p_h, p_w), (height, width))
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
        checked += 1
    assert checked > 200


def test_normalize_is_bounded_exactly() -> None:
    """Normalize then Linear equals the Linear with the normalisation folded in (no padding to differ)."""
    torch.manual_seed(1)
    mean, std = [0.5, -1.0, 2.0], [0.5, 2.0, 4.0]
    linear = nn.Linear(3, 2, dtype=torch.float64)
    model = nn.Sequential(
        Normalize(mean, std).double(), linear, nn.ReLU(), nn.Linear(2, 2, dtype=torch.float64)
    )
    folded = nn.Linear(3, 2, dtype=torch.float64)
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    with torch.no_grad():
        folded.weight.copy_(linear.weight / s)
        folded.bias.copy_(linear.bias - (linear.weight * (m / s)).sum(1))
    reference = nn.Sequential(folded, nn.ReLU(), model[3])
    x = torch.randn(4, 3, dtype=torch.float64)
    for name in ("IBP", "DeepZ", "CROWN"):
        for a, b in zip(
            compute_bounds(model, x, 0.3, name), compute_bounds(reference, x, 0.3, name), strict=True
        ):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_linear_network_bounds_are_exact() -> None:
    """Without ReLUs every relaxation gives the exact range of an affine map over the box."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4, dtype=torch.float64), nn.Linear(4, 2, dtype=torch.float64))
    x = torch.randn(2, 3, dtype=torch.float64)
    weight = model[1].weight @ model[0].weight
    centre = model(x)
    radius = 0.5 * weight.abs().sum(1)
    for name in ("IBP", "CROWN", "hBox"):
        lb, ub = compute_bounds(model, x, 0.5, name)
        torch.testing.assert_close(lb, centre - radius, atol=1e-12, rtol=0)
        torch.testing.assert_close(ub, centre + radius, atol=1e-12, rtol=0)


def test_parse_flattens_nested_sequential_and_skips_identity() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.Identity(), nn.ReLU()), nn.Linear(3, 1))
    net = parse_model(model, (2,))
    assert [type(node.op) for node in net.nodes] == [Input, Linear, Relu, Linear]
    assert net.is_chain and net.output_shape == (1,)


# -- api and specifications ------------------------------------------------------------------------


def test_margin_spec_rows() -> None:
    spec = margin_spec(torch.tensor([2, 0]), 3)
    expected = torch.tensor([[[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]], [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]])
    torch.testing.assert_close(spec, expected)


def test_margins_at_zero_radius_are_the_margins() -> None:
    """With eps = 0 the box is a point: every relaxation's margin bounds equal the margins."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    spec = margin_spec(labels, 3, dtype=torch.float64)
    margins = (spec @ model(x).unsqueeze(-1)).squeeze(-1)
    for name in ("IBP", "CROWN", "DeepZ", "CROWN-IBP (R)", "hBox-Switch"):
        lb, ub = compute_bounds(model, x, 0.0, name, C=spec)
        torch.testing.assert_close(lb, margins, atol=1e-12, rtol=0)
        torch.testing.assert_close(ub, margins, atol=1e-12, rtol=0)


def test_elision_matches_bounding_the_composed_network() -> None:
    """C elided into the last layer equals bounding a network whose last layer is C·W."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    spec = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.0, 2.0]], dtype=torch.float64)
    composed = nn.Linear(4, 2, dtype=torch.float64)
    with torch.no_grad():
        composed.weight.copy_(spec @ model[2].weight)
        composed.bias.copy_(spec @ model[2].bias)
    other = nn.Sequential(model[0], model[1], composed)
    x = torch.randn(2, 3, dtype=torch.float64)
    for name in ("CROWN", "IBP", "DeepZ-Soft"):
        for a, b in zip(
            compute_bounds(model, x, 0.4, name, C=spec), compute_bounds(other, x, 0.4, name), strict=True
        ):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_per_example_eps_and_domain() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.rand(2, 3, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    lb, ub = compute_bounds(model, x, eps, "CROWN", domain=(0.0, 1.0))
    for index in range(2):
        xi = x[index : index + 1]
        lower = (xi - eps[index]).clamp(0, 1)
        upper = (xi + eps[index]).clamp(0, 1)
        lb_i, ub_i = bound_network(model, lower, upper, relaxlab.get_relaxation("CROWN"))
        torch.testing.assert_close(lb[index : index + 1], lb_i, atol=1e-12, rtol=0)
        torch.testing.assert_close(ub[index : index + 1], ub_i, atol=1e-12, rtol=0)


def test_lower_only_gives_the_same_lower_bounds() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    spec = margin_spec(torch.tensor([0, 2]), 3, dtype=torch.float64)
    lb, ub = compute_bounds(model, x, 0.2, "CROWN-IBP (R)", C=spec)
    lb_only, ub_only = compute_bounds(model, x, 0.2, "CROWN-IBP (R)", C=spec, lower_only=True)
    torch.testing.assert_close(lb_only, lb, atol=1e-12, rtol=0)
    assert bool(torch.isinf(ub_only).all()) and bool((ub_only > 0).all())


@pytest.mark.parametrize("name", sorted(relaxlab.get_registry().relaxations.names()))
def test_bounds_do_not_depend_on_the_grad_mode(name: str) -> None:
    """Without autograd the engine updates its largest tensors in place; the numbers must be
    bitwise those of the autograd path (the same operations in the same order)."""
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 6),
        nn.ReLU(),
        nn.Linear(6, 4),
    )
    x = torch.rand(3, 1, 9, 9)
    spec = margin_spec(torch.tensor([0, 1, 3]), 4)
    lb, ub = compute_bounds(model, x, 0.08, name, C=spec, domain=(0.0, 1.0))
    assert lb.requires_grad
    with torch.no_grad():
        lb_ng, ub_ng = compute_bounds(model, x, 0.08, name, C=spec, domain=(0.0, 1.0))
    assert torch.equal(lb.detach(), lb_ng) and torch.equal(ub.detach(), ub_ng)


def test_parsed_network_follows_in_place_weight_updates() -> None:
    """A parsed network keeps |W| between calls without autograd; an optimiser step (an
    in-place update) must invalidate it."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    network = parse_model(model, (1, 5, 5))
    x = torch.rand(2, 1, 5, 5)
    with torch.no_grad():
        before = compute_bounds(network, x, 0.1, "IBP")
        for parameter in model.parameters():
            parameter.mul_(-1.5)
        after = compute_bounds(network, x, 0.1, "IBP")
        fresh = compute_bounds(model, x, 0.1, "IBP")
    assert not torch.equal(before[0], after[0])
    assert torch.equal(after[0], fresh[0]) and torch.equal(after[1], fresh[1])


@pytest.mark.parametrize("name", ["IBP", "CROWN"])
def test_engine_compiles_as_one_graph(name: str) -> None:
    """``torch.compile(..., fullgraph=True)`` fails on any graph break: the whole bound
    computation (interval fast path, full backsubstitution, the relaxation's evaluation plan)
    must stay traceable, so that users can fuse it on their hardware (docs/engine.md)."""
    torch.manual_seed(10)
    model = nn.Sequential(
        Normalize([0.1], [0.3]),
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    network = parse_model(model, (1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    lower, upper = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
    spec = margin_spec(torch.tensor([0, 1, 2, 0]), 3)
    relaxation = relaxlab.get_relaxation(name)

    def bounds(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bound_network(network, lo, hi, relaxation, spec)

    compiled = torch.compile(bounds, fullgraph=True, dynamic=False)
    with torch.no_grad():
        got, expected = compiled(lower, upper), bounds(lower, upper)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_float32_agrees_with_float64() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(
        Normalize([0.1], [0.3]),
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )
    x = torch.rand(2, 1, 8, 8)
    for name in ("IBP", "CROWN", "CROWN-IBP (R)"):
        lb32, ub32 = compute_bounds(model, x, 0.05, name)
        lb64, ub64 = compute_bounds(model.double(), x.double(), 0.05, name)
        model.float()
        assert lb32.dtype == torch.float32 and lb64.dtype == torch.float64
        torch.testing.assert_close(lb32.double(), lb64, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ub32.double(), ub64, atol=1e-4, rtol=1e-4)


def test_device(device: torch.device) -> None:
    """The engine runs where the tensors are (CUDA when present) and agrees with the CPU."""
    torch.manual_seed(8)
    model = nn.Sequential(
        Normalize([0.1], [0.3]),
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    spec = margin_spec(torch.tensor([0, 1]), 3, dtype=torch.float64)
    for name in ("IBP", "CROWN", "CROWN-IBP (R)"):
        expected = compute_bounds(model, x, 0.05, name, C=spec)
        got = compute_bounds(model.to(device), x.to(device), 0.05, name, C=spec.to(device))
        model.cpu()
        assert got[0].device.type == device.type
        torch.testing.assert_close(got[0].cpu(), expected[0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(got[1].cpu(), expected[1], atol=1e-10, rtol=1e-10)


# -- gradients -------------------------------------------------------------------------------------


def _away_from_switches(boxes: list[tuple[torch.Tensor, torch.Tensor]], margin: float = 1e-2) -> bool:
    """No bound at 0 (case boundary) and no -l = u (CROWN's heuristic switch)."""
    return all(
        bool(
            (low.abs() > margin).all() and (high.abs() > margin).all() and ((low + high).abs() > margin).all()
        )
        for low, high in boxes
    )


@pytest.mark.parametrize("name", ["IBP", "DeepZ", "CROWN-IBP (R)"])
def test_gradcheck_dense(name: str) -> None:
    """d(bounds)/d(input, weights) by autograd matches finite differences (float64)."""
    relaxation = relaxlab.get_relaxation(name)
    generator = torch.Generator().manual_seed(3)
    w1 = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True)
    w3 = torch.randn(2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    eps = 0.3

    def bounds(
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        w3: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        net = _chain(
            (3,),
            Linear(w1, b1, (3,), (4,)),
            Relu((4,)),
            Linear(w2, b2, (4,), (3,)),
            Relu((3,)),
            Linear(w3, None, (3,), (2,)),
        )
        return bound_network(net, x - eps, x + eps, relaxation)

    net = _chain(
        (3,),
        Linear(w1, b1, (3,), (4,)),
        Relu((4,)),
        Linear(w2, b2, (4,), (3,)),
        Relu((3,)),
        Linear(w3, None, (3,), (2,)),
    )
    boxes, _ = intermediate_bounds(net, (x - eps).detach(), (x + eps).detach(), relaxation)
    assert _away_from_switches(boxes)  # the chosen seed keeps every bound clear of a switch
    assert any(bool(((low < 0) & (high > 0)).any()) for low, high in boxes)  # unstable ReLUs exercised
    assert torch.autograd.gradcheck(bounds, (x, w1, b1, w2, b2, w3), eps=1e-6, atol=1e-6)


def test_gradcheck_conv_crown_ibp() -> None:
    """Gradients through the transposed convolution (CROWN-IBP (R) backsubstitutes the conv)."""
    relaxation = relaxlab.get_relaxation("CROWN-IBP (R)")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 1, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=generator, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 2 * 3 * 3, generator=generator, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 1, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)

    def make(weight: torch.Tensor, bias: torch.Tensor, w2: torch.Tensor) -> Network:
        return _chain(
            (1, 5, 5),
            Conv(weight, bias, (2, 2), (1, 1), 1, (1, 5, 5), (2, 3, 3)),
            Relu((2, 3, 3)),
            Reshape((2, 3, 3), (18,)),
            Linear(w2, None, (18,), (2,)),
        )

    def bounds(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, w2: torch.Tensor) -> tuple:
        return bound_network(make(weight, bias, w2), x - 0.2, x + 0.2, relaxation)

    boxes, _ = intermediate_bounds(make(weight, bias, w2), (x - 0.2).detach(), (x + 0.2).detach(), relaxation)
    assert _away_from_switches(boxes)
    assert torch.autograd.gradcheck(bounds, (x, weight, bias, w2), eps=1e-6, atol=1e-6)


# -- bad input: clear errors before any work -------------------------------------------------------


class _Spy:
    """A relaxation (CROWN's lines) that records whether the engine started working."""

    def __init__(self) -> None:
        self.inner = relaxlab.get_relaxation("CROWN")
        self.name, self.intermediate, self.final, self.is_interval = "spy", "backsub", "backsub", False
        self.calls = 0

    def transform_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lower, upper

    def coefficients(self, lower: torch.Tensor, upper: torch.Tensor) -> object:
        self.calls += 1
        return self.inner.coefficients(lower, upper)


def _dense() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


class _Flattening(_Spy):
    """CROWN's lines, returned flattened from the second call on: a hand-written relaxer that breaks
    the shape contract after the first ReLU."""

    def coefficients(self, lower: torch.Tensor, upper: torch.Tensor) -> object:
        got = super().coefficients(lower, upper)
        assert isinstance(got, RelaxationTensors)
        return got if self.calls == 1 else got._replace(lower_slope=got.lower_slope.reshape(-1))


@pytest.mark.parametrize(
    ("sparse", "node"),
    [(False, r"node 4 \(3, Relu\)"), (True, r"node 3 \(2, Linear\)")],
    ids=["lines", "sparse-reference"],
)
def test_lines_of_another_shape_than_the_bounds_are_refused_naming_the_node(sparse: bool, node: str) -> None:
    """The second ReLU's lines, or (sparse rows) the lines on the interval reference of its input."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=rf"returned lower_slope of shape \(8,\) at {node} whose bounds"):
        bound_network(model, x - 0.1, x + 0.1, _Flattening(), sparse=sparse)


@pytest.mark.parametrize(
    ("kwargs", "exception", "message"),
    [
        ({"eps": -0.1}, ValueError, "eps must be >= 0"),
        ({"eps": math.nan}, ValueError, "NaN"),
        ({"eps": math.inf}, ValueError, "finite"),
        ({"eps": torch.tensor([0.1, -0.2])}, ValueError, "eps must be >= 0"),
        ({"eps": torch.tensor([0.1, 0.1, 0.1])}, ValueError, "per-example"),
        ({"x": torch.zeros(2, 5)}, UnsupportedNetworkError, "expects inputs of shape (3,)"),
        ({"x": torch.zeros(3)}, ValueError, "batch dimension"),
        ({"x": torch.full((2, 3), math.nan)}, ValueError, "NaN"),
        ({"C": torch.zeros(2, 1, 3)}, ValueError, "outputs=2"),
        ({"C": torch.zeros(5, 1, 2)}, ValueError, "batch=2"),
        ({"domain": (1.0, 0.0)}, ValueError, "domain"),
        ({"domain": (0.5, 1.0)}, ValueError, "outside the domain"),
        ({"domain": (math.nan, 1.0)}, ValueError, "NaN"),
        ({"domain": (torch.tensor(0.5), 1.0)}, ValueError, "outside the domain"),
        ({"x": torch.tensor([[3e38, 3e38, math.inf], [0.0, 0.0, 0.0]])}, ValueError, "NaN/inf"),
        ({"C": torch.tensor([[[math.inf, 0.0]], [[0.0, 1.0]]])}, ValueError, "C contains NaN/inf"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive"),
        ({"max_elements": -5}, ValueError, "max_elements must be a positive"),
    ],
)
def test_bad_input_is_refused_before_work(kwargs: dict, exception: type, message: str) -> None:
    spy = _Spy()
    arguments = {"model": _dense(), "x": torch.zeros(2, 3), "eps": 0.1, "relaxation": spy, **kwargs}
    with pytest.raises(exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        compute_bounds(**arguments)
    assert spy.calls == 0


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.Tanh(), r"\(model.1\) \(Tanh\) is not supported"),
        (nn.Sigmoid(), r"\(Sigmoid\) is not supported"),
        (nn.LayerNorm(4), r"\(LayerNorm\) is not supported"),
    ],
)
def test_unsupported_layers_are_named(layer: nn.Module, message: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 2))
    with pytest.raises(UnsupportedNetworkError, match=message):
        compute_bounds(model, torch.zeros(1, 3), 0.1, "IBP")


@pytest.mark.parametrize(
    ("conv", "message"),
    [
        (nn.Conv2d(2, 2, 3, dilation=2), "dilation"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(2, 2, 4, padding="same"), "padding='same' with an even kernel"),
        (nn.Conv2d(3, 2, 3), r"expects inputs of shape \(3, H, W\)"),
    ],
)
def test_unsupported_convolutions_are_refused(conv: nn.Conv2d, message: str) -> None:
    with pytest.raises(UnsupportedNetworkError, match=message):
        parse_model(nn.Sequential(conv, nn.ReLU()), (2, 6, 6))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_weights_are_refused(value: float) -> None:
    model = _dense()
    with torch.no_grad():
        model[2].weight[1, 2] = value
    spy = _Spy()
    with pytest.raises(
        UnsupportedNetworkError, match=r"layer 2 \(model.2\) \(Linear\) weight contains 1 NaN/inf"
    ):
        compute_bounds(model, torch.zeros(1, 3), 0.1, spy)
    assert spy.calls == 0


def test_large_finite_weights_are_accepted() -> None:
    """The one-reduction finiteness check must not mistake an overflowing sum for a NaN."""
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(3e38)
    lb, ub = compute_bounds(model, torch.zeros(1, 2), 0.0, "IBP")
    assert bool(torch.isfinite(lb).all()) and bool(torch.isfinite(ub).all())


def test_other_bad_arguments() -> None:
    with pytest.raises(UnsupportedNetworkError, match="Flatten"):
        parse_model(nn.Sequential(nn.Flatten(start_dim=0)), (1, 2, 2))
    with pytest.raises(UnsupportedNetworkError, match="expects inputs of shape"):
        parse_model(nn.Linear(2, 2), (3,))
    with pytest.raises(LookupError, match="unknown relaxation"):
        compute_bounds(_dense(), torch.zeros(1, 3), 0.1, "no-such-relaxation")
    with pytest.raises(TypeError, match="lacks"):
        compute_bounds(_dense(), torch.zeros(1, 3), 0.1, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        bound_network(
            _dense(), torch.zeros(1, 3), torch.ones(1, 3), relaxlab.get_relaxation("CROWN"), chunk_size=0
        )
    with pytest.raises(ValueError, match="num_classes"):
        margin_spec(torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="labels must lie"):
        margin_spec(torch.tensor([3]), 3)
