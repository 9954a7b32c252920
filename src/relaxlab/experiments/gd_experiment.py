"""The gradient-descent experiment of Sec. 4.4 / App. D of *On the Paradox of Certified Training*.

App. D: a network with a 1-dimensional input, 2 hidden layers of 10 neurons and 2 outputs;
input, weights and biases random integers in ``[-4, 4]``; ``ε`` uniform in ``[0.1, 4.1]``.
Gradient ascent on the first-layer weights maximises the lower bound of one output, for a
chosen relaxation and for IBP. As in Fig. 4 the optimisation is restricted to the line through
the initial weights along the (unit) gradient direction at ``δ = 0``, so the landscape and the
trajectory can be drawn over ``δ``. The paper's settings: for the discontinuous CROWN, learning
rate 0.02, decay 0.99, 20 epochs; for the sensitive DeepZ, 0.005, 0.99, 100 epochs (one
epoch = one step: there is one input).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path

import attrs
import torch
from torch import Tensor, nn

from relaxlab.api import get_relaxation
from relaxlab.core.relaxer import Relaxer
from relaxlab.properties import derive
from relaxlab.properties.directions import ValueFn, along_segments, bound_value

#: App. D's settings: (initial learning rate, decay per epoch, epochs).
DISCONTINUITY_SETTINGS = (0.02, 0.99, 20)
SENSITIVITY_SETTINGS = (0.005, 0.99, 100)


def random_network(seed: int, dtype: torch.dtype = torch.float64) -> tuple[nn.Sequential, Tensor, float]:
    """App. D's random network ``1 -> 10 -> 10 -> 2`` with integer weights/biases in ``[-4, 4]``.

    :return: ``(model, x, eps)``: the input ``x`` (``(1, 1)``, an integer in ``[-4, 4]``) and
        ``eps`` uniform in ``[0.1, 4.1]``, all drawn from ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)

    def integers(*shape: int) -> Tensor:
        return torch.randint(-4, 5, shape, generator=gen).to(dtype)

    model = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2)).to(
        dtype
    )
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.weight.copy_(integers(*module.weight.shape))
                module.bias.copy_(integers(*module.bias.shape))
    x = integers(1, 1)
    eps = 0.1 + 4.0 * float(torch.rand((), generator=gen, dtype=torch.float64))
    return model, x, eps


def default_settings(relaxation: str | Relaxer) -> tuple[float, float, int]:
    """App. D's settings: the discontinuity setup for discontinuous relaxations, else the sensitivity one."""
    resolved = get_relaxation(relaxation)
    return DISCONTINUITY_SETTINGS if not derive(resolved).continuous else SENSITIVITY_SETTINGS


@attrs.frozen(eq=False)
class Trajectory:
    """One gradient-ascent run along the line: ``deltas[t]`` and ``values[t]`` after ``t`` steps."""

    relaxation: str
    deltas: list[float]
    values: list[float]


@attrs.frozen(eq=False)
class GDExperiment:
    """The landscape over ``δ`` of both relaxations and their gradient-ascent trajectories."""

    seed: int
    eps: float
    output: int
    grid: Tensor
    landscapes: dict[str, Tensor]
    trajectories: dict[str, Trajectory]
    settings: tuple[float, float, int]


def _value_and_slope(
    model: nn.Module, name: str, direction: Tensor, delta: float, x: Tensor, fn: ValueFn
) -> tuple[float, float]:
    """Value of ``fn`` at ``θ + δ·d`` and its derivative in ``δ`` (``∇_W value · d``)."""
    clone = copy.deepcopy(model)
    param = dict(clone.named_parameters())[name]
    with torch.no_grad():
        param.add_(delta * direction)
    value = fn(clone, x, None).sum()
    (grad,) = torch.autograd.grad(value, [param])
    return float(value.detach()), float((grad * direction).sum())


def run_gd(
    model: nn.Module,
    x: Tensor,
    eps: float,
    relaxation: str | Relaxer,
    *,
    output: int = 0,
    direction: dict[str, Tensor] | None = None,
    lr: float,
    decay: float,
    epochs: int,
    domain: tuple[float, float] | None = None,
) -> Trajectory:
    """Gradient ascent on ``δ``: ``δ ← δ + lr_t · d(bound)/dδ``, ``lr_t = lr · decay^t``."""
    if epochs < 0 or not (math.isfinite(lr) and lr > 0) or not 0 < decay <= 1:  # nan > 0 is false: refused
        raise ValueError(
            f"need a finite lr > 0, 0 < decay <= 1, epochs >= 0; got lr={lr}, decay={decay}, epochs={epochs}"
        )
    resolved = get_relaxation(relaxation)
    fn = bound_value(resolved, eps, output=output, domain=domain)
    name, d = _single(direction if direction is not None else _direction(model, x, fn))
    delta = 0.0
    deltas, values = [], []
    for epoch in range(epochs + 1):
        value, slope = _value_and_slope(model, name, d, delta, x, fn)
        deltas.append(delta)
        values.append(value)
        if epoch < epochs:
            delta += lr * decay**epoch * slope
    return Trajectory(resolved.label, deltas, values)


def _first_weight(model: nn.Module) -> str:
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"{module_name}.weight" if module_name else "weight"
    raise ValueError("the model has no Linear layer")


def _direction(model: nn.Module, x: Tensor, fn: ValueFn) -> dict[str, Tensor]:
    """Unit gradient of ``fn`` with respect to the first layer's weight matrix at ``δ = 0``."""
    name = _first_weight(model)
    param = dict(model.named_parameters())[name]
    value = fn(model, x, None).sum()
    (grad,) = torch.autograd.grad(value, [param])
    norm = float(grad.norm())
    if norm == 0.0:
        raise ValueError(
            "the bound's gradient with respect to the first-layer weights is 0 at δ = 0; pick another seed"
        )
    return {name: grad.detach() / norm}


def _single(direction: dict[str, Tensor]) -> tuple[str, Tensor]:
    if len(direction) != 1:
        raise ValueError("the GD experiment moves exactly one parameter tensor (the first-layer weights)")
    return next(iter(direction.items()))


def gd_experiment(
    relaxation: str | Relaxer,
    *,
    seed: int = 0,
    output: int = 0,
    baseline: str | Relaxer = "IBP",
    settings: tuple[float, float, int] | None = None,
    radius: float | None = None,
    points: int = 400,
    model: nn.Module | None = None,
    x: Tensor | None = None,
    eps: float | None = None,
) -> GDExperiment:
    """App. D: gradient ascent with ``relaxation`` and with ``baseline`` (IBP) on the same line.

    The line is the chosen relaxation's unit gradient direction at ``δ = 0`` (so both runs and
    both landscapes share one ``δ`` axis).

    :param settings: ``(lr, decay, epochs)``; default App. D's for the relaxation's kind.
    :param radius: the landscape is drawn on ``[-radius, radius]`` (default: covers both trajectories).
    :param model, x, eps: a network to use instead of App. D's random one for ``seed``.
    """
    if model is None:
        model, x_default, eps_default = random_network(seed)
        x = x_default if x is None else x
        eps = eps_default if eps is None else eps
    if x is None or eps is None:
        raise ValueError("with your own model, give x and eps too")
    chosen = get_relaxation(relaxation)
    base = get_relaxation(baseline)
    settings = settings or default_settings(chosen)
    lr, decay, epochs = settings
    fn = bound_value(chosen, eps, output=output)
    direction = _direction(model, x, fn)
    trajectories = {
        r.label: run_gd(
            model, x, eps, r, output=output, direction=direction, lr=lr, decay=decay, epochs=epochs
        )
        for r in (chosen, base)
    }
    reach = max(abs(d) for t in trajectories.values() for d in t.deltas)
    radius = radius if radius is not None else max(1.0, 1.25 * reach)
    grid = torch.linspace(-radius, radius, points, dtype=x.dtype)
    batched = {name: d.unsqueeze(0) for name, d in direction.items()}
    landscapes = {
        r.label: along_segments(model, x, batched, grid, bound_value(r, eps, output=output))[0]
        for r in (chosen, base)
    }
    return GDExperiment(seed, float(eps), output, grid, landscapes, trajectories, settings)


def find_illustrative(
    relaxation: str | Relaxer, seeds: Iterable[int], *, output: int = 0
) -> GDExperiment | None:
    """The first seed where GD with ``relaxation`` ends lower than GD with IBP although its landscape
    reaches higher than IBP's (the behaviour Fig. 4 illustrates); ``None`` if no seed shows it."""
    for seed in seeds:
        try:
            result = gd_experiment(relaxation, seed=seed, output=output, points=200)
        except ValueError:
            continue
        chosen, base = list(result.trajectories)
        final_chosen, final_base = (
            result.trajectories[chosen].values[-1],
            result.trajectories[base].values[-1],
        )
        if final_chosen < final_base - 1e-6 and float(result.landscapes[chosen].max()) > float(
            result.landscapes[base].max()
        ):
            return result
    return None


def plot_gd(result: GDExperiment, path: str | Path) -> Path:
    """Fig. 4: both landscapes over ``δ`` and the gradient-ascent iterates on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    grid = result.grid.cpu().numpy()
    for label, values in result.landscapes.items():
        line = ax.plot(grid, values.cpu().numpy(), lw=1.2, label=f"{label} landscape")[0]
        trajectory = result.trajectories[label]
        ax.plot(
            trajectory.deltas,
            trajectory.values,
            "o-",
            ms=3,
            lw=0.6,
            color=line.get_color(),
            alpha=0.8,
            label=f"{label} GD ({len(trajectory.deltas) - 1} steps)",
        )
        ax.plot(trajectory.deltas[-1:], trajectory.values[-1:], "*", ms=12, color=line.get_color())
    lr, decay, epochs = result.settings
    ax.set_xlabel("δ (first-layer weights along the unit gradient direction)")
    ax.set_ylabel(f"lower bound of output {result.output}")
    ax.set_title(f"App. D network, seed {result.seed}, ε = {result.eps:.3g}; lr {lr}, decay {decay}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "DISCONTINUITY_SETTINGS",
    "GDExperiment",
    "SENSITIVITY_SETTINGS",
    "Trajectory",
    "default_settings",
    "find_illustrative",
    "gd_experiment",
    "plot_gd",
    "random_network",
    "run_gd",
]
