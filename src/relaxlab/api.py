"""The public entry point for bounds: :func:`compute_bounds`.

This module is *the edge*: it may resolve a relaxation name through the registry;
the engine itself (:mod:`relaxlab.engine`) only ever receives relaxation objects.
All input checks happen here, before any bound is computed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from relaxlab.engine.backsub import Mode, RelaxationLike
from relaxlab.engine.graph import GraphNetwork, bound_model, parse_model
from relaxlab.engine.network import Network, UnsupportedNetworkError

if TYPE_CHECKING:
    from relaxlab.core.relaxation import ReluRelaxation

__all__ = ["compute_bounds", "input_box", "resolve_relaxation"]


def resolve_relaxation(relaxation: str | ReluRelaxation | RelaxationLike) -> RelaxationLike:
    """A relaxation object for a name (via :func:`relaxlab.get_relaxation`) or the object itself.

    Any object with the engine's contract (``name``, ``intermediate``, ``is_interval``,
    ``transform_bounds``, ``coefficients``) is accepted as is.
    """
    if isinstance(relaxation, str):
        from relaxlab.registry import get_relaxation

        return get_relaxation(relaxation)
    missing = [
        attribute
        for attribute in ("name", "intermediate", "is_interval", "transform_bounds", "coefficients")
        if not hasattr(relaxation, attribute)
    ]
    if missing:
        raise TypeError(
            f"relaxation must be a name or a relaxation object; {type(relaxation).__name__} lacks {missing}"
        )
    return relaxation


def _all_finite(tensor: Tensor) -> bool:
    """Whether every value is finite; one cheap reduction unless the sum overflows."""
    values = tensor.detach()
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())


def _as_eps(eps: Any, x: Tensor) -> float | Tensor:
    """``eps`` as a float or a tensor broadcastable to ``x``: a number, ``(B,)`` per example, or ``x``'s shape."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, Tensor)):
        raise TypeError(f"eps must be a number or a tensor, got {type(eps).__name__}")
    if not isinstance(eps, Tensor):
        value = float(eps)
        if math.isnan(value):
            raise ValueError("eps is NaN; give a radius >= 0")
        if value < 0:
            raise ValueError(f"eps must be >= 0, got {value}")
        if not math.isfinite(value):
            raise ValueError("eps must be finite: an infinite box has no finite bounds")
        return value
    if eps.is_complex() or eps.dtype == torch.bool:
        raise TypeError(f"eps must be a real tensor, got dtype {eps.dtype}")
    value_t = eps.detach()
    if eps.dim() == 1 and eps.shape[0] == x.shape[0]:
        eps = eps.reshape(-1, *([1] * (x.dim() - 1)))
    elif eps.dim() != 0 and tuple(eps.shape) != tuple(x.shape):
        raise ValueError(
            f"eps must be a number, a scalar tensor, a per-example tensor of shape ({x.shape[0]},) "
            f"or a tensor of x's shape {tuple(x.shape)}; got shape {tuple(eps.shape)}"
        )
    if bool(torch.isnan(value_t).any()):
        raise ValueError("eps is NaN; give a radius >= 0")
    if bool((value_t < 0).any()):
        raise ValueError(f"eps must be >= 0, got a minimum of {float(value_t.min())}")
    if not bool(torch.isfinite(value_t).all()):
        raise ValueError("eps must be finite: an infinite box has no finite bounds")
    return eps.to(dtype=x.dtype, device=x.device)


def _domain_end(value: float | Tensor, x: Tensor) -> float | Tensor:
    if isinstance(value, Tensor):
        return value.to(dtype=x.dtype, device=x.device)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"domain ends must be numbers or tensors, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError("domain ends must not be NaN; give (lo, hi) such as (0.0, 1.0)")
    return float(value)


def input_box(
    x: Tensor,
    eps: float | Tensor,
    domain: tuple[float | Tensor, float | Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The l_inf box ``[x - eps, x + eps]``, clipped to ``domain = (lo, hi)`` when given.

    :raises ValueError: for a NaN/negative/infinite ``eps``, a non-finite ``x``, a domain with
        ``lo > hi`` or an ``x`` outside the domain.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension: shape (batch, ...), got {tuple(x.shape)}")
    if not _all_finite(x):
        raise ValueError("x contains NaN/inf values")
    eps_v = _as_eps(eps, x)
    lower, upper = x - eps_v, x + eps_v
    if domain is None:
        return lower, upper
    if len(domain) != 2:
        raise ValueError(f"domain must be a pair (lo, hi), got {domain!r}")
    lo, hi = _domain_end(domain[0], x), _domain_end(domain[1], x)
    if bool(torch.as_tensor(lo > hi).any()):
        raise ValueError(f"domain lower end exceeds its upper end: {domain!r}")
    outside = "x lies outside the domain; the clipped box would be empty (scale the input into the domain)"
    if isinstance(lo, float) and isinstance(hi, float):
        smallest, largest = torch.aminmax(x.detach())
        if float(smallest) < lo or float(largest) > hi:
            raise ValueError(outside)
        return lower.clamp(min=lo), upper.clamp(max=hi)
    if bool(((x.detach() < lo) | (x.detach() > hi)).any()):
        raise ValueError(outside)
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    return torch.maximum(lower, lo_t), torch.minimum(upper, hi_t)


def compute_bounds(
    model: nn.Module | Network | GraphNetwork,
    x: Tensor,
    eps: float | Tensor,
    relaxation: str | ReluRelaxation | RelaxationLike,
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

        lb, ub = relaxlab.compute_bounds(model, x, 0.1, "CROWN-IBP (R)",
                                         C=margin_spec(y, 10), domain=(0.0, 1.0))
        certified = (lb > 0).all(dim=1)

    :param model: an ``nn.Sequential`` of ``Linear``, ``Conv2d``, ``Flatten``, ``ReLU`` and
        :class:`relaxlab.nn.Normalize` (the chain engine), any other module that ``torch.fx``
        traces into supported ops (the graph engine, :mod:`relaxlab.engine.graph`; ``BatchNorm``
        in train mode uses the statistics of ``x``), or an already parsed network.
    :param x: ``(B, *input_shape)`` centres; the computation runs in ``x``'s dtype and device.
    :param eps: l_inf radius: a number, a ``(B,)`` tensor (per example) or a tensor of ``x``'s shape.
    :param relaxation: a registered name (``"CROWN-IBP (R)"``, ``"LooseIBP-C(omega=0.5)"``) or a
        relaxation object.
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows over the ``K`` outputs; default identity.
    :param domain: ``(lo, hi)`` the box is clipped to (e.g. ``(0, 1)`` for pixels).
    :param lower_only: compute only the lower bounds (half the final backsubstitution; what
        certified training needs); the upper bound returned is then ``+inf``, trivially sound.
    :param mode: see :func:`relaxlab.engine.bound_network`.
    :param chunk_size: see :func:`relaxlab.engine.bound_network`.
    :param max_elements: see :func:`relaxlab.engine.bound_network`.
    :return: ``(lb, ub)``, each ``(B, S)``.
    :raises ValueError: (before any work) for bad ``eps``, ``x``, ``C``, ``domain``; an
        :class:`~relaxlab.engine.UnsupportedNetworkError` for unsupported layers, shape
        mismatches and NaN/inf weights.
    """
    resolved = resolve_relaxation(relaxation)
    lower, upper = input_box(x, eps, domain)
    if isinstance(model, (Network, GraphNetwork)):
        network = model
        if tuple(x.shape[1:]) != network.input_shape:
            raise UnsupportedNetworkError(
                f"x has shape {tuple(x.shape)} but the network takes (batch, {network.input_shape})"
            )
    elif isinstance(model, nn.Module):
        network = parse_model(model, tuple(x.shape[1:]), dtype=x.dtype, device=x.device, clean=x)
    else:
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if C is not None:
        if not isinstance(C, Tensor):
            raise TypeError(f"C must be a tensor, got {type(C).__name__}")
        outputs = network.output_dim
        if C.dim() not in (2, 3) or C.shape[-1] != outputs or (C.dim() == 3 and C.shape[0] != x.shape[0]):
            raise ValueError(
                f"C must have shape (batch={x.shape[0]}, specs, outputs={outputs}) or (specs, {outputs}); "
                f"got {tuple(C.shape)} — the model has {outputs} outputs"
            )
        if not _all_finite(C):
            raise ValueError("C contains NaN/inf values")
        C = C.to(dtype=x.dtype, device=x.device)
    if network.output_dim == 0 or math.prod(network.input_shape) == 0:
        raise ValueError("the network has an empty input or output")
    return bound_model(
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
