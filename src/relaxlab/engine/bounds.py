"""The engine's checked entry point: bounds of a model's outputs over an input box.

:func:`compute_bounds` checks every input (radius, centres, domain, specification, network)
before any work, parses the model once and runs the engine (:mod:`relaxlab.engine.bounder`).
It takes relaxation *objects*; the facade :func:`relaxlab.compute_bounds` is this function
with registered names resolved first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from relaxlab.core.relaxer import Relaxer, check_relaxer
from relaxlab.engine.bounder import Bounder, Mode, ParameterSource, bounder, spec_matrix
from relaxlab.engine.box import all_finite, input_box
from relaxlab.engine.network import Network
from relaxlab.engine.ops import UnsupportedNetworkError
from relaxlab.engine.optimise import Optimise, optimised_bounds
from relaxlab.engine.parse import parse_model

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
    check_centre: bool = True,
    rigorous: bool = False,
    optimise: Optimise | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sound bounds of ``C·model(x')`` for every ``x'`` with ``|x' - x|_inf <= eps`` (in ``domain``).

    Example::

        lb, _ = relaxlab.compute_bounds(model, x, 0.1, "CROWN-IBP (R)",
                                        C=margin_spec(y, 10), domain=(0.0, 1.0))
        certified = is_certified(lb, model(x))  # relaxlab.engine.spec: with the tolerance

    :param model: any module the op table covers (:mod:`relaxlab.engine.optable`: an
        ``nn.Sequential`` is read module by module, other modules are traced with ``torch.fx``;
        ``BatchNorm`` in train mode uses the statistics of ``x``), or an already parsed
        :class:`~relaxlab.engine.network.Network`.
    :param x: ``(B, *input_shape)`` centres; the computation runs in ``x``'s dtype and device.
    :param eps: l_inf radius: a number, a ``(B,)`` tensor (per example) or a tensor of ``x``'s shape.
    :param relaxation: a relaxation object (:class:`~relaxlab.core.relaxer.Relaxer`);
        :func:`relaxlab.compute_bounds` also takes registered names.
    :param C: ``(B, S, K)`` or ``(S, K)`` specification rows over the ``K`` outputs; default identity.
    :param domain: ``(lo, hi)`` the box is clipped to (e.g. ``(0, 1)`` for pixels).
    :param lower_only: compute only the lower bounds (half the final backsubstitution; what
        certified training needs); the upper bound returned is then ``+inf``, trivially sound.
    :param mode: see :func:`~relaxlab.engine.bounder.bound_network`.
    :param chunk_size: see :func:`relaxlab.engine.bound_network`.
    :param max_elements: see :func:`relaxlab.engine.bound_network`.
    :param check_centre: check that the engine bounds the function the model computes (an error
        if not): in every dtype, the parsed network and the model replayed in float64 must agree
        at ``x`` (:func:`check_replay`, two forward passes); in float64 also ``C·model(x)`` must
        lie inside the bounds. Skipped for a model in training mode (its forward may be stochastic
        or update batch statistics) and for a parsed network.
    :param rigorous: bounds that hold in the floating-point arithmetic used, not only in the reals:
        the box is rounded outward and every bound widened by a bound on its rounding error
        (:meth:`~relaxlab.engine.bounder.Bounder.rounding_margin`). What certification and
        verification use; training does not need it.
    :param optimise: optimise the relaxation's parameters per neuron (:mod:`relaxlab.engine.optimise`;
        built by :func:`relaxlab.api.optimisation`, which proves the ranges sound first).
    :param stop: with ``optimise``, checked before each step: true ends the search with the best bounds so far.
    :return: ``(lb, ub)``, each ``(B, S)``.
    :raises OverflowError: non-finite bounds from finite inputs (never NaN in the output).
    :raises ValueError: (before any work) for bad ``eps``, ``x``, ``C``, ``domain``; an
        :class:`~relaxlab.engine.UnsupportedNetworkError` for unsupported layers, shape
        mismatches and NaN/inf weights.
    """
    resolved = check_relaxer(relaxation)
    lower, upper = input_box(x, eps, domain, outward=rigorous)
    if isinstance(model, Network):
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
        if not all_finite(C):
            raise ValueError("C contains NaN/inf values")
        if C.shape[-2] == 0:
            raise ValueError("C has no rows: give at least one specification row")
        C = C.to(dtype=x.dtype, device=x.device)
    if network.output_dim == 0 or math.prod(network.input_shape) == 0:
        raise ValueError("the network has an empty input or output")

    def make(parameters: ParameterSource | None = None) -> Bounder:
        return bounder(
            network,
            lower,
            upper,
            resolved,
            mode=mode,
            chunk_size=chunk_size,
            max_elements=max_elements,
            rigorous=rigorous,
            parameters=parameters,
        )

    spec = spec_matrix(C, x.shape[0], network.output_dim, lower)
    run = None
    if optimise is None:
        run = make()
        lb, ub = run.bound(spec, lower_only, max_elements)
    else:
        lb, ub = optimised_bounds(
            make, spec, optimise, lower_only=lower_only, max_elements=max_elements, expired=stop
        )
    if not (all_finite(lb) and (lower_only or all_finite(ub))):
        raise OverflowError(
            f"the bounds of {resolved.name} overflow {x.dtype} although the inputs are finite, "
            f"{_first_overflow(run or make())}: the weights or eps are too large for "
            f"{x.dtype}; {'compute in float64 or ' if x.dtype != torch.float64 else ''}rescale the network"
        )
    if check_centre and isinstance(model, nn.Module) and not model.training:
        check_replay(model, network, x)
        if x.dtype == torch.float64:
            _check_centre(model, x, C, lb, ub)
    return lb, ub


def _first_overflow(run: Bounder) -> str:
    """Where bounds first stop being finite (only computed to word an error)."""
    for index in run.net.relus:
        lb, ub = run.pre[index]
        if not (all_finite(lb) and all_finite(ub)):
            source = run.net.nodes[index].inputs[0]
            return f"first at the input of {run.net.describe(index)} ({run.net.describe(source)} before it)"
    return "in the last affine layer"


def check_replay(model: nn.Module, network: Network, x: Tensor) -> None:
    """The parsed network must compute what the model computes at ``x``, replayed in float64.

    Both run in float64 whatever the dtype of the bounds (the model through
    ``torch.func.functional_call`` with float64 copies of its parameters and buffers, so the model
    itself is left as it is; a network read in another dtype is read again in float64, since its
    folded constants are rounded in its dtype): a difference beyond the rounding of two orders of the same operations
    means the network is not the model's function (a forward changed on an instance, a crafted
    buffer, a hook installed behind the parser's back), and nothing is certified with it.
    """
    x64 = x.detach().to(torch.float64)
    state = {
        name: t.detach().to(torch.float64) if t.is_floating_point() else t
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    with torch.no_grad():
        try:
            want = torch.func.functional_call(model, state, (x64,)).reshape(x.shape[0], -1)
        except RuntimeError as error:  # a model that cannot run in float64 (a float32 constant inside)
            raise UnsupportedNetworkError(
                f"the model cannot be replayed in float64 to check the parsed network ({error}); "
                "bound it with check_centre=False only if you trust the parse"
            ) from None
        # A network read in another dtype holds constants rounded there (a BatchNorm folded in
        # float32): the replay compares the model with its reading in float64 instead.
        exact = all(t.dtype == torch.float64 for t in network.tensors() if t.is_floating_point())
        reading = (
            network
            if exact
            else parse_model(model, network.input_shape, dtype=torch.float64, device=x.device)
        )
        got = reading.cast(torch.float64).forward(x64).reshape(x.shape[0], -1)
    tolerance = 1e-9 * (1.0 + want.abs().amax(dim=1, keepdim=True))
    if bool(((got - want).abs() > tolerance).any()):
        raise UnsupportedNetworkError(
            f"the network the engine read differs from what model(x) computes (by {float((got - want).abs().max()):.3g} "
            "in a float64 replay): the bounds would be of another function; check for a forward assigned to an "
            "instance, hooks, or layers whose forward differs from the standard one"
        )


def _check_centre(model: nn.Module, x: Tensor, C: Tensor | None, lb: Tensor, ub: Tensor) -> None:
    """The model's own output at the centre must lie inside the bounds (one forward pass).

    Catches any gap between what the engine bounded and what ``model(x)`` computes. The
    tolerance covers the rounding of two differently ordered computations of the same function.
    """
    with torch.no_grad():
        out = model(x).to(lb.dtype).reshape(x.shape[0], -1)
        if C is not None:
            out = (C @ out.unsqueeze(-1)).squeeze(-1) if C.dim() == 3 else out @ C.T
        # float64 only (see compute_bounds): rounding there is far below this tolerance
        tolerance = 1e-7 * (1.0 + out.abs() + lb.detach().abs().nan_to_num(posinf=0.0, neginf=0.0))
        outside = (out < lb.detach() - tolerance) | (out > ub.detach() + tolerance)
    if bool(outside.any()):
        raise UnsupportedNetworkError(
            f"model(x) lies outside the bounds computed for it (by {float((lb.detach() - out).clamp_min(0).max() + (out - ub.detach()).clamp_min(0).max()):.3g}): "
            "the engine did not bound the function the model computes; check for layers whose forward "
            "differs from the standard one"
        )
