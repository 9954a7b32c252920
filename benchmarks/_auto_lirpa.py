"""auto_LiRPA as a measuring stick for the benchmarks (never a dependency of relaxlab).

The benchmarks that compare with auto_LiRPA import it through :func:`load`; when it is not
installed they print :data:`INSTALL` and exit 0. Only relaxlab's public API is used on
relaxlab's side (``relaxlab.compute_bounds``, ``relaxlab.engine.spec.margin_spec``, the
registry's architectures), so the scripts keep working when the engine's internals change.

:data:`DEFINITION` is the set of ``bound_opts`` under which auto_LiRPA's backward mode computes
the textbook definitions (IBP, CROWN with every intermediate bound by CROWN, CROWN-IBP); why each
option is set is written next to it.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

INSTALL = """auto_LiRPA is not importable from this interpreter; this benchmark compares against it.
Install it into a separate virtual environment (never a relaxlab dependency), beside torch 2.13.0:

    git clone https://github.com/Verified-Intelligence/auto_LiRPA /work/lirpa/auto_LiRPA
    python3 -m venv /work/lirpa/.venv
    /work/lirpa/.venv/bin/pip install torch==2.13.0 packaging appdirs tqdm graphviz
    /work/lirpa/.venv/bin/pip install --no-deps -e /work/lirpa/auto_LiRPA
    /work/lirpa/.venv/bin/pip install -e .          # relaxlab, from this checkout

and run this script with /work/lirpa/.venv/bin/python (auto_LiRPA warns about its torch pin; it works).
Do not run it from /work/lirpa itself (the auto_LiRPA checkout directory shadows the package)."""

#: ``bound_opts`` under which auto_LiRPA computes the standard definitions.
DEFINITION: dict[str, Any] = {
    # CROWN's lower line for an unstable ReLU: slope 1 iff u/(u-l) > 1/2, i.e. iff u > -l
    # (relaxlab: "0 if -l >= u else x"); this is auto_LiRPA's default, set explicitly.
    "activation_bound_option": "adaptive",
    # Off: by default auto_LiRPA computes the interval image of each ReLU input from the bounds it
    # already has (the previous ReLUs' *CROWN* boxes), keeps that box for every neuron it proves
    # stable and backsubstitutes only the others. Sound, but where that box proves a neuron stable
    # that CROWN's own bound leaves unstable, the ReLU is relaxed as stable: tighter than CROWN's
    # definition (this is issue 21's 1.3e-3 "gap"; see benchmarks/compare_auto_lirpa.py).
    "sparse_intermediate_bounds": False,
    "sparse_conv_intermediate_bounds": False,
    "sparse_intermediate_bounds_with_ibp": False,
    # Off (its default): no intersection of CROWN bounds with IBP bounds.
    "compare_crown_with_ibp": False,
    # Off (its default): no loss fusion (a different bound of the robust loss).
    "loss_fusion": False,
}


def load() -> ModuleType | None:
    """``auto_LiRPA`` if it imports (its torch-pin and deprecation warnings silenced), else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import auto_LiRPA
            from auto_LiRPA import BoundedModule  # noqa: F401  (a namespace package has no BoundedModule)
        except ImportError:
            return None
    return auto_LiRPA


def require() -> ModuleType:
    """``auto_LiRPA``, or print :data:`INSTALL` and exit 0."""
    module = load()
    if module is None:
        print(INSTALL)
        sys.exit(0)
    warnings.filterwarnings("ignore", module="auto_LiRPA")
    warnings.filterwarnings("ignore", message=".*torch.jit.*")
    return module


def bounded_module(model: nn.Module, x: Tensor, options: dict[str, Any]) -> Any:
    """auto_LiRPA's ``BoundedModule`` of ``model`` for inputs shaped like ``x``."""
    from auto_LiRPA import BoundedModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BoundedModule(model, torch.zeros_like(x[:1]), bound_opts=dict(options), device=x.device)


def without_normalize(
    model: nn.Module, x: Tensor, eps: float, domain: tuple[float, float]
) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """The problem as auto_LiRPA is given it: ``(network, centre, lower, upper)``.

    auto_LiRPA's patches mode cannot bound a constant subtraction in front of a convolution
    (``get_bias`` of a constant under ``Patches`` fails on shapes), so a leading
    :class:`relaxlab.nn.Normalize` is applied to the box instead: ``(x - mean) / std`` with
    ``std > 0`` maps the box ``[x - eps, x + eps] ∩ domain`` exactly onto a box, so the network
    after it is bounded over the same set of inputs (as auto_LiRPA's own examples normalise in the
    data loader). Any other model is returned as is.
    """
    from relaxlab.nn import Normalize

    lower, upper = (x - eps).clamp(*domain), (x + eps).clamp(*domain)
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[0], Normalize):
        norm, body = model[0], model[1:]
        # a new Sequential starts in training mode, and auto_LiRPA applies its mode to every child
        body.train(model.training)
        return body, norm(x), norm(lower), norm(upper)
    return model, x, lower, upper


def compute_bounds(
    module: Any,
    x: Tensor,
    lower: Tensor,
    upper: Tensor,
    C: Tensor | None,
    method: str,
    *,
    bound_upper: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """auto_LiRPA's bounds of ``C·model`` over ``[lower, upper]`` (``method``: ``IBP``, ``CROWN-IBP``, ``backward``)."""
    from auto_LiRPA import BoundedTensor, PerturbationLpNorm

    inputs = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.compute_bounds(x=(inputs,), C=C, method=method, bound_upper=bound_upper)


def relu_input_bounds(module: Any) -> list[tuple[Tensor, Tensor]]:
    """The bounds auto_LiRPA holds for the input of every ReLU, in its node order (after ``compute_bounds``)."""
    from auto_LiRPA.operators import BoundRelu

    return [
        (node.inputs[0].lower, node.inputs[0].upper) for node in module.nodes() if isinstance(node, BoundRelu)
    ]
