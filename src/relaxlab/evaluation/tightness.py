"""Empirical tightness (Sec. 3 and App. B.1 of the paper): CR curves and CR-AUC.

For a fixed (typically naturally trained) network, each relaxation certifies the test examples at
every radius of an eps grid; the certified-robustness curve (CR in percent over eps) is
integrated with the trapezoidal rule. The paper samples 100 radii in [0, 0.07] for a naturally
trained MNIST network (Table 6, experiment A: IBP 0.73, hBox 1.76, CROWN 3.36, DeepZ 3.00,
CROWN-IBP (R) 2.15); CR-AUC here uses the same units (CR in % times eps).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor, nn

from relaxlab.evaluation.certify import certified_mask, check_eps

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation


@attrs.frozen(kw_only=True)
class TightnessResult:
    """CR curves of several relaxations on one network.

    :param eps: the grid, increasing.
    :param curves: relaxation name -> CR in percent at each grid point.
    :param n: number of test samples.
    :param accuracy: clean accuracy in percent.
    """

    eps: tuple[float, ...]
    curves: dict[str, tuple[float, ...]]
    n: int
    accuracy: float

    def auc(self) -> dict[str, float]:
        """CR-AUC of every curve (trapezoidal rule; CR in %, eps in pixel units)."""
        return {name: cr_auc(self.eps, curve) for name, curve in self.curves.items()}

    def table(self, fmt: str = "markdown") -> str:
        """CR-AUC per relaxation as a Markdown or CSV table (Table 6 layout)."""
        aucs = self.auc()
        if fmt == "csv":
            return "relaxation,cr_auc\n" + "".join(f"{name},{value:.4f}\n" for name, value in aucs.items())
        lines = ["| Relaxation | CR-AUC |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in aucs.items()]
        return "\n".join(lines) + "\n"


def cr_auc(eps: Sequence[float], curve: Sequence[float]) -> float:
    """Area under a CR curve by the trapezoidal rule.

    :param eps: increasing radii.
    :param curve: CR (in %) at each radius.
    :return: the area.
    """
    if len(eps) != len(curve):
        raise ValueError(f"eps grid has {len(eps)} points but the curve {len(curve)}")
    return float(
        sum(
            (e1 - e0) * (c0 + c1) / 2.0
            for e0, e1, c0, c1 in zip(eps, eps[1:], curve, curve[1:], strict=False)
        )
    )


def eps_grid(eps_max: float, points: int) -> tuple[float, ...]:
    """``points`` evenly spaced radii from 0 to ``eps_max`` inclusive."""
    check_eps(eps_max)
    if points < 2:
        raise ValueError(f"an eps grid needs at least 2 points, got {points}")
    return tuple(float(v) for v in torch.linspace(0.0, eps_max, points, dtype=torch.float64))


def cr_curves(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    grid: Sequence[float],
    relaxations: Sequence[ReluRelaxation],
    *,
    num_classes: int = 10,
    batch_size: int = 200,
    dtype: torch.dtype = torch.float64,
    progress: Callable[[], None] | None = None,
) -> TightnessResult:
    """CR curves of ``relaxations`` on ``model`` over ``grid``.

    Only correctly classified samples are bounded (the others are never certified).

    :param progress: called after each (relaxation, radius) pair.
    """
    for value in grid:
        check_eps(value)
    if list(grid) != sorted(grid):
        raise ValueError("the eps grid must be increasing")
    net = copy.deepcopy(model).to(dtype=dtype).eval()
    images = images.to(dtype=dtype)
    with torch.no_grad():
        correct = torch.cat(
            [
                net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]
                for i in range(0, len(labels), batch_size)
            ]
        )
    x, y = images[correct], labels[correct]
    n = int(labels.shape[0])
    curves: dict[str, tuple[float, ...]] = {}
    for relaxation in relaxations:
        values = []
        for eps in grid:
            count = 0
            for i in range(0, int(y.shape[0]), batch_size):
                count += int(
                    certified_mask(
                        net, x[i : i + batch_size], y[i : i + batch_size], eps, relaxation, num_classes
                    )[1].sum()
                )
            values.append(100.0 * count / max(n, 1))
            if progress is not None:
                progress()
        curves[relaxation.name] = tuple(values)
    return TightnessResult(
        eps=tuple(grid), curves=curves, n=n, accuracy=100.0 * int(correct.sum()) / max(n, 1)
    )


def plot_curves(result: TightnessResult, path: str | Path, title: str = "") -> Path:
    """Write the CR curves (Fig. 2 of the paper) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    aucs = result.auc()
    for name, curve in result.curves.items():
        ax.plot(result.eps, curve, label=f"{name} (AUC {aucs[name]:.2f})", linewidth=1.8)
    ax.set_xlabel("ε")
    ax.set_ylabel("certified robustness [%]")
    ax.set_xlim(result.eps[0], result.eps[-1])
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"CR curves (n={result.n}, accuracy {result.accuracy:.1f}%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
