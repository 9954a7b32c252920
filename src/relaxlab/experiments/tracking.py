"""Continuity and sensitivity during certified training (Fig. 6 of *On the Paradox of Certified Training*).

:func:`tracking_callback` returns a trainer callback (see
:func:`relaxlab.training.trainer.train`) that every ``every`` optimisation steps measures, on
the first ``samples`` examples of the current batch and at the current ``eps``:

- ``discontinuity_share``: App. E.2's share of examples whose certified loss jumps along
  ``θ ± α∇θL`` (:func:`relaxlab.properties.continuity.discontinuity_share`);
- ``log_sensitivity``: App. E.2's log-sensitivity averaged over the examples
  (:func:`relaxlab.properties.sensitivity.measured_log_sensitivity`);
- ``unstable_layers``: the mean number of ReLU layers holding an unstable neuron (``B' + 1``),

and logs them to the results store under the training run, with the optimisation step as
``step``. :func:`tracked_curves` reads them back and :func:`plot_tracking` draws Fig. 6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from relaxlab.api import get_relaxation
from relaxlab.core.relaxer import Relaxer
from relaxlab.properties.continuity import ALPHA, C_RATIO, D_FLOOR, POINTS, discontinuity_share
from relaxlab.properties.sensitivity import PAPER_M, measured_log_sensitivity

if TYPE_CHECKING:
    from torch import Tensor, nn

    from relaxlab.store import Store

#: Metric names written to the store.
METRICS = ("discontinuity_share", "log_sensitivity", "unstable_layers")


def measure(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    relaxation: str | Relaxer,
    *,
    points: int = POINTS,
    alpha: float = ALPHA,
    width: int | None = PAPER_M,
    domain: tuple[float, float] | None = (0.0, 1.0),
) -> dict[str, float]:
    """The three tracked quantities on one batch (model left in the mode it was in)."""
    resolved = get_relaxation(relaxation)
    was_training = model.training
    model.eval()
    try:
        result = discontinuity_share(
            model,
            x,
            y,
            eps,
            resolved,
            alpha=alpha,
            points=points,
            ratio=C_RATIO,
            floor=D_FLOOR,
            domain=domain,
        )
        values, counts = measured_log_sensitivity(model, x, eps, resolved, width=width, domain=domain)
    finally:
        model.train(was_training)
    finite = [v for v in values if math.isfinite(v)]
    return {
        "discontinuity_share": result.share,
        "log_sensitivity": sum(finite) / len(finite) if len(finite) == len(values) and values else math.inf,
        "unstable_layers": sum(counts) / max(len(counts), 1),
    }


def tracking_callback(
    every: int,
    *,
    samples: int = 5,
    points: int = POINTS,
    alpha: float = ALPHA,
    width: int | None = PAPER_M,
    relaxation: str | Relaxer | None = None,
    domain: tuple[float, float] | None = (0.0, 1.0),
    sink: Callable[[int, dict[str, float]], None] | None = None,
) -> Callable[..., None]:
    """A trainer callback recording continuity and sensitivity every ``every`` steps.

    Called by the trainer as ``callback(step=, model=, batch=(x, y), eps=, relaxation=, store=, run_id=)``.

    :param every: measure at steps ``0, every, 2·every, ...`` (``>= 1``).
    :param samples: examples of the batch measured (the paper: 100; the default 5 keeps CPU runs short).
    :param points: points per segment (App. E.2: 500).
    :param width: ``M`` of the log-sensitivity (App. E.2: 400; ``None``: the widest ReLU layer).
    :param relaxation: measure with this relaxation instead of the one being trained (needed for
        natural training, where the trainer passes ``None``).
    :param sink: also called with ``(step, metrics)`` (e.g. to collect them without a store).
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"track every k steps needs an integer k >= 1, got {every!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")

    def callback(
        *,
        step: int,
        model: nn.Module,
        batch: tuple[Tensor, Tensor],
        eps: float,
        relaxation: str | Relaxer | None = None,
        store: Store | None = None,
        run_id: int | None = None,
        **_: Any,
    ) -> None:
        if step % every:
            return
        chosen = override if override is not None else relaxation
        if chosen is None:
            return  # natural training and nothing to measure with
        x, y = batch
        with torch.enable_grad():
            metrics = measure(
                model,
                x[:samples].detach(),
                y[:samples],
                float(eps),
                chosen,
                points=points,
                alpha=alpha,
                width=width,
                domain=domain,
            )
        if store is not None and run_id is not None:
            store.log_metrics(run_id, step, metrics)
        if sink is not None:
            sink(step, metrics)

    override = relaxation
    return callback


def tracked_curves(store: Store, run_ids: Sequence[int]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{run label: {metric: [(step, value)]}}`` for the tracked metrics of some runs.

    The label is the run's relaxation (from its config) and, when two runs share it, its name.
    """
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_id in run_ids:
        run = store.run(run_id)
        label = (
            str(run.config.get("relaxation", run.name)) if run.config.get("method") != "natural" else run.name
        )
        if label in out:
            label = f"{label} ({run.name})"
        metrics = store.metrics(run_id)
        assert isinstance(metrics, dict)
        out[label] = {name: metrics.get(name, []) for name in METRICS}
    return out


def plot_tracking(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Fig. 6: discontinuity share (left) and log-sensitivity (right) over training, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, metrics in curves.items():
        for ax, name in zip(axes, ("discontinuity_share", "log_sensitivity"), strict=True):
            rows = [(s, v) for s, v in metrics.get(name, []) if math.isfinite(v)]
            if rows:
                steps, values = zip(*rows, strict=True)
                ax.plot(steps, values, marker=".", ms=3, lw=1.2, label=label)
    axes[0].set_ylabel("share of inputs with a discontinuity")
    axes[1].set_ylabel("log-sensitivity (App. E.2)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    fig.suptitle(title or "Continuity and sensitivity during training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["METRICS", "measure", "plot_tracking", "tracked_curves", "tracking_callback"]
