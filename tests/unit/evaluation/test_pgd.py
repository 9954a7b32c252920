"""The one PGD: the evaluation attack unchanged, boxes respected, starts seeded, bad input refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from relaxlab.evaluation.pgd import pgd, pgd_robust


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _batch(seed: int = 1, n: int = 32) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, 4, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def _madry(model: nn.Module, x: Tensor, labels: Tensor, eps: float, steps: int, step_size: float) -> Tensor:
    """App. F.4 as relaxlab evaluated it before the attack was shared with training."""
    lower, upper = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    with torch.no_grad():
        robust = model(x).argmax(1) == labels
    x_adv = x.detach().clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        robust &= (logits.argmax(1) == labels).detach()
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x_adv)
        x_adv = torch.max(torch.min(x_adv.detach() + step_size * grad.sign(), upper), lower)
    with torch.no_grad():
        robust &= model(x_adv).argmax(1) == labels
    return robust


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_the_evaluation_attack_is_what_it_was(eps: float) -> None:
    model, (x, y) = _net(), _batch()
    model.train()
    assert torch.equal(
        pgd_robust(model, x, y, eps, steps=20, step_size=0.02), _madry(model, x, y, eps, 20, 0.02)
    )
    assert model.training  # the mode is restored


@given(
    eps=st.floats(0.0, 0.5),
    steps=st.integers(0, 6),
    seed=st.integers(0, 3),
    start=st.sampled_from(["centre", "random"]),
)
def test_the_point_stays_in_the_box_and_is_the_strongest_iterate(
    eps: float, steps: int, seed: int, start: str
) -> None:
    model, (x, y) = _net(seed), _batch(seed)
    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    generator = torch.Generator().manual_seed(seed)
    result = pgd(
        model, x, y, lower, upper, steps=steps, step_size=0.5 * eps, start=start, generator=generator
    )
    assert bool(((lower <= result.point) & (result.point <= upper)).all())
    # the kept point is at least as strong as the start, and as the start of a zero-step attack
    first = pgd(
        model,
        x,
        y,
        lower,
        upper,
        steps=0,
        step_size=0.0,
        start=start,
        generator=torch.Generator().manual_seed(seed),
    ).point
    with torch.no_grad():
        kept = F.cross_entropy(model(result.point), y, reduction="none")
        begun = F.cross_entropy(model(first), y, reduction="none")
    assert bool((kept >= begun).all())
    # robust: correct at the clean input and at the kept point
    with torch.no_grad():
        correct = (model(x).argmax(1) == y) & (model(result.point).argmax(1) == y)
    assert bool((result.robust <= correct).all())


def test_random_starts_are_seeded_and_a_centre_start_is_the_clean_point() -> None:
    model, (x, y) = _net(), _batch()
    lower, upper = (x - 0.1).clamp(min=0.0), (x + 0.1).clamp(max=1.0)

    def start(kind: str, seed: int) -> Tensor:
        return pgd(
            model,
            x,
            y,
            lower,
            upper,
            steps=0,
            step_size=0.0,
            start=kind,
            generator=torch.Generator().manual_seed(seed),
        ).point

    assert torch.equal(start("random", 5), start("random", 5)) and not torch.equal(
        start("random", 5), start("random", 6)
    )
    assert torch.equal(start("centre", 5), x)


def test_a_decay_to_zero_stops_the_attack_where_it_is() -> None:
    model, (x, y) = _net(), _batch()
    lower, upper = (x - 0.2).clamp(min=0.0), (x + 0.2).clamp(max=1.0)
    frozen = pgd(model, x, y, lower, upper, steps=5, step_size=0.1, decay_at=(0,), decay_factor=0.0)
    assert torch.equal(frozen.point, x)
    moving = pgd(model, x, y, lower, upper, steps=5, step_size=0.1, decay_at=(3,), decay_factor=0.0)
    assert not torch.equal(moving.point, x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "PGD steps must be an int >= 0"),
        ({"steps": 2.5}, "PGD steps must be an int >= 0"),
        ({"start": "corner"}, "PGD start must be one of"),
        ({"start": "random", "generator": None}, "a random PGD start needs a torch.Generator"),
        ({"step_size": -0.1}, "PGD step_size must be finite and >= 0"),
        ({"step_size": float("nan")}, "PGD step_size must be finite and >= 0"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    model, (x, y) = _net(), _batch()
    arguments: dict[str, object] = {"steps": 1, "step_size": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        pgd(model, x, y, x, x, **arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lower > upper"):
        pgd(model, x, y, x + 0.1, x, steps=1, step_size=0.1)
