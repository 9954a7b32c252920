"""Certification with any relaxation: standard accuracy, PGD accuracy and certified robustness (CR).

A sample is *certified* at radius eps when it is classified correctly and
:func:`relaxlab.engine.spec.is_certified` accepts the relaxation's lower bounds on its margins
over the eps-box clipped to [0, 1] (they exceed a tolerance). Bounds are computed in float64 by
default, so the tolerance covers floating-point error with a wide margin and certification never
claims a margin that is within rounding error of zero.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from relaxlab.engine.box import check_eps
from relaxlab.engine.optimise import Optimised
from relaxlab.engine.spec import is_certified, margin_bounds
from relaxlab.evaluation.pgd import pgd_robust

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation
    from relaxlab.store import Store


@attrs.frozen(kw_only=True)
class CertifyResult:
    """Fractions over ``n`` test samples.

    :param accuracy: clean accuracy.
    :param pgd: PGD accuracy (``None`` when not computed).
    :param certified: certified robustness CR.
    :param n: number of samples.
    :param eps: radius.
    :param relaxation: name of the certifying relaxation.
    """

    accuracy: float
    pgd: float | None
    certified: float
    n: int
    eps: float
    relaxation: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return attrs.asdict(self)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def certified_mask(
    net: nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    relaxation: ReluRelaxation | Optimised,
    *,
    num_classes: int = 10,
    logits: Tensor | None = None,
) -> Tensor:
    """``(B,)`` which samples are certified: classified correctly and every margin's lower bound over
    the eps-box (clipped to [0, 1]) accepted by :func:`~relaxlab.engine.spec.is_certified`. The bounds
    are rigorous (``rigorous=True``: the box rounded outward, every bound widened by a bound on its
    rounding error), so a certificate holds in the floating-point arithmetic used. An
    :class:`~relaxlab.engine.optimise.Optimised` relaxation (``opt:NAME``) has its parameters optimised
    per neuron for each batch (sound for every value the search takes: its ranges are proved).

    :param net: the network, in the dtype of ``x`` (float64 for the tolerance to be wide).
    :param x: ``(B, C, H, W)`` in [0, 1]; ``labels`` ``(B,)``.
    :param logits: ``net(x)`` when already computed.
    """
    with torch.no_grad():
        if logits is None:
            logits = net(x)
        right = logits.argmax(1) == labels
        if isinstance(relaxation, Optimised):
            lb, _ = margin_bounds(
                net,
                x,
                labels,
                eps,
                relaxation.relaxation,
                num_classes=num_classes,
                rigorous=True,
                optimise=relaxation.optimise,
            )
        else:
            lb, _ = margin_bounds(net, x, labels, eps, relaxation, num_classes=num_classes, rigorous=True)
        return right & is_certified(lb, logits)


def certify(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float,
    relaxations: Sequence[ReluRelaxation | Optimised],
    *,
    num_classes: int = 10,
    pgd: bool = True,
    batch_size: int = 200,
    dtype: torch.dtype = torch.float64,
    progress: Callable[[int], None] | None = None,
) -> list[CertifyResult]:
    """Accuracy, PGD accuracy and CR of ``model`` for each relaxation.

    :param model: the network (left unchanged; a float64 copy is used when ``dtype`` is float64).
    :param images: ``(N, C, H, W)`` in [0, 1].
    :param labels: ``(N,)``.
    :param eps: radius in [0, 1].
    :param relaxations: relaxations to certify with.
    :param num_classes: class count.
    :param pgd: also run PGD (100 steps, step size 0.01).
    :param batch_size: evaluation batch size.
    :param dtype: dtype of the bound computation.
    :param progress: called with the number of samples done after each batch.
    :return: one result per relaxation, in order.
    """
    eps = check_eps(eps, maximum=1.0)

    net = copy.deepcopy(model).to(dtype=dtype).eval()
    correct = 0
    robust = 0
    certified = [0] * len(relaxations)
    n = int(labels.shape[0])
    for part in _batches(n, batch_size):
        x, y = images[part].to(dtype=dtype), labels[part]
        with torch.no_grad():
            logits = net(x)
            right = logits.argmax(1) == y
            correct += int(right.sum())
            for i, relaxation in enumerate(relaxations):
                mask = certified_mask(net, x, y, eps, relaxation, num_classes=num_classes, logits=logits)
                certified[i] += int(mask.sum())
        if pgd:
            robust += int(pgd_robust(net, x, y, eps).sum())
        if progress is not None:
            progress(part.stop - part.start)
    denominator = max(n, 1)
    return [
        CertifyResult(
            accuracy=correct / denominator,
            pgd=robust / denominator if pgd else None,
            certified=count / denominator,
            n=n,
            eps=eps,
            relaxation=relaxation.name,
        )
        for relaxation, count in zip(relaxations, certified, strict=True)
    ]


def record_results(
    store: Store,
    results: Sequence[CertifyResult],
    *,
    checkpoint: Path,
    trained: Mapping[str, object],
    name: str,
) -> list[int]:
    """Write one finished ``certify`` run per result into ``store``; their run ids.

    :param checkpoint: the certified network's checkpoint.
    :param trained: what the network is (``dataset``, ``architecture``, ``method_label``): the
        report groups by these.
    :param name: run name prefix (the relaxation's name is appended).
    """
    ids = []
    for result in results:
        config = {
            "checkpoint": str(checkpoint),
            "certifier": result.relaxation,
            "eps": result.eps,
            **trained,
            "n": result.n,
        }
        run_id = store.create_run("certify", config, name=f"{name}-{result.relaxation}")
        metrics = {"accuracy": result.accuracy, "certified": result.certified}
        if result.pgd is not None:
            metrics["pgd"] = result.pgd
        store.log_metrics(run_id, 0, metrics)
        store.finish_run(run_id)
        ids.append(run_id)
    return ids
