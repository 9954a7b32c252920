"""Pointwise tightness order between relaxations, per stability case.

Relaxation ``A`` is *at least as tight* as ``B`` in a case when, for every
``(l, u)`` of that case and every ``x`` in ``[l, u]``, ``A``'s lower line is
``>=`` ``B``'s and ``A``'s upper line is ``<=`` ``B``'s. Lines are linear in
``x``, so the difference of two lines is linear on ``[l, u]`` and its sign is
decided at the end points: comparing at ``x = l``, ``x = clamp(0, l, u)`` and
``x = u`` is exact for one ``(l, u)`` (0 is redundant for lines; it is kept so
that the same points serve the soundness check, where the ReLU's kink matters).

Over ``(l, u)`` the comparison runs on a deterministic set of pairs: the hard
grid of :func:`~relaxlab.properties.soundness.probe_pairs` (exact zeros, widths
near 1e-7, magnitudes up to 1e4, very uneven straddles) plus log-uniform pairs
inside each case. That is evidence, not proof, for the ``(l, u)`` direction;
coefficients are compared through :meth:`ReluRelaxation.coefficients`, so a
bounds transform, parameters and opaque callables are all honoured, and the
case of a pair is its *raw* stability case.

Per case the verdict is one of :data:`RELATIONS`: ``"tighter"``, ``"looser"``,
``"equal"`` (numerically the same lines, within :data:`TOLERANCE`) or
``"incomparable"``. Non-finite values make a case incomparable.

Measured on networks (empirical tightness):

Empirical tightness (Sec. 3 and App. B.1 of the paper): CR curves and CR-AUC.

For a fixed (typically naturally trained) network, each relaxation certifies the test examples at
every radius of an eps grid; the certified-robustness curve (CR in percent over eps) is
integrated with the trapezoidal rule. The paper samples 100 radii in [0, 0.07] for a naturally
trained MNIST network (Table 6, experiment A: IBP 0.73, hBox 1.76, CROWN 3.36, DeepZ 3.00,
CROWN-IBP (R) 2.15); CR-AUC here uses the same units (CR in % times eps).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from attrs import frozen
from torch import Tensor, nn

from relaxlab.core.relaxation import Line, ReluRelaxation
from relaxlab.core.stability import Stability, stability_masks
from relaxlab.engine.box import check_eps
from relaxlab.engine.spec import is_certified, margin_bounds
from relaxlab.properties.soundness import probe_pairs

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation


#: Relative tolerance for "equal" and "at least as tight": ``TOLERANCE·(1 + |l| + |u| + |value|)``.
TOLERANCE = 1e-9
#: The four verdicts, from the first relaxation's point of view.
RELATIONS = ("tighter", "looser", "equal", "incomparable")
_EXTRA_PAIRS_PER_CASE = 64
#: torch's grain size: elementwise operations on more elements may be split across threads.
_PARALLEL_THRESHOLD = 32_768


@functools.lru_cache(maxsize=1)
def comparison_pairs() -> tuple[Tensor, Tensor]:
    """The ``(l, u)`` pairs (float64) every comparison uses: the probe grid plus pairs inside each case."""
    grid_l, grid_u = probe_pairs()
    gen = torch.Generator().manual_seed(20220101)
    a = torch.exp(torch.empty(_EXTRA_PAIRS_PER_CASE, dtype=torch.float64).uniform_(-7.0, 7.0, generator=gen))
    b = torch.exp(torch.empty(_EXTRA_PAIRS_PER_CASE, dtype=torch.float64).uniform_(-7.0, 7.0, generator=gen))
    lower = torch.cat((grid_l, -(a + b), -a, a))
    upper = torch.cat((grid_u, -b, b, a + b))
    return lower, upper


@functools.lru_cache(maxsize=3)
def case_pairs(stability: Stability) -> tuple[Tensor, Tensor]:
    """The comparison pairs that lie in one stability case."""
    lower, upper = comparison_pairs()
    mask = stability_masks(lower, upper)[stability]
    return lower[mask], upper[mask]


def evaluation_points(lower: Tensor, upper: Tensor) -> Tensor:
    """``(n, 3)`` points ``x = l, clamp(0, l, u), u`` for each pair."""
    return torch.stack((lower, torch.clamp(torch.zeros_like(lower), lower, upper), upper), dim=-1)


def line_values(line: Line, stability: Stability, params: Mapping[str, float] | None = None) -> Tensor:
    """``(n, 3)`` values of ``line`` at :func:`evaluation_points` of the case's comparison pairs."""
    lower, upper = case_pairs(stability)
    env: dict[str, Any] = {"l": lower, "u": upper, **(params or {})}
    slope, offset = line.evaluate(env)
    slope = torch.as_tensor(slope, dtype=torch.float64).expand_as(lower)
    offset = torch.as_tensor(offset, dtype=torch.float64).expand_as(lower)
    return slope[:, None] * evaluation_points(lower, upper) + offset[:, None]


def _tolerance(stability: Stability, a: Tensor, b: Tensor) -> Tensor:
    lower, upper = case_pairs(stability)
    scale = (1.0 + lower.abs() + upper.abs())[:, None]
    return TOLERANCE * (scale + torch.maximum(a.abs(), b.abs()).nan_to_num(posinf=0.0))


def at_least_as_tight(a: Tensor, b: Tensor, side: str, stability: Stability) -> bool:
    """Whether values ``a`` are everywhere at least as tight as ``b`` for a ``"lower"`` or ``"upper"`` line."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return False
    tol = _tolerance(stability, a, b)
    gap = (b - a) if side == "lower" else (a - b)  # a lower line is tighter when it is higher
    return bool((gap <= tol).all())


def values_equal(a: Tensor, b: Tensor, stability: Stability) -> bool:
    """Whether two value arrays are the same line(s), within :data:`TOLERANCE`."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return False
    return bool(((a - b).abs() <= _tolerance(stability, a, b)).all())


def relation(a_as_tight: bool, b_as_tight: bool) -> str:
    """The verdict from the two "at least as tight" tests."""
    if a_as_tight and b_as_tight:
        return "equal"
    if a_as_tight:
        return "tighter"
    if b_as_tight:
        return "looser"
    return "incomparable"


@frozen(eq=False)
class Profile:
    """A relaxation's line values on the comparison points of every case.

    :param values: ``(n, 2, 3)``: for each comparison pair (cases in :class:`Stability` order), the
        lower (``[:, 0]``) and upper (``[:, 1]``) line at :func:`evaluation_points`.
    :param finite: ``(n,)`` whether all six values of a pair are finite.
    """

    name: str
    values: Tensor
    finite: Tensor

    def case(self, stability: Stability) -> Tensor:
        """``(m, 2, 3)`` values of one case."""
        start, stop = _case_slices()[stability]
        return self.values[start:stop]


@functools.lru_cache(maxsize=1)
def _ordered_pairs() -> tuple[Tensor, Tensor, Tensor]:
    lower = torch.cat([case_pairs(s)[0] for s in Stability])
    upper = torch.cat([case_pairs(s)[1] for s in Stability])
    return lower, upper, (1.0 + lower.abs() + upper.abs())[:, None, None]


@functools.lru_cache(maxsize=1)
def _case_slices() -> dict[Stability, tuple[int, int]]:
    slices, start = {}, 0
    for stability in Stability:
        count = int(case_pairs(stability)[0].shape[0])
        slices[stability] = (start, start + count)
        start += count
    return slices


@functools.lru_cache(maxsize=8192)
def profile(relaxation: ReluRelaxation) -> Profile:
    """Line values of ``relaxation`` (through :meth:`~ReluRelaxation.coefficients`) on every case's points."""
    lower, upper, _ = _ordered_pairs()
    with torch.no_grad():
        ls, lo, us, uo = relaxation.coefficients(lower, upper).tensors
    points = evaluation_points(lower, upper)
    values = torch.stack((ls[:, None] * points + lo[:, None], us[:, None] * points + uo[:, None]), dim=1)
    return Profile(relaxation.name, values, torch.isfinite(values).flatten(1).all(dim=-1))


def case_relations(first: Profile, second: Profile) -> tuple[tuple[str, str], ...]:
    """Per case, the verdict for ``first`` relative to ``second``."""
    return case_relations_many(first, [second])[0]


def case_relations_many(first: Profile, others: Sequence[Profile]) -> list[tuple[tuple[str, str], ...]]:
    """:func:`case_relations` of ``first`` relative to each of ``others``, batched.

    Each batch stays below torch's threshold for splitting an elementwise operation across
    threads (32 768 elements): on a shared 2-core machine the threaded version of these small
    operations ran 3-10 times slower than one thread, the batched one-thread version 2.5 times
    faster than one comparison at a time.
    """
    size = max(1, _PARALLEL_THRESHOLD // max(1, first.values.numel()))
    out: list[tuple[tuple[str, str], ...]] = []
    for start in range(0, len(others), size):
        out += _case_relations_batch(first, others[start : start + size])
    return out


def _case_relations_batch(first: Profile, others: Sequence[Profile]) -> list[tuple[tuple[str, str], ...]]:
    _, _, scale = _ordered_pairs()
    a = first.values[None]
    b = torch.stack([o.values for o in others])
    tol = TOLERANCE * (scale[None] + torch.maximum(a.abs(), b.abs()).nan_to_num(posinf=0.0))
    diff = a - b
    finite = first.finite[None] & torch.stack([o.finite for o in others])
    a_ok = (diff[:, :, 0] >= -tol[:, :, 0]).all(dim=-1) & (diff[:, :, 1] <= tol[:, :, 1]).all(dim=-1) & finite
    b_ok = (diff[:, :, 0] <= tol[:, :, 0]).all(dim=-1) & (diff[:, :, 1] >= -tol[:, :, 1]).all(dim=-1) & finite
    per_case = [
        (str(stability), a_ok[:, start:stop].all(dim=-1).tolist(), b_ok[:, start:stop].all(dim=-1).tolist())
        for stability, (start, stop) in _case_slices().items()
    ]
    return [
        tuple((case, relation(a_all[k], b_all[k])) for case, a_all, b_all in per_case)
        for k in range(len(others))
    ]


def combine(relations: list[str] | tuple[str, ...]) -> str:
    """The overall verdict from per-case verdicts (tighter overall: tighter or equal in every case)."""
    if all(r == "equal" for r in relations):
        return "equal"
    if all(r in ("tighter", "equal") for r in relations):
        return "tighter"
    if all(r in ("looser", "equal") for r in relations):
        return "looser"
    return "incomparable"


@frozen
class Tightness:
    """How relaxation ``first`` compares with ``second``, per case and overall (lines only).

    :param cases: ``(case, verdict)`` for negative, unstable, positive.
    :param overall: :func:`combine` of the per-case verdicts.
    :param same_intermediate: whether both obtain intermediate bounds the same way (see
        :func:`effective_intermediate`); the verdicts compare lines only.
    """

    first: str
    second: str
    cases: tuple[tuple[str, str], ...]
    overall: str
    same_intermediate: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "overall": self.overall,
            "cases": dict(self.cases),
            "same_intermediate": self.same_intermediate,
        }


@functools.lru_cache(maxsize=4096)
def effective_intermediate(relaxation: ReluRelaxation) -> str:
    """``"interval"`` when every slope is zero on every probe (backsubstitution then *is* interval
    arithmetic), else the declared mode."""
    if relaxation.intermediate == "interval":
        return "interval"
    lower, upper = comparison_pairs()
    with torch.no_grad():
        ls, _, us, _ = relaxation.coefficients(lower, upper).tensors
    return "interval" if bool((ls == 0).all()) and bool((us == 0).all()) else relaxation.intermediate


def compare(first: ReluRelaxation, second: ReluRelaxation) -> Tightness:
    """Pointwise per-case tightness of ``first`` relative to ``second``."""
    return compare_many(
        profile(first), effective_intermediate(first), [(profile(second), effective_intermediate(second))]
    )[0]


def compare_many(first: Profile, first_mode: str, others: Sequence[tuple[Profile, str]]) -> list[Tightness]:
    """:func:`compare` of a relaxation (its profile and effective intermediate mode) with each of ``others``.

    One batched comparison: for relating many relaxations to the same registered ones.
    """
    if not others:
        return []
    verdicts = case_relations_many(first, [p for p, _ in others])
    return [
        Tightness(first.name, p.name, cases, combine([r for _, r in cases]), first_mode == mode)
        for (p, mode), cases in zip(others, verdicts, strict=True)
    ]


def equivalent(first: ReluRelaxation, second: ReluRelaxation) -> bool:
    """Numerically the same lines in every case and the same (effective) intermediate mode."""
    result = compare(first, second)
    return result.overall == "equal" and result.same_intermediate


@attrs.frozen(kw_only=True)
class TightnessResult:
    """CR curves of several relaxations on one network.

    :param eps: the grid, increasing.
    :param curves: relaxation name -> CR in percent at each grid point.
    :param n: number of test samples.
    :param accuracy: clean accuracy in percent.
    :param dtype: the floating-point type the bounds were computed in (an empirical measure).
    """

    eps: tuple[float, ...]
    curves: dict[str, tuple[float, ...]]
    n: int
    accuracy: float
    dtype: str = "float64"

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
    check_eps(eps_max, maximum=1.0)
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
        check_eps(value, maximum=1.0)
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
    starts = range(0, int(y.shape[0]), batch_size)
    with torch.no_grad():  # the clean logits of each batch (every sample here is classified correctly)
        logits = [net(x[i : i + batch_size]) for i in starts]
    n = int(labels.shape[0])
    curves: dict[str, tuple[float, ...]] = {}
    for relaxation in relaxations:
        values = []
        for eps in grid:
            count = 0
            for i, z in zip(starts, logits, strict=True):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                with torch.no_grad():
                    lb, _ = margin_bounds(net, xb, yb, eps, relaxation, num_classes=num_classes)
                    count += int(is_certified(lb, z).sum())
            values.append(100.0 * count / max(n, 1))
            if progress is not None:
                progress()
        curves[relaxation.name] = tuple(values)
    return TightnessResult(
        eps=tuple(grid),
        curves=curves,
        n=n,
        accuracy=100.0 * int(correct.sum()) / max(n, 1),
        dtype=str(dtype).removeprefix("torch."),
    )


def plot_curves(result: TightnessResult, path: str | Path, title: str = "") -> Path:
    """Write the CR curves (Fig. 2 of the paper) as a PNG.

    The legend sits beside the axes (it hides no curve); the subtitle says what is measured:
    n test images, their accuracy, the radii and the floating-point type of the bounds.

    :param result: the curves.
    :param path: the PNG to write.
    :param title: the first title line (default: "CR curves").
    :return: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    aucs = result.auc()
    for name, curve in result.curves.items():
        ax.plot(result.eps, curve, label=f"{name} (AUC {aucs[name]:.2f})", linewidth=1.8)
    ax.set_xlabel("ε (l∞ radius, pixel scale)")
    ax.set_ylabel("certified robustness [% of n]")
    ax.set_xlim(result.eps[0], result.eps[-1])
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(
        title="relaxation (CR-AUC)",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
        fontsize=8,
        title_fontsize=8,
    )
    ax.set_title(
        f"{title or 'CR curves'}\nempirical, {result.dtype} bounds: n = {result.n} test images "
        f"(accuracy {result.accuracy:.1f}%), {len(result.eps)} radii in [{result.eps[0]:g}, {result.eps[-1]:g}]",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
