"""Training objectives: registry and parameters, degenerate cases exact, gradients, and the SABR box.

Degenerate cases are compared in float64 on tiny networks, bitwise where the objective takes the
same code path (SABR with λ = 1, the α = 1 ends) and to 1e-12 where the formula only reduces
algebraically (CC-IBP at α = 0 is the adversarial cross-entropy written through margins).
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import relaxlab
from relaxlab import registry as registry_module
from relaxlab.core.relaxation import ParamSpec
from relaxlab.engine.spec import margin_bounds, margin_spec, other_classes
from relaxlab.evaluation.pgd import pgd
from relaxlab.objectives import Objective, ObjectiveContext, kappa_mixed, sabr_centre, sabr_decay
from relaxlab.training.loss import BatchContext, training_loss

RELAXATIONS = ("IBP", "DeepZ", "CROWN", "CROWN-IBP (R)")
F64 = torch.float64


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()


def _batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 2, 3, generator=generator, dtype=F64)
    x[0].zero_()  # an image at the domain's corner: boxes get clipped
    x[1].fill_(1.0)
    return x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _objective(text: str) -> Objective:
    return relaxlab.get_registry().objectives.get(text)


def _loss(
    model: nn.Module,
    objective: str,
    relaxation: str = "DeepZ",
    *,
    kappa: float = 0.0,
    eps: float = 0.2,
    beta: float = 0.5,
    seed: int = 3,
) -> tuple[Tensor, dict[str, float]]:
    x, y = _batch()
    return training_loss(
        model,
        x,
        y,
        eps=eps,
        kappa=kappa,
        beta=beta,
        relaxations=(relaxlab.get_relaxation(relaxation),),
        num_classes=3,
        elision=True,
        l1=0.0,
        objective=_objective(objective),
        generator=torch.Generator().manual_seed(seed),
    )


def _loss_and_grads(objective: str, relaxation: str = "DeepZ", **kwargs: Any) -> tuple[Tensor, list[Tensor]]:
    model = _net()
    loss, _ = _loss(model, objective, relaxation, **kwargs)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), [g.detach() for g in grads]


def _same(a: tuple[Tensor, list[Tensor]], b: tuple[Tensor, list[Tensor]]) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(g, h) for g, h in zip(a[1], b[1], strict=True))


# --------------------------------------------------------------------------- registry and parameters


def test_the_builtins_are_registered_by_their_plugin() -> None:
    objectives = relaxlab.get_registry().objectives
    assert objectives.names() == ["kappa-mix", "CROWN-IBP", "SABR", "MTL-IBP", "CC-IBP", "EXP-IBP"]
    assert {objectives.source(n) for n in objectives.names()} == {"relaxlab.objectives"}
    assert all(
        objectives[n].summary and objectives[n].reference and objectives[n].formula for n in objectives
    )
    assert objectives.get("sabr (lambda = 0.6)").label == "SABR(lambda=0.6)"
    assert objectives.get("mtl ibp(alpha=0.004)").label == "MTL-IBP"  # the default is not repeated


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SABRR", "unknown objective 'SABRR'; did you mean 'SABR'?"),
        (
            "SABR(lamda=0.5)",
            "SABR has no parameter 'lamda' (did you mean 'lambda'?); its parameters: lambda, steps",
        ),
        ("SABR(lambda=0)", "SABR: parameter lambda must be > 0, got 0"),
        ("SABR(lambda=1.5)", "SABR: parameter lambda must be <= 1, got 1.5"),
        ("MTL-IBP(alpha=-0.1)", "MTL-IBP: parameter alpha must be >= 0, got -0.1"),
        ("MTL-IBP(steps=1.5)", "MTL-IBP: parameter steps must be a whole number, got 1.5"),
        ("CC-IBP(attack_eps_factor=0)", "CC-IBP: parameter attack_eps_factor must be > 0, got 0"),
        ("EXP-IBP(alpha=x)", "EXP-IBP: parameter 'alpha' needs a number, got 'x'"),
        ("kappa-mix(alpha=1)", "kappa-mix has no parameters, got 'alpha'"),
    ],
)
def test_bad_parameters_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        _objective(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_plugin_objective_comes_in_through_the_hook_and_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    def half(context: ObjectiveContext, params: Any) -> Any:
        return kappa_mixed(context, lambda: (params["weight"] * context.certified_loss(), {"half": 1.0}))

    plugin = types.ModuleType("objective_plugin")

    @relaxlab.hookimpl
    def relaxlab_objectives() -> list[Any]:
        return [
            Objective(
                name="plugin-Half",
                loss=half,
                params=(ParamSpec("weight", 0.5, minimum=0.0),),
                summary="half the certified loss",
            ),
            "not an objective",
        ]

    plugin.relaxlab_objectives = relaxlab_objectives  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "objective_plugin", plugin)
    monkeypatch.setattr(
        registry_module, "BUILTIN_PLUGINS", (*registry_module.BUILTIN_PLUGINS, "objective_plugin")
    )
    registry = registry_module.build_registry(load_entry_points=False)
    assert registry.objectives.source("plugin-half") == "objective_plugin"
    assert any("returned 'not an objective', expected an Objective" in str(e) for e in registry.errors)
    model = _net()
    x, y = _batch()
    ibp = relaxlab.get_relaxation("IBP")
    loss, parts = training_loss(
        model,
        x,
        y,
        eps=0.1,
        kappa=0.0,
        beta=1.0,
        relaxations=(ibp,),
        num_classes=3,
        elision=True,
        l1=0.0,
        objective=registry.objectives.get("plugin-Half(weight=0.25)"),
    )
    full, _ = training_loss(
        model, x, y, eps=0.1, kappa=0.0, beta=1.0, relaxations=(ibp,), num_classes=3, elision=True, l1=0.0
    )
    assert parts["half"] == 1.0 and torch.allclose(loss, 0.25 * full, rtol=1e-14, atol=0.0)


# --------------------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("relaxation", RELAXATIONS)
@pytest.mark.parametrize(
    "objective",
    [
        "SABR(lambda=1, steps=0)",
        "SABR(lambda=1)",
        "MTL-IBP(alpha=1)",
        "CC-IBP(alpha=1)",
        "EXP-IBP(alpha=1)",
        "CROWN-IBP",
    ],
)
def test_the_certified_ends_are_the_papers_loss_bitwise(objective: str, relaxation: str) -> None:
    """SABR with λ = 1 propagates the ε-box itself; α = 1 is the certified loss; CROWN-IBP at β = 1."""
    assert _same(_loss_and_grads(objective, relaxation, beta=1.0), _loss_and_grads("kappa-mix", relaxation))


def _adversarial(
    model: nn.Module,
    factor: float = 2.1,
    steps: int = 8,
    step_size: float = 0.25,
    eps: float = 0.2,
    seed: int = 3,
) -> Tensor:
    """The adversarial cross-entropy computed from the one PGD directly (the same seeded start)."""
    x, y = _batch()
    radius = factor * eps
    lower, upper = (x - radius).clamp(min=0.0), (x + radius).clamp(max=1.0)
    point = pgd(
        model,
        x,
        y,
        lower,
        upper,
        steps=steps,
        step_size=step_size * radius,
        start="random",
        generator=torch.Generator().manual_seed(seed),
    ).point
    return F.cross_entropy(model(point), y)


@pytest.mark.parametrize("objective", ["MTL-IBP(alpha=0)", "EXP-IBP(alpha=0)", "CC-IBP(alpha=0)"])
def test_the_adversarial_ends_are_adversarial_training(objective: str) -> None:
    model = _net()
    loss, parts = _loss(model, objective)
    expected = _adversarial(model)
    if objective.startswith("CC"):  # CE of the margins z_y - z_j equals CE of the logits up to rounding
        assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12, abs=0.0)
    else:
        assert torch.equal(loss.detach(), expected.detach()) and parts["loss_adversarial"] == float(
            expected.detach()
        )
        assert "loss_certified" not in parts  # the bound is not computed at α = 0


@pytest.mark.parametrize("relaxation", ["IBP", "CROWN"])
def test_the_mixtures_are_their_formulas(relaxation: str) -> None:
    model = _net()
    certified = _loss(model, "kappa-mix", relaxation)[0].detach()
    adversarial = _adversarial(model).detach()
    alpha = 0.3
    mtl, parts = _loss(model, f"MTL-IBP(alpha={alpha})", relaxation)
    assert parts["loss_certified"] == float(certified) and parts["loss_adversarial"] == float(adversarial)
    assert float(mtl.detach()) == pytest.approx(
        alpha * float(certified) + (1 - alpha) * float(adversarial), rel=1e-14
    )
    exp, _ = _loss(model, f"EXP-IBP(alpha={alpha})", relaxation)
    assert float(exp.detach()) == pytest.approx(
        float(certified) ** alpha * float(adversarial) ** (1 - alpha), rel=1e-12
    )
    cc, _ = _loss(model, f"CC-IBP(alpha={alpha})", relaxation)
    x, y = _batch()
    lb, others = margin_bounds(model, x, y, 0.2, relaxlab.get_relaxation(relaxation), num_classes=3)
    point_logits = model(_adversarial_point(model))
    margins = point_logits.gather(1, y.unsqueeze(1)) - point_logits.gather(1, others)
    worst = torch.zeros(8, 3, dtype=F64).scatter(1, others, -(alpha * lb + (1 - alpha) * margins))
    assert float(cc.detach()) == pytest.approx(float(F.cross_entropy(worst, y).detach()), rel=1e-12)


def _adversarial_point(model: nn.Module) -> Tensor:
    x, y = _batch()
    lower, upper = (x - 0.42).clamp(min=0.0), (x + 0.42).clamp(max=1.0)
    return pgd(
        model,
        x,
        y,
        lower,
        upper,
        steps=8,
        step_size=0.25 * 0.42,
        start="random",
        generator=torch.Generator().manual_seed(3),
    ).point


@functools.cache
def _expressive(objective: str, alpha: float) -> float:
    attack = "steps=1, step_size=10, attack_eps_factor=1"  # FGSM from a random start, inside the ε-box
    return float(_loss(_net(), f"{objective}(alpha={alpha!r}, {attack})", "CROWN")[0].detach())


@pytest.mark.parametrize("objective", ["MTL-IBP", "CC-IBP", "EXP-IBP"])
@given(alpha=st.floats(0.0, 1.0))
def test_the_expressive_losses_lie_between_the_adversarial_and_the_certified_loss(
    objective: str, alpha: float
) -> None:
    """With the attack inside the ε-box (factor 1), every α gives a loss between the adversarial
    loss (α = 0, a lower bound of the worst case) and the certified one (α = 1, an upper bound):
    the expressivity of De Palma et al. (their Definition 3.1)."""
    low, high = _expressive(objective, 0.0), _expressive(objective, 1.0)
    assert low < high
    assert low - 1e-12 <= _expressive(objective, alpha) <= high + 1e-12


@given(alpha=st.floats(0.0, 1.0))
def test_mtl_and_exp_ibp_are_their_combinations_and_cc_ibp_is_convex_in_alpha(alpha: float) -> None:
    """For every α, with the same attack (the same seeded start): MTL-IBP is exactly the convex
    combination of its ends, EXP-IBP the geometric one (De Palma et al., Sec. 3), and CC-IBP,
    a cross-entropy (convex) of margins affine in α, lies below the chord of its ends."""
    cert_mtl, adv_mtl = _expressive("MTL-IBP", 1.0), _expressive("MTL-IBP", 0.0)
    assert _expressive("MTL-IBP", alpha) == pytest.approx(
        alpha * cert_mtl + (1 - alpha) * adv_mtl, rel=1e-12, abs=0.0
    )
    cert_exp, adv_exp = _expressive("EXP-IBP", 1.0), _expressive("EXP-IBP", 0.0)
    assert _expressive("EXP-IBP", alpha) == pytest.approx(
        cert_exp**alpha * adv_exp ** (1 - alpha), rel=1e-12, abs=0.0
    )
    cert_cc, adv_cc = _expressive("CC-IBP", 1.0), _expressive("CC-IBP", 0.0)
    assert _expressive("CC-IBP", alpha) <= alpha * cert_cc + (1 - alpha) * adv_cc + 1e-12


def test_kappa_one_computes_no_robust_term_and_kappa_mixes_every_objective() -> None:
    model = _net()
    for objective in ("kappa-mix", "SABR(lambda=0.5)", "MTL-IBP(alpha=0.5)", "CC-IBP(alpha=0.5)", "EXP-IBP"):
        loss, parts = _loss(model, objective, kappa=1.0)
        assert set(parts) == {"loss", "loss_natural", "accuracy"}, objective
        loss, parts = _loss(model, objective, kappa=0.25)
        assert float(loss.detach()) == pytest.approx(
            0.25 * parts["loss_natural"] + 0.75 * parts["loss_robust"], rel=1e-14
        )


def _small_box_loss(
    model: nn.Module, y: Tensor, small_lower: Tensor, small_upper: Tensor, relaxation: str
) -> float:
    """The certified cross-entropy over a box, bounded directly (its centre and half-width, no domain)."""
    lb, _ = relaxlab.compute_bounds(
        model,
        (small_lower + small_upper) / 2,
        (small_upper - small_lower) / 2,
        relaxation,
        C=margin_spec(y, 3, dtype=F64),
    )
    worst = torch.zeros(len(y), 3, dtype=F64).scatter(1, other_classes(y, 3), -lb)
    return float(F.cross_entropy(worst, y).detach())


def test_sabr_without_an_attack_propagates_the_small_box_around_the_clean_point() -> None:
    model = _net()
    loss, _ = _loss(model, "SABR(lambda=0.25, steps=0)", "CROWN")
    x, y = _batch()
    lower, upper = (x - 0.2).clamp(min=0.0), (x + 0.2).clamp(max=1.0)
    centre = sabr_centre(x, lower, upper, 0.05)
    small_lower, small_upper = torch.max(centre - 0.05, lower), torch.min(centre + 0.05, upper)
    assert float(loss.detach()) == pytest.approx(
        _small_box_loss(model, y, small_lower, small_upper, "CROWN"), rel=1e-10
    )
    assert float(loss.detach()) < float(
        _loss(model, "kappa-mix", "CROWN")[0].detach()
    )  # a quarter of the box: a smaller loss


def test_sabr_propagates_the_small_box_around_the_pgd_point_inside_the_eps_box() -> None:
    """SABR with its attack: the PGD point (the one PGD, the same seeded start, SABR's step decay)
    is the box's centre wherever the small box fits inside the ε-box, the box never leaves the
    ε-box, and the loss is the relaxation's certified loss over that box."""
    model = _net()
    eps, lam, steps = 0.2, 0.3, 5
    loss, _ = _loss(model, f"SABR(lambda={lam}, steps={steps})", "DeepZ", eps=eps)
    x, y = _batch()
    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    point = pgd(
        model,
        x,
        y,
        lower,
        upper,
        steps=steps,
        step_size=0.5 * eps,
        start="random",
        generator=torch.Generator().manual_seed(3),
        decay_at=sabr_decay(steps),
    ).point
    radius = lam * eps
    centre = sabr_centre(point, lower, upper, radius)
    small_lower, small_upper = torch.max(centre - radius, lower), torch.min(centre + radius, upper)
    assert bool(((lower <= small_lower) & (small_lower <= small_upper) & (small_upper <= upper)).all())
    fits = (point - lower >= radius) & (upper - point >= radius)
    assert bool(fits.any()) and bool((centre[fits] == point[fits]).all())
    assert bool(((small_upper - small_lower)[fits] - 2 * radius).abs().le(1e-12).all())
    assert not torch.equal(centre, sabr_centre(x, lower, upper, radius))  # the attack moved the box
    assert float(loss.detach()) == pytest.approx(
        _small_box_loss(model, y, small_lower, small_upper, "DeepZ"), rel=1e-10
    )


def test_sabr_decays_its_steps_as_published() -> None:
    assert sabr_decay(8) == (4, 7, 8)  # steps 4-6 at a tenth, step 7 at a hundredth
    assert sabr_decay(20) == (10, 16, 18)


@given(
    x=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    eps=st.floats(0.0, 0.5),
    lam=st.floats(0.0, 1.0, exclude_min=True),
    position=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
)
def test_the_sabr_box_lies_in_the_eps_box_and_is_as_large_as_it_fits(
    x: list[float], eps: float, lam: float, position: list[float]
) -> None:
    x_t = torch.tensor(x, dtype=F64)
    lower, upper = (x_t - eps).clamp(min=0.0), (x_t + eps).clamp(max=1.0)
    point = lower + torch.tensor(position[: len(x)], dtype=F64) * (upper - lower)
    radius = lam * eps
    centre = sabr_centre(point, lower, upper, radius)
    assert bool(((lower <= centre) & (centre <= upper)).all())
    small_lower, small_upper = torch.max(centre - radius, lower), torch.min(centre + radius, upper)
    fits = upper - lower >= 2 * radius
    # where the small box fits it keeps its full width (up to rounding), else it covers the ε-box side
    width = small_upper - small_lower
    assert bool((width[fits] >= 2 * radius - 1e-12).all())
    assert bool(
        (width[~fits] >= torch.minimum(upper - lower, torch.tensor(radius, dtype=F64))[~fits] - 1e-12).all()
    )
    # and it contains the attack point when that point is not too close to the ε-box's edge
    inside = (point - lower >= radius) & (upper - point >= radius)
    assert bool((centre[inside] == point[inside]).all())


# --------------------------------------------------------------------------- gradients


def _functional(objective: str, relaxation: str) -> tuple[Any, tuple[Tensor, ...]]:
    """The loss as a function of the network's weights and biases (for gradcheck)."""
    model = _net(4)
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    linears = [m for m in model if isinstance(m, nn.Linear)]

    def loss(*weights: Tensor) -> Tensor:
        for layer, (w, b) in zip(linears, zip(weights[::2], weights[1::2], strict=True), strict=True):
            del layer.weight, layer.bias
            layer.weight, layer.bias = w, b  # plain tensors: the engine and forward read them
        return _loss(model, objective, relaxation, eps=0.1, kappa=0.2)[0]

    return loss, params


@pytest.mark.parametrize(
    ("objective", "relaxation"),
    [
        ("kappa-mix", "CROWN"),
        ("CROWN-IBP", "CROWN-IBP (R)"),
        ("SABR(lambda=0.4, steps=2)", "DeepZ"),
        ("MTL-IBP(alpha=0.5, steps=1, step_size=10, attack_eps_factor=1)", "IBP"),
        ("CC-IBP(alpha=0.5, steps=1, step_size=10, attack_eps_factor=1)", "CROWN"),
        ("EXP-IBP(alpha=0.5, steps=1, step_size=10, attack_eps_factor=1)", "DeepZ"),
    ],
)
def test_gradients_match_finite_differences(objective: str, relaxation: str) -> None:
    """The attack's point is not differentiated (as in every published implementation): it is fixed
    for a perturbation of 1e-6, so finite differences see the same piecewise-smooth loss. Fast mode:
    the derivative along random directions of all weights at once."""
    loss, params = _functional(objective, relaxation)
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_the_context_refuses_nothing_silently() -> None:
    x, y = _batch()
    context = BatchContext(
        model=_net(),
        x=x,
        labels=y,
        eps=0.1,
        kappa=0.0,
        beta=1.0,
        relaxation=relaxlab.get_relaxation("IBP"),
        num_classes=3,
    )
    with pytest.raises(ValueError, match="the CROWN-IBP defense mixes a relaxation with IBP"):
        training_loss(
            _net(),
            x,
            y,
            eps=0.1,
            kappa=0.0,
            beta=1.0,
            num_classes=3,
            elision=True,
            l1=0.0,
            relaxations=(relaxlab.get_relaxation("CROWN"), relaxlab.get_relaxation("DeepZ")),
        )
    assert torch.equal(context.certified_loss("IBP"), context.certified_loss())
