"""The small networks of the papers' worked examples, with their input boxes.

Each function returns a :class:`ToyExample`: the network as an ``nn.Sequential``
and the input box ``[lower, upper]`` (batch of one), plus the centre and radius
``eps`` where the paper states the box that way. They are exact unit tests of
the engine and reused by the analyses.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor, nn


@attrs.frozen(eq=False)
class ToyExample:
    """A network with its input box.

    :param model: the network.
    :param lower: ``(1, n0)`` input lower bounds.
    :param upper: ``(1, n0)`` input upper bounds.
    :param center: ``(1, n0)`` the box's centre ``x``.
    :param eps: the l_inf radius of the box.
    :param reference: where the example comes from.
    """

    model: nn.Sequential
    lower: Tensor
    upper: Tensor
    center: Tensor
    eps: float
    reference: str


def _linear(weight: Sequence[Sequence[float]], bias: Sequence[float] | None, dtype: torch.dtype) -> nn.Linear:
    w = torch.tensor(weight, dtype=dtype)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=dtype))
    return layer


def _example(
    model: nn.Sequential, center: Sequence[float], eps: float, dtype: torch.dtype, ref: str
) -> ToyExample:
    x = torch.tensor([list(center)], dtype=dtype)
    return ToyExample(model, x - eps, x + eps, x, eps, ref)


def app_a_network(dtype: torch.dtype = torch.float64) -> ToyExample:
    """The toy network of App. A of *On the Paradox of Certified Training* (Fig. 7, from DeepPoly).

    ``x1 = (x01 + x02, x01 - x02)``, ``x2 = relu(x1)``, ``x3 = (x21 + x22, x21 - x22)``, no biases,
    with ``x0 ∈ [-1, 1]^2``. With DeepZ, ``x31 ∈ [-1, 3]`` and ``x32 ∈ [-2, 2]`` (the text's
    ``u31 = -3`` is a typo for 3).
    """
    model = nn.Sequential(
        _linear([[1.0, 1.0], [1.0, -1.0]], None, dtype),
        nn.ReLU(),
        _linear([[1.0, 1.0], [1.0, -1.0]], None, dtype),
    )
    return _example(model, [0.0, 0.0], 1.0, dtype, "Jovanović et al. 2022, App. A (Fig. 7)")


def crown_example_network(dtype: torch.dtype = torch.float64) -> ToyExample:
    """The LiRPA example of App. A.4 of *Automatic Perturbation Analysis* (Xu et al., 2020).

    ``W1 = [[2, 1], [-3, 4]]``, ``W2 = [[4, -2], [2, 1]]``, ``W3 = [[-2, 1]]``, ReLU between, no
    biases; ``x0 = [0, 1]``, ``eps = 2``. IBP gives ``[-56, 32]``; backward mode with lower slope 0
    (CROWN-0) gives ``[-42, 24.2857…]`` (= 170/7).
    """
    model = nn.Sequential(
        _linear([[2.0, 1.0], [-3.0, 4.0]], None, dtype),
        nn.ReLU(),
        _linear([[4.0, -2.0], [2.0, 1.0]], None, dtype),
        nn.ReLU(),
        _linear([[-2.0, 1.0]], None, dtype),
    )
    return _example(model, [0.0, 1.0], 2.0, dtype, "Xu et al. 2020, App. A.4")


def toy_continuity_network(w: float, dtype: torch.dtype = torch.float64) -> ToyExample:
    """The network of Sec. 4.2 / App. C.1 (Fig. 8) of *On the Paradox of Certified Training*.

    ``x11 = x12 = x01 + w`` (``w`` the only parameter, here the bias), ``x2 = relu(x1)``,
    ``x31 = x21 + 1`` and ``x32 = x22 - x21``, with ``x01 ∈ [-1, 1]``. CROWN's lower bound
    ``l31`` is 1 for ``w ∈ [-1, 0]`` and ``w`` for ``w ∈ (0, 1]``; hBox's ``l32`` is ``-1 - w``
    for ``w ∈ (-1, 1)`` and 0 for ``w >= 1``: both jump.

    :param w: the parameter, the bias of the first layer.
    """
    model = nn.Sequential(
        _linear([[1.0], [1.0]], [w, w], dtype),
        nn.ReLU(),
        _linear([[1.0, 0.0], [-1.0, 1.0]], [1.0, 0.0], dtype),
    )
    return _example(model, [0.0], 1.0, dtype, "Jovanović et al. 2022, Sec. 4.2 and App. C.1 (Fig. 8)")
