"""Gaussian loss smoothing in weight space (Balauca et al. 2024), first-order estimator.

The smoothed loss is ``L_sigma(theta) = E[L(theta + sigma * eps)]`` with ``eps ~ N(0, I)`` over all
trainable parameters; its gradient is ``E[grad L(theta + sigma * eps)]`` (``L`` Lipschitz, so the
gradient exists almost everywhere and may be taken inside the expectation). The estimator used
for a step is the **plain average of the gradients at k independent perturbations**::

    g = (1/k) * sum_i grad L(theta + sigma * eps_i),   eps_i ~ N(0, I) i.i.d.

It is unbiased for ``grad L_sigma(theta)``; no antithetic pairs, no control variate. The step then
applies ``g`` at the unperturbed weights ``theta`` (gradient clipping and Adam as usual).

- **Cost**: k forward and backward passes of the loss per step (docs/training.md has the measured
  ratios), plus one copy of the parameters.
- **Weights**: each perturbation is undone by copying the saved parameters back, so ``theta`` is
  restored bitwise after every sample (no drift from adding and subtracting noise).
- **Noise**: drawn on the CPU, parameter by parameter in ``model.parameters()`` order, from a
  generator seeded by :func:`noise_seed` ``(seed, step)``: a run stays a function of its config,
  and a resumed run draws the same noise as an uninterrupted one without any state in the
  checkpoint.
- **BatchNorm**: the k perturbed passes leave the running statistics untouched (saved before and
  restored after each); :func:`update_running_stats` then updates them once per step from the
  clean batch at the unperturbed weights, as an unsmoothed step would.
- **Logged values**: the loss parts returned (loss, accuracy, ...) are their means over the k
  perturbed networks, i.e. estimates of the smoothed quantities (no extra pass at ``theta``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from relaxlab.training.schedule import step_seed

#: ``loss_fn() -> (loss, parts)``: the loss at the model's current weights and its parts as floats.
LossFn = Callable[[], tuple[Tensor, dict[str, float]]]


def noise_seed(seed: int, step: int) -> int:
    """The seed of the smoothing noise of global step ``step`` of a run seeded ``seed``
    (:func:`relaxlab.training.schedule.step_seed`)."""
    return step_seed("loss smoothing", seed, step)


def noise_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded with :func:`noise_seed` ``(seed, step)``."""
    return torch.Generator().manual_seed(noise_seed(seed, step))


_BatchNorm = nn.modules.batchnorm._BatchNorm


def _tracking_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def smoothed_backward(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    samples: int,
    sigma: float,
    generator: torch.Generator,
) -> dict[str, float]:
    """Set every trainable parameter's ``grad`` to the smoothed-gradient estimate (module docstring).

    The gradients are accumulated over the ``samples`` perturbed passes and divided by
    ``samples``; grads present before the call are discarded. The parameters hold bitwise their
    original values on return, also when ``loss_fn`` raises, and so do BatchNorm running statistics.

    :param model: the network; all its parameters with ``requires_grad`` are perturbed.
    :param loss_fn: computes the loss at the current weights (and its parts for logging).
    :param samples: k >= 1, the number of perturbations.
    :param sigma: the noise's standard deviation (>= 0; 0 gives k times the plain gradient, averaged).
    :param generator: source of the noise (:func:`noise_generator`).
    :return: the mean over the k passes of each part ``loss_fn`` returned.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in parameters]
    stats = [
        (m, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in _tracking_batchnorms(model)
    ]
    for p in parameters:
        p.grad = None
    sums: dict[str, float] = {}
    for _ in range(samples):
        try:
            with torch.no_grad():
                for p in parameters:
                    noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                    p.add_(noise.to(p.device), alpha=sigma)
            loss, parts = loss_fn()
            loss.backward()
        finally:
            _restore(parameters, saved, stats)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
    for p in parameters:
        if p.grad is not None:
            p.grad.div_(samples)
    return {key: value / samples for key, value in sums.items()}


def _restore(
    parameters: list[nn.Parameter],
    saved: list[Tensor],
    stats: list[tuple[_BatchNorm, dict[str, Tensor]]],
) -> None:
    """Copy the saved parameters and BatchNorm buffers back (bitwise)."""
    with torch.no_grad():
        for p, value in zip(parameters, saved, strict=True):
            p.copy_(value)
        for module, buffers in stats:
            for name, value in buffers.items():
                getattr(module, name).copy_(value)


def update_running_stats(model: nn.Module, x: Tensor) -> None:
    """One forward pass of ``x`` without gradients when the model has BatchNorm running statistics.

    After :func:`smoothed_backward` (which leaves them untouched), this updates them once, from
    the clean batch at the unperturbed weights; a model without them is not run.
    """
    if model.training and _tracking_batchnorms(model):
        with torch.no_grad():
            model(x)
