"""The engine's checked entry point: bounds of a model's outputs over an input box.

:func:`compute_bounds` checks every input (radius, centres, domain, specification, network)
before any work, parses the model and runs :func:`~relaxlab.engine.backsub.bound_network`.
It takes relaxation *objects*; the facade :func:`relaxlab.compute_bounds` is this function
with registered names resolved first.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from relaxlab.core.relaxer import Relaxer, check_relaxer
from relaxlab.engine.backsub import Mode, bound_network
from relaxlab.engine.box import all_finite, input_box
from relaxlab.engine.network import Network, UnsupportedNetworkError, parse_network

__all__ = ["compute_bounds"]


def compute_bounds(
    model: nn.Module | Network,
    x: Tensor,
    eps: float | Tensor,
    relaxation: Relaxer,
    C: Tensor | None = None,
    domain: tuple[float | Tensor, float | Tensor] | None = None,
    *,
    lower_only: bool = False,
    mode: Mode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Sound bounds of ``C·model(x')`` for every ``x'`` with ``|x' - x|_inf <= eps`` (in ``domain``).

    Example::

        lb, _ = relaxlab.compute_bounds(model, x, 0.1, "CROWN-IBP (R)",
                                        C=margin_spec(y, 10), domain=(0.0, 1.0))
        certified = is_certified(lb, model(x))  # relaxlab.engine.spec: with the tolerance

    :param model: an ``nn.Sequential`` of ``Linear``, ``Conv2d``, ``Flatten``, ``ReLU`` and
        :class:`relaxlab.nn.Normalize` (or an already parsed :class:`~relaxlab.engine.Network`).
    :param x: ``(B, *input_shape)`` centres; the computation runs in ``x``'s dtype and device.
    :param eps: l_inf radius: a number, a ``(B,)`` tensor (per example) or a tensor of ``x``'s shape.
    :param relaxation: a relaxation object (:class:`~relaxlab.core.relaxer.Relaxer`);
        :func:`relaxlab.compute_bounds` also takes registered names.
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows over the ``K`` outputs; default identity.
    :param domain: ``(lo, hi)`` the box is clipped to (e.g. ``(0, 1)`` for pixels).
    :param lower_only: compute only the lower bounds (half the final backsubstitution; what
        certified training needs); the upper bound returned is then ``+inf``, trivially sound.
    :param mode: see :func:`~relaxlab.engine.backsub.bound_network`.
    :param chunk_size: see :func:`relaxlab.engine.bound_network`.
    :param max_elements: see :func:`relaxlab.engine.bound_network`.
    :return: ``(lb, ub)``, each ``(B, S)``.
    :raises ValueError: (before any work) for bad ``eps``, ``x``, ``C``, ``domain``; an
        :class:`~relaxlab.engine.UnsupportedNetworkError` for unsupported layers, shape
        mismatches and NaN/inf weights.
    """
    resolved = check_relaxer(relaxation)
    lower, upper = input_box(x, eps, domain)
    if isinstance(model, Network):
        network = model
        if tuple(x.shape[1:]) != network.input_shape:
            raise UnsupportedNetworkError(
                f"x has shape {tuple(x.shape)} but the network takes (batch, {network.input_shape})"
            )
    elif isinstance(model, nn.Module):
        network = parse_network(model, tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    else:
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    if C is not None:
        if not isinstance(C, Tensor):
            raise TypeError(f"C must be a tensor, got {type(C).__name__}")
        outputs = network.output_dim
        if C.dim() not in (2, 3) or C.shape[-1] != outputs or (C.dim() == 3 and C.shape[0] != x.shape[0]):
            raise ValueError(
                f"C must have shape (batch={x.shape[0]}, specs, outputs={outputs}) or (specs, {outputs}); "
                f"got {tuple(C.shape)} — the model has {outputs} outputs"
            )
        if not all_finite(C):
            raise ValueError("C contains NaN/inf values")
        C = C.to(dtype=x.dtype, device=x.device)
    if network.output_dim == 0 or math.prod(network.input_shape) == 0:
        raise ValueError("the network has an empty input or output")
    return bound_network(
        network,
        lower,
        upper,
        resolved,
        C,
        mode=mode,
        chunk_size=chunk_size,
        max_elements=max_elements,
        lower_only=lower_only,
    )
