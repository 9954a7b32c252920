"""The input box: ``[x - eps, x + eps]`` clipped to a domain, with every check on the way in.

One home for what a valid radius is: :func:`check_eps` (a number) and :func:`input_box`
(numbers or tensors) are what every entry point (the engine, training, certification, the
CLI) uses, so a radius is refused the same way everywhere, before any work.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

#: Pixels live in [0, 1]: the domain certification and training clip the box to.
PIXEL_DOMAIN = (0.0, 1.0)
#: The dtypes bounds are computed in (float16/bfloat16 are refused: see :func:`input_box`).
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_eps(eps: Any, *, maximum: float | None = None, name: str = "eps") -> float:
    """``eps`` as a float, refused unless it is a finite number ``>= 0`` (and ``<= maximum``).

    :param maximum: the largest admissible radius (``1.0`` for pixels in ``[0, 1]``).
    :param name: how the value is called in the message (``eps_train``, ``--eps``).
    :raises TypeError: not a number; :raises ValueError: NaN, negative, infinite or too large.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(eps).__name__}")
    value = float(eps)
    if math.isnan(value):
        raise ValueError(f"{name} is NaN; give a radius >= 0")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value:g}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite: an infinite box has no finite bounds")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be in [0, {maximum:g}] (inputs are pixels in [0, 1]), got {value:g}")
    return value


def all_finite(tensor: Tensor) -> bool:
    """Whether every value is finite; one cheap reduction unless the sum overflows."""
    values = tensor.detach()
    return math.isfinite(values.sum().item()) or bool(torch.isfinite(values).all())


def _as_eps(eps: Any, x: Tensor) -> float | Tensor:
    """``eps`` as a float or a tensor broadcastable to ``x``: a number, ``(B,)`` per example, or ``x``'s shape."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, Tensor)):
        raise TypeError(f"eps must be a number or a tensor, got {type(eps).__name__}")
    if not isinstance(eps, Tensor):
        return check_eps(eps)
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
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"domain ends must be real tensors, got dtype {value.dtype}")
        if bool(torch.isnan(value.detach()).any()):
            raise ValueError("domain ends must not be NaN; give (lo, hi) such as (0.0, 1.0)")
        try:
            torch.broadcast_shapes(tuple(value.shape), tuple(x.shape))
        except RuntimeError:
            raise ValueError(
                f"a domain end of shape {tuple(value.shape)} does not broadcast to x's shape {tuple(x.shape)}; "
                "give a number, a per-channel tensor that broadcasts, or a tensor of x's shape"
            ) from None
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
    *,
    outward: bool = False,
) -> tuple[Tensor, Tensor]:
    """The l_inf box ``[x - eps, x + eps]``, clipped to ``domain = (lo, hi)`` when given.

    :param outward: move each end one floating-point step outward, so that the box holds the real
        ``[x - eps, x + eps]`` whatever ``x - eps`` rounded to (rigorous bounds).
    :raises ValueError: for a NaN/negative/infinite ``eps``, a non-finite ``x``, a domain with
        ``lo > hi`` or an ``x`` outside the domain.
    """
    lower, upper = _input_box(x, eps, domain)
    if outward:
        lower = torch.nextafter(lower, torch.full_like(lower, -math.inf))
        upper = torch.nextafter(upper, torch.full_like(upper, math.inf))
    return lower, upper


def _input_box(
    x: Tensor,
    eps: float | Tensor,
    domain: tuple[float | Tensor, float | Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"x has dtype {x.dtype}: bounds are computed in float32 or float64 only (half precision rounds "
            "too coarsely for a sound bound); convert the model and x with .float() or .double()"
        )
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension: shape (batch, ...), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch: give at least one example")
    if not all_finite(x):
        raise ValueError("x contains NaN/inf values")
    eps_v = _as_eps(eps, x)
    lower, upper = x - eps_v, x + eps_v
    if not (all_finite(lower) and all_finite(upper)):
        raise ValueError(f"x ± eps overflows {x.dtype}: give a smaller eps (or compute in float64)")
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
