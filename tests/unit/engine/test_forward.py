"""Forward propagation: the hybrid zonotope of the paper's code, written here from its definition.

The paper's code (``hybridzono.py`` of eth-sri/paradox, domains ``hbox``, ``hdiag``, ``hdiag-c``,
``hswitch``) keeps, per neuron, a head ``c``, a box part ``β >= 0`` and the input's error terms
``E`` (one row per input coordinate): the neuron lies in ``c + E·ε ± β``. An affine layer maps
``c -> Wc + b``, ``E -> WE``, ``β -> |W|β``; a ReLU with the bounds ``c ± (β + Σ|E|)`` applies the
relaxation's slope ``λ`` and the half gap ``μ`` of its (parallel) lines: ``c -> λc + mid``,
``β -> λβ + μ``, ``E -> λE``; the final margins merge ``C`` into the last linear layer. relaxlab's
forward mode is linear bound propagation (lower and upper forms); for parallel lines its two
forms share their linear part and it is this computation, so the bounds agree to rounding.
"""

from __future__ import annotations

import pytest
import torch
from attrs import evolve
from torch import Tensor, nn

import relaxlab
from relaxlab.engine import bound_network, intermediate_bounds
from relaxlab.engine.spec import margin_spec
from relaxlab.nn import Normalize

HYBRID = ["hBox-Hybrid", "hBox-Diag-Hybrid", "hBox-Diag-C-Hybrid", "hBox-Switch-Hybrid"]


def _layers(model: nn.Sequential) -> list[nn.Module]:
    return list(model)


def hybrid_zonotope(
    model: nn.Sequential, lower: Tensor, upper: Tensor, relaxation: object, spec: Tensor
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Lower bounds of ``spec·f`` and the pre-activation bounds, by the definition above (float64)."""
    head, radius = (upper + lower) / 2, (upper - lower) / 2
    n = head[0].numel()
    errors = torch.eye(n, dtype=head.dtype).reshape(n, 1, *head.shape[1:]) * radius.unsqueeze(0)
    beta = torch.zeros_like(head)
    pre = []
    layers = _layers(model)
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            weight, bias = layer.weight.detach(), layer.bias.detach()
            if index == len(layers) - 1:  # merge the specification into the last layer
                weight, bias = spec @ weight, spec @ bias  # (B, S, in), (B, S)
                head = (weight @ head.unsqueeze(-1)).squeeze(-1) + bias
                beta = (weight.abs() @ beta.unsqueeze(-1)).squeeze(-1)
                errors = torch.einsum("bsi,kbi->kbs", weight, errors)
            else:
                head, beta, errors = head @ weight.T + bias, beta @ weight.abs().T, errors @ weight.T
        elif isinstance(layer, nn.Conv2d):

            def conv(x: Tensor, w: Tensor, b: Tensor | None, layer: nn.Conv2d = layer) -> Tensor:
                return torch.nn.functional.conv2d(x, w, b, layer.stride, layer.padding)

            weight, bias = layer.weight.detach(), layer.bias.detach()
            head, beta = conv(head, weight, bias), conv(beta, weight.abs(), None)
            flat = conv(errors.reshape(-1, *errors.shape[2:]), weight, None)
            errors = flat.reshape(errors.shape[0], errors.shape[1], *flat.shape[1:])
        elif isinstance(layer, nn.Flatten):
            head, beta, errors = head.flatten(1), beta.flatten(1), errors.flatten(2)
        elif isinstance(layer, Normalize):
            mean, std = layer.mean.reshape(-1, 1, 1), layer.std.reshape(-1, 1, 1)
            head, beta, errors = (head - mean) / std, beta / std.abs(), errors / std
        elif isinstance(layer, nn.ReLU):
            spread = beta + errors.abs().sum(0)
            low, high = head - spread, head + spread
            pre.append((low, high))
            lines = relaxation.coefficients(low, high)  # type: ignore[attr-defined]
            assert torch.equal(lines.lower_slope, lines.upper_slope)  # the hybrid domains' lines are parallel
            slope = lines.lower_slope
            middle, half = (
                (lines.lower_offset + lines.upper_offset) / 2,
                (lines.upper_offset - lines.lower_offset) / 2,
            )
            head, beta, errors = head * slope + middle, beta * slope.abs() + half, errors * slope
        else:
            raise AssertionError(type(layer))
    return head - beta - errors.abs().sum(0), pre


def _dense(seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 12),
        nn.ReLU(),
        nn.Linear(12, 10),
        nn.ReLU(),
        nn.Linear(10, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )
    return model.double(), (6,)


def _conv(seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        Normalize([0.3], [0.4]),
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
        nn.ReLU(),
        nn.Linear(10, 4),
    )
    return model.double(), (1, 8, 8)


@pytest.mark.parametrize("name", HYBRID)
@pytest.mark.parametrize("build", [_dense, _conv], ids=["dense", "conv"])
@pytest.mark.parametrize("seed", range(3))
def test_the_hybrid_hbox_family_is_the_papers_hybrid_zonotope(name: str, build, seed: int) -> None:  # noqa: ANN001
    model, shape = build(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(5, *shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (5,), generator=generator)
    spec = margin_spec(labels, 4, dtype=torch.float64)
    lower, upper = (x - 0.15).clamp(0, 1), (x + 0.15).clamp(0, 1)
    relaxation = relaxlab.get_relaxation(name)
    with torch.no_grad():
        want, want_pre = hybrid_zonotope(model, lower, upper, relaxation, spec)
        lb, _ = bound_network(model, lower, upper, relaxation, spec, lower_only=True)
        pre, _ = intermediate_bounds(model, lower, upper, relaxation)
    scale = 1.0 + float(want.abs().max())
    assert any(bool(((low < 0) & (high > 0)).any()) for low, high in want_pre)  # unstable ReLUs exercised
    torch.testing.assert_close(lb, want, atol=1e-11 * scale, rtol=0)
    for (low, high), (want_low, want_high) in zip(pre, want_pre, strict=True):
        torch.testing.assert_close(low, want_low, atol=1e-11 * scale, rtol=0)
        torch.testing.assert_close(high, want_high, atol=1e-11 * scale, rtol=0)


@pytest.mark.parametrize(
    ("hybrid", "text"),
    [("hBox-Hybrid", "hBox"), ("hBox-Diag-Hybrid", "hBox-Diag"), ("hBox-Diag-C-Hybrid", "hBox-Diag-C")],
)
def test_the_hybrid_zonotope_is_never_tighter_than_backsubstitution(hybrid: str, text: str) -> None:
    """The text's versions keep every new term symbolic; the code's aggregate it into a box part
    (``|W·g| <= |W|·|g|``), and looser bounds only loosen these monotone lines."""
    for seed in range(4):
        for build in (_dense, _conv):
            model, shape = build(seed)
            x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            lower, upper = (x - 0.2).clamp(0, 1), (x + 0.2).clamp(0, 1)
            with torch.no_grad():
                lb_h, ub_h = bound_network(model, lower, upper, relaxlab.get_relaxation(hybrid))
                lb_t, ub_t = bound_network(model, lower, upper, relaxlab.get_relaxation(text))
            assert bool((lb_h <= lb_t + 1e-10).all()) and bool((ub_h >= ub_t - 1e-10).all())


@pytest.mark.parametrize("name", ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-1-C", "DeepZ-Soft", "LooseIBP-DC"])
@pytest.mark.parametrize("build", [_dense, _conv], ids=["dense", "conv"])
def test_forward_mode_is_sound_for_lines_of_any_slope(name: str, build) -> None:  # noqa: ANN001
    """Any relaxation propagated forward (non-parallel lines: two forms) contains every sampled output,
    and its bounds contain the backsubstitution bounds' worst points (vertices of small boxes)."""
    model, shape = build(5)
    relaxation = evolve(relaxlab.get_relaxation(name), intermediate="forward", final="forward")
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(3, *shape, generator=generator, dtype=torch.float64)
    lower, upper = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
    spec = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        lb, ub = bound_network(model, lower, upper, relaxation, spec)
        points = lower + (upper - lower) * torch.rand(
            2000, *lower.shape, generator=generator, dtype=torch.float64
        )
        values = (spec.unsqueeze(0) @ model(points.flatten(0, 1)).reshape(2000, 3, 4, 1)).squeeze(-1)
    assert bool(torch.isfinite(lb).all() and torch.isfinite(ub).all())
    assert bool((values >= lb - 1e-9).all()) and bool((values <= ub + 1e-9).all())


def test_forward_forms_are_shared_for_parallel_lines_and_split_otherwise() -> None:
    """The hybrid zonotope (one linear part, a box part) for parallel lines; two forms for CROWN's."""
    from relaxlab.engine import Bounder, parse_model, propagation

    model, shape = _dense(0)
    network = parse_model(model, shape)
    x = torch.rand(2, *shape, dtype=torch.float64)
    for name, shared in (("hBox-Hybrid", True), ("CROWN", False)):
        relaxation = evolve(relaxlab.get_relaxation(name), intermediate="forward", final="forward")
        run = Bounder(network, x - 0.3, x + 0.3, relaxation, propagation(relaxation))
        last_relu = network.relus[-1]
        assert run.forms(last_relu).shared is shared
