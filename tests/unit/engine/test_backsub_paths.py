"""The engine's shortcuts give the numbers of the plain computation: convolutions in patches, and
rows skipped for neurons that interval arithmetic proves stable (sparse intermediate rows)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import relaxlab
from relaxlab.engine import bound_network, intermediate_bounds, parse_model
from relaxlab.engine import patches as patch_path
from relaxlab.engine.bounder import Bounder, propagation
from tests.budget import examples

BACKSUB = ("CROWN", "DeepZ", "hBox", "CROWN-0-C")


def _conv_stack(draw: st.DrawFn) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """One to three convolutions with random kernels, strides and paddings, then a linear layer."""
    channels, height, width = draw(st.integers(1, 3)), draw(st.integers(6, 12)), draw(st.integers(6, 12))
    shape = (channels, height, width)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, kernel[0] - 1)), draw(st.integers(0, kernel[1] - 1)))
        out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
        out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
        if out_h < 1 or out_w < 1:
            break
        out_channels = draw(st.integers(1, 4))
        layers += [
            nn.Conv2d(channels, out_channels, kernel, stride, padding, bias=draw(st.booleans())),
            nn.ReLU(),
        ]
        channels, height, width = out_channels, out_h, out_w
    layers += [nn.Flatten(), nn.Linear(channels * height * width, 3)]
    return nn.Sequential(*layers), shape


@st.composite
def _conv_case(draw: st.DrawFn) -> tuple[nn.Sequential, tuple[int, int, int], int, str]:
    model, shape = _conv_stack(draw)
    return model, shape, draw(st.integers(0, 2**16)), draw(st.sampled_from(BACKSUB))


@settings(max_examples=examples(40), deadline=None)
@given(_conv_case())
def test_patches_equal_full_maps(case: tuple[nn.Sequential, tuple[int, int, int], int, str]) -> None:
    """Every convolution's neurons bounded in patches equal the full-map computation (float64, to
    rounding): strides, paddings, rectangular kernels and windows that run past the far edge."""
    model, shape, seed, name = case
    torch.manual_seed(seed)
    model = model.double()
    for parameter in model.parameters():
        nn.init.uniform_(parameter, -1.0, 1.0)
    x = torch.rand(2, *shape, dtype=torch.float64)
    relaxation = relaxlab.get_relaxation(name)
    patched, _ = intermediate_bounds(model, x - 0.1, x + 0.1, relaxation, patches=True)
    full, _ = intermediate_bounds(model, x - 0.1, x + 0.1, relaxation, patches=False)
    for (lower_p, upper_p), (lower_f, upper_f) in zip(patched, full, strict=True):
        torch.testing.assert_close(lower_p, lower_f, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(upper_p, upper_f, atol=1e-10, rtol=1e-10)


def test_patches_apply_to_conv_plus() -> None:
    """CONV+ (two convolutions): the second convolution's neurons go through the patch path."""
    from relaxlab.architectures import BUILTIN_ARCHITECTURES

    conv_plus = next(a for a in BUILTIN_ARCHITECTURES if a.name == "CONV+")
    network = parse_model(conv_plus.build((1, 28, 28), 10, [0.1307], [0.3081]), (1, 28, 28))
    crown = relaxlab.get_relaxation("CROWN")
    x = torch.rand(2, 1, 28, 28)
    run = Bounder(network, x - 0.01, x + 0.01, crown, propagation(crown))
    convs = [i for i, node in enumerate(network.nodes) if type(node.op).__name__ == "Conv"]
    linear = next(i for i, node in enumerate(network.nodes) if type(node.op).__name__ == "Linear")
    assert patch_path.applies(run.net, run.patch_stops(), convs[1])
    assert not patch_path.applies(run.net, run.patch_stops(), linear)  # the linear layer's rows are dense


def _stable_net(seed: int) -> nn.Sequential:
    """A dense net with large biases: many neurons stable on a small box, some not."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
        nn.ReLU(),
        nn.Linear(10, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.bias.add_(3.0 * torch.randn_like(layer.bias))
    return model


def _sampled_outputs(model: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor) -> list[torch.Tensor]:
    """Every affine layer's outputs at 2,000 points of the box (a sampled, not exact, reference)."""
    value = lower + (upper - lower) * torch.rand(2000, *lower.shape, dtype=lower.dtype)
    outputs = []
    for layer in model:
        value = layer(value)
        if isinstance(layer, nn.Linear):
            outputs.append(value)
    return outputs


@pytest.mark.parametrize("name", BACKSUB)
@pytest.mark.parametrize("seed", range(4))
def test_sparse_rows_keep_the_output_bounds(name: str, seed: int) -> None:
    """Rows are skipped; where backsubstitution finds every skipped neuron stable the same way,
    the output bounds are those of the full computation (to rounding: fewer rows may take other
    matrix-product blockings), and sound in every case."""
    model = _stable_net(seed)
    x = torch.rand(4, 6, dtype=torch.float64)
    lower, upper = x - 0.05, x + 0.05
    relaxation = relaxlab.get_relaxation(name)
    boxes, _ = intermediate_bounds(model, lower, upper, relaxation, sparse=False)
    network = parse_model(model, (6,), dtype=torch.float64)
    run = Bounder(network, lower, upper, relaxation, propagation(relaxation))
    skipped, agree = 0, True
    for index in range(1, len(boxes)):
        reference = run.stable_reference(2 * index + 1)  # the Linear node before ReLU ``index``
        assert reference is not None
        ref_lower, ref_upper, skip = reference
        skipped += int(skip.sum())
        d_lower, d_upper = boxes[index]
        same = torch.where(ref_lower >= 0, d_lower >= 0, d_upper <= 0)
        agree = agree and bool(same[:, skip].all())
    assert skipped > 0
    sparse = bound_network(model, lower, upper, relaxation, sparse=True)
    dense = bound_network(model, lower, upper, relaxation, sparse=False)
    if agree:
        torch.testing.assert_close(sparse, dense, atol=1e-12, rtol=1e-12)
    else:  # the exact ReLU replaced a relaxed one: other numbers, still sound
        assert name == "CROWN-0-C"  # backsubstitution looser than intervals happens for its lower slope 0
    seen = _sampled_outputs(model, lower, upper)[-1]
    assert bool((seen >= sparse[0]).all()) and bool((seen <= sparse[1]).all())


@pytest.mark.parametrize("name", BACKSUB)
def test_sparse_intermediate_bounds(name: str) -> None:
    """With ``sparse=True`` the skipped neurons carry their interval bounds: stable, sound; the
    first backsubstituted layer's other neurons keep exactly their backsubstitution bounds."""
    model = _stable_net(7)
    x = torch.rand(4, 6, dtype=torch.float64)
    lower, upper = x - 0.05, x + 0.05
    relaxation = relaxlab.get_relaxation(name)
    sparse, _ = intermediate_bounds(model, lower, upper, relaxation, sparse=True)
    dense, _ = intermediate_bounds(model, lower, upper, relaxation, sparse=False)
    for depth, ((s_lower, s_upper), (d_lower, d_upper), seen) in enumerate(
        zip(sparse, dense, _sampled_outputs(model, lower, upper), strict=False)
    ):
        assert bool((seen >= s_lower).all()) and bool((seen <= s_upper).all())
        changed = (s_lower != d_lower) | (s_upper != d_upper)
        assert bool(((s_lower >= 0) | (s_upper <= 0))[changed].all())
        if depth == 1:
            assert bool(changed.any())
            kept = ~changed.all(dim=0)
            assert torch.equal(s_lower[:, kept], d_lower[:, kept]) and torch.equal(
                s_upper[:, kept], d_upper[:, kept]
            )


def test_sparse_rows_keep_lines_that_read_the_bounds() -> None:
    """Stable neurons whose lines read ``l, u`` keep their rows: IBP's positive case is the box
    ``[l, u]``, so only its negative neurons (lines 0, 0) may be skipped."""
    model = _stable_net(3)
    x = torch.rand(4, 6, dtype=torch.float64)
    network = parse_model(model, (6,), dtype=torch.float64)
    crown = relaxlab.get_relaxation("CROWN")
    run = Bounder(network, x - 0.05, x + 0.05, crown, propagation(crown))
    for name in ("IBP", "CROWN"):
        run.relaxation = relaxlab.get_relaxation(name)  # the lines judged; the bounds stay CROWN's
        reference = run.stable_reference(3)
        assert reference is not None
        ref_lower, ref_upper, skip = reference
        positive, negative = (ref_lower >= 0).all(dim=0), (ref_upper <= 0).all(dim=0)
        assert bool(positive.any()) and bool(negative.any())
        expected = negative if name == "IBP" else positive | negative
        assert torch.equal(skip, expected)


ZERO_HINTS = (
    frozenset(),
    frozenset({"lower_offset"}),
    frozenset({"upper_offset"}),
    frozenset({"lower_offset", "upper_offset"}),
)


@pytest.mark.parametrize("zeros", ZERO_HINTS, ids=lambda z: "+".join(sorted(z)) or "none")
@pytest.mark.parametrize("same_slopes", [False, True])
@pytest.mark.parametrize("same_offsets", [False, True])
@pytest.mark.parametrize("shared_rows", [False, True])
@pytest.mark.parametrize("shape", [(5,), (2, 2, 3)])
def test_relu_step_gradient_equals_autograd(
    zeros: frozenset[str], same_slopes: bool, same_offsets: bool, shared_rows: bool, shape: tuple[int, ...]
) -> None:
    """The ReLU step's written-out gradient equals autograd's through the elementary operations, for
    every arrangement of the lines the step distinguishes (zero offsets, one tensor for two
    coefficients, rows shared by the batch, neuron shapes), and its forward pass is bitwise the same."""
    from relaxlab.core.relaxer import RelaxationTensors
    from relaxlab.engine.relu_step import _relu_step, _ReluStep

    generator = torch.Generator().manual_seed(
        len(shape) + 2 * same_slopes + 4 * same_offsets + 8 * shared_rows
    )

    def tensor(*size: int) -> torch.Tensor:
        return torch.randn(*size, dtype=torch.float64, generator=generator).requires_grad_()

    batch, rows = 3, 4
    coef, bias = tensor(1 if shared_rows else batch, rows, *shape), tensor(1 if shared_rows else batch, rows)
    lower_slope = tensor(batch, *shape)
    upper_slope = lower_slope if same_slopes else tensor(batch, *shape)
    zero = torch.zeros(batch, *shape, dtype=torch.float64)
    lower_offset = zero if "lower_offset" in zeros else tensor(batch, *shape)
    upper_offset = (
        zero if "upper_offset" in zeros else (lower_offset if same_offsets else tensor(batch, *shape))
    )
    lines = (lower_slope, lower_offset, upper_slope, upper_offset)
    fused = _ReluStep.apply(coef, bias, *lines, zeros)
    plain = _relu_step(coef, bias, RelaxationTensors(*lines, zeros))
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    weights = (
        torch.randn(fused[0].shape, dtype=torch.float64, generator=generator),
        torch.randn(fused[1].shape, dtype=torch.float64, generator=generator),
    )
    inputs = [t for t in dict.fromkeys((coef, bias, *lines)) if t.requires_grad]

    def gradients(out: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        total = (out[0] * weights[0]).sum() + (out[1] * weights[1]).sum()
        return torch.autograd.grad(total, inputs, allow_unused=True)

    for got, expected in zip(gradients(fused), gradients(plain), strict=True):
        got = torch.zeros_like(expected) if got is None and expected is not None else got
        expected = torch.zeros_like(got) if expected is None and got is not None else expected
        if got is not None:
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_side_mask_is_the_clamp_subgradient() -> None:
    """``side_mask`` is ``coef >= 0`` / ``coef <= 0`` as 0/1 in the rows' dtype, zeros of both signs included."""
    from relaxlab.engine.relu_step import side_mask

    coef = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0, float("inf"), -float("inf")])
    assert torch.equal(side_mask(coef), (coef >= 0).to(coef.dtype))
    assert torch.equal(side_mask(coef, negative=True), (coef <= 0).to(coef.dtype))


@pytest.mark.parametrize("box_grad", [False, True])
@pytest.mark.parametrize("shared_rows", [False, True])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 3)])
def test_concretize_gradient_equals_autograd(
    box_grad: bool, shared_rows: bool, shape: tuple[int, ...]
) -> None:
    """The concretisation's written-out gradient equals autograd's through the elementary operations
    (rows shared by the batch or not, boxes with or without gradients, coefficients exactly 0, whose
    subgradient takes the lower end as ``clamp``'s does), and its forward pass is bitwise the same."""
    from relaxlab.engine.relu_step import _Concretize, _concretize

    generator = torch.Generator().manual_seed(len(shape) + 2 * shared_rows + 4 * box_grad)
    batch, rows = 3, 4
    coef = torch.randn(1 if shared_rows else batch, rows, *shape, dtype=torch.float64, generator=generator)
    coef.flatten(2)[..., ::3] = 0.0
    coef.requires_grad_()
    bias = torch.randn(
        1 if shared_rows else batch, rows, dtype=torch.float64, generator=generator
    ).requires_grad_()
    lower = torch.randn(batch, *shape, dtype=torch.float64, generator=generator)
    upper = lower + torch.rand(batch, *shape, dtype=torch.float64, generator=generator)
    lower.requires_grad_(box_grad)
    upper.requires_grad_(box_grad)
    fused, plain = _Concretize.apply(coef, bias, lower, upper), _concretize(coef, bias, lower, upper)
    assert torch.equal(fused, plain)
    weights = torch.randn(fused.shape, dtype=torch.float64, generator=generator)
    inputs = [t for t in (coef, bias, lower, upper) if t.requires_grad]
    got = torch.autograd.grad((fused * weights).sum(), inputs)
    expected = torch.autograd.grad((plain * weights).sum(), inputs)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def _padded_pair(pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        pool,
        nn.Conv2d(3, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 36, 3),
    )


@pytest.mark.parametrize(
    "pool",
    [nn.AvgPool2d(3, 1, 1), nn.AvgPool2d(1, 1), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1, groups=3)],
    ids=["avgpool-padded", "avgpool-1", "conv", "1x1"],
)
def test_patches_with_two_convolutions_between_relus(pool: nn.Module) -> None:
    """Two convolutions between ReLUs, the upper one padded: the coefficients it puts on its input's
    padding must not reach the lower one (they did: bounds off by 0.1, model(x) outside them); the
    bounds equal those of full maps (float64)."""
    torch.manual_seed(0)
    model = _padded_pair(pool).double()
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    net = parse_model(model, (2, 6, 6), dtype=torch.float64)
    lower, upper = x - 0.05, x + 0.05
    relaxation = relaxlab.get_relaxation("CROWN")
    with_patches = intermediate_bounds(net, lower, upper, relaxation, patches=True)[0]
    full = intermediate_bounds(net, lower, upper, relaxation, patches=False)[0]
    for (a_low, a_high), (b_low, b_high) in zip(with_patches, full, strict=True):
        torch.testing.assert_close(a_low, b_low, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(a_high, b_high, atol=1e-12, rtol=1e-12)
    lb, ub = relaxlab.compute_bounds(model, x, 0.05, "CROWN")
    out = model(x)
    assert bool((lb <= out + 1e-9).all()) and bool((out <= ub + 1e-9).all())


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("IBP", {}),
        ("CROWN-IBP (R)", {}),
        ("CROWN", {}),
        ("CROWN", {"patches": False}),
        ("CROWN", {"sparse": True}),
        ("hBox-Hybrid", {}),
    ],
    ids=["ibp", "crown-ibp", "crown-patches", "crown-maps", "crown-sparse", "hybrid"],
)
def test_a_bound_leaves_no_reference_cycle(name: str, options: dict) -> None:
    """Reference counting alone frees a bound computation, its boxes and its autograd graph: a cycle
    would keep a training step's tensors alive until Python's cyclic collector happens to run
    (the resident memory of a training run grew by 90 MiB a step on FC when the stops' cache held
    the Bounder's own method)."""
    import gc
    import weakref

    from relaxlab.engine.bounder import bounder, spec_matrix

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(18, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    x = torch.rand(2, 1, 5, 5)
    relaxation = relaxlab.get_relaxation(name)
    gc.collect()
    gc.disable()
    try:
        run = bounder(model, x - 0.1, x + 0.1, relaxation, **options)
        lb, _ = run.bound(spec_matrix(None, 2, 3, x), True)
        lb.sum().backward()
        freed = weakref.ref(run)
        del run, lb
        assert freed() is None
    finally:
        gc.enable()
