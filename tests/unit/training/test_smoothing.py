"""Loss smoothing: the estimator against closed forms, exact restoration, seeding, and training with it.

Statistical checks use a fixed seed and a tolerance of 5 standard errors of the estimated mean
(the standard error computed from the closed-form variance), so they are deterministic and a
correct estimator passes them with a margin.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relaxlab
from relaxlab.training.config import TrainConfig
from relaxlab.training.loss import training_loss
from relaxlab.training.smoothing import (
    noise_generator,
    noise_seed,
    smoothed_backward,
    update_running_stats,
)
from relaxlab.training.trainer import load_data, train

#: copies of the parameter vector bounded at once (each element gets its own noise) x samples
ROWS, SAMPLES = 2000, 10
SIGMA = 0.1
THETA = torch.tensor([-0.3, -0.05, 0.0, 0.02, 0.15, 0.4], dtype=torch.float64)


class _Toy(nn.Module):
    """``ROWS`` copies of ``THETA`` as one parameter: one call draws ``ROWS * SAMPLES`` samples per entry."""

    def __init__(self, theta: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.expand(ROWS, -1).clone())


def _estimate(loss: Any, theta: Tensor = THETA, seed: int = 0) -> Tensor:
    """Mean over rows of the smoothed-gradient estimate of ``sum_rows loss(row)``."""
    toy = _Toy(theta)
    smoothed_backward(
        toy,
        lambda: (loss(toy.theta).sum(), {}),
        samples=SAMPLES,
        sigma=SIGMA,
        generator=torch.Generator().manual_seed(seed),
    )
    assert toy.theta.grad is not None
    return toy.theta.grad.mean(dim=0)


def test_quadratic_loss_smoothed_gradient_is_the_plain_gradient() -> None:
    """L = 1/2 t'At + b't: E[A(t + s e) + b] = At + b; the estimate has covariance s^2 A A' / n."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    b = torch.randn(6, generator=generator, dtype=torch.float64)
    got = _estimate(lambda t: 0.5 * ((t @ a.T) * t).sum(-1) + t @ b)
    # the gradient of 1/2 t'At is (A + A')t / 2
    sym = (a + a.T) / 2
    expected = sym @ THETA + b
    standard_error = SIGMA * torch.sqrt(torch.diag(sym @ sym.T) / (ROWS * SAMPLES))
    assert torch.all((got - expected).abs() <= 5 * standard_error), (got, expected, standard_error)


def test_absolute_value_smoothed_gradient_is_erf() -> None:
    """L = |t|: E[sign(t + s e)] = erf(t / (s sqrt 2)), variance 1 - mean^2."""
    got = _estimate(lambda t: t.abs().sum(-1))
    expected = torch.erf(THETA / (SIGMA * math.sqrt(2)))
    standard_error = torch.sqrt((1 - expected**2) / (ROWS * SAMPLES))
    assert torch.all((got - expected).abs() <= 5 * standard_error), (got, expected)
    # and it is not the plain gradient sign(t) (the check would be void otherwise)
    assert (got - torch.sign(THETA)).abs().max() > 0.5


def test_hinge_smoothed_gradient_is_the_normal_cdf() -> None:
    """L = relu(t): E[1(t + s e > 0)] = Phi(t / s) = (1 + erf(t / (s sqrt 2))) / 2, variance p (1 - p)."""
    got = _estimate(lambda t: torch.relu(t).sum(-1), seed=3)
    expected = 0.5 * (1 + torch.erf(THETA / (SIGMA * math.sqrt(2))))
    standard_error = torch.sqrt(expected * (1 - expected) / (ROWS * SAMPLES))
    assert torch.all((got - expected).abs() <= 5 * standard_error), (got, expected)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _loss_fn(model: nn.Module) -> Any:
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ibp = relaxlab.get_relaxation("CROWN-IBP (R)")

    def loss_fn() -> tuple[Tensor, dict[str, float]]:
        return training_loss(
            model,
            x,
            y,
            eps=0.1,
            kappa=0.5,
            beta=1.0,
            relaxations=(ibp,),
            num_classes=3,
            elision=True,
            l1=1e-3,
        )

    return loss_fn


def test_weights_are_restored_bitwise_and_the_noise_is_seeded() -> None:
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    parts = smoothed_backward(model, _loss_fn(model), samples=3, sigma=0.5, generator=noise_generator(0, 7))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    assert set(parts) == {"loss", "loss_natural", "loss_robust", "accuracy"}
    # the same (seed, step) gives the same gradient; another step another one
    smoothed_backward(model, _loss_fn(model), samples=3, sigma=0.5, generator=noise_generator(0, 7))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    smoothed_backward(model, _loss_fn(model), samples=3, sigma=0.5, generator=noise_generator(0, 8))
    assert not all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert len({noise_seed(0, 7), noise_seed(0, 8), noise_seed(1, 7)}) == 3
    assert noise_seed(0, 7) == noise_seed(0, 7) < 2**63


def test_weights_are_restored_when_the_loss_fails() -> None:
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    calls = []
    inner = _loss_fn(model)

    def failing() -> tuple[Tensor, dict[str, float]]:
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("boom")
        return inner()

    with pytest.raises(FloatingPointError):
        smoothed_backward(model, failing, samples=3, sigma=0.5, generator=noise_generator(0, 0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_one_sample_of_zero_noise_is_the_plain_gradient_bitwise() -> None:
    model = _net()
    loss, _ = _loss_fn(model)()
    loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    smoothed_backward(model, _loss_fn(model), samples=1, sigma=0.0, generator=noise_generator(0, 0))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), plain, strict=True))


def test_batchnorm_running_stats_are_updated_once_from_the_clean_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).train()
    x = torch.randn(8, 3)
    reference = copy.deepcopy(model)
    reference(x)  # what one unsmoothed step does to the statistics
    smoothed_backward(
        model, lambda: (model(x).square().sum(), {}), samples=4, sigma=0.3, generator=noise_generator(0, 0)
    )
    assert torch.equal(model[1].running_mean, torch.zeros(4)) and int(model[1].num_batches_tracked) == 0
    update_running_stats(model, x)
    for name, buffer in reference[1].named_buffers():
        assert torch.equal(getattr(model[1], name), buffer), name


def test_bad_arguments_are_refused() -> None:
    model = _net()
    with pytest.raises(ValueError, match="samples must be >= 1"):
        smoothed_backward(model, _loss_fn(model), samples=0, sigma=0.1, generator=noise_generator(0, 0))
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        smoothed_backward(
            model, _loss_fn(model), samples=1, sigma=float("nan"), generator=noise_generator(0, 0)
        )


@pytest.fixture(scope="module")
def tiny_data() -> Any:
    return load_data(TrainConfig())


SMALL = {
    "architecture": "FC-S",
    "method": "crown-ibp",
    "epochs": 2,
    "rampup_epochs": 1,
    "eps_train": 0.1,
    "eps_test": 0.1,
    "kappa_end": 0.5,
    "batch_size": 50,
    "train_subset": 100,
    "test_subset": 20,
}


def test_smoothed_training_resumes_bitwise_and_zero_samples_is_unsmoothed(
    tmp_path: Path, tiny_data: Any
) -> None:
    config = TrainConfig(**SMALL, smoothing_samples=2, smoothing_sigma=0.01, grad_clip=1.0)
    full = train(config, tmp_path / "full", data=tiny_data)
    part = train(config, tmp_path / "part", data=tiny_data, stop_after=1)
    assert not part.finished
    resumed = train(config, tmp_path / "part", data=tiny_data, resume=True)
    assert resumed.history == full.history and resumed.final == full.final
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)
    # k = 0 is the unsmoothed run: the same config (and JSON, so the same checkpoint and sweep id) as one
    # that never names smoothing, hence the same code path and bitwise the same weights
    off = TrainConfig(**SMALL, grad_clip=1.0, smoothing_samples=0, smoothing_sigma=0.0, loss_fusion=False)
    assert (
        off == TrainConfig(**SMALL, grad_clip=1.0)
        and off.to_json() == TrainConfig(**SMALL, grad_clip=1.0).to_json()
    )
    plain = train(off, tmp_path / "plain", data=tiny_data).model.state_dict()
    assert not all(torch.equal(full_state[k], v) for k, v in plain.items())  # smoothing changed the run
