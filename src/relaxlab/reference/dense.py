"""Dense float64 form of a small ReLU network, for the exact references.

A network is turned into affine blocks separated by ReLUs::

    f(x) = W_K relu( ... relu(W_2 relu(W_1 x + b_1) + b_2) ... ) + b_K

Each block is the composition of the affine layers (``Linear``, ``Conv2d``,
``Flatten``, :class:`relaxlab.nn.Normalize`) between two ReLUs. The matrix of a
layer is obtained *exactly* by applying its linear part (the layer without its
bias) to the identity basis images; blocks are then composed by float64 matrix
products. This is meant for tiny networks only: a block over ``n`` inputs costs
an ``n x n`` basis batch.

Shapes: ``B`` batch, ``S`` specification rows, ``d`` flattened input size,
``n_k`` width of block ``k``, ``K`` network outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from attrs import field, frozen
from torch import Tensor, nn
from torch.nn import functional as F

from relaxlab.core.convert import as_tuple
from relaxlab.nn import Normalize

__all__ = ["DenseNetwork", "ReferenceInput", "prepare_input", "spec_scale", "to_dense"]

_SUPPORTED = "Linear, Conv2d, Flatten, ReLU and relaxlab.nn.Normalize"

#: Outward padding of interval pre-activation bounds: ``INTERVAL_PAD_ABS +
#: INTERVAL_PAD_REL * (|W| max(|lo|, |up|) + |b|)``. Interval arithmetic in float64
#: is exact up to a few ulps of the summed magnitudes; the relative part is orders
#: of magnitude above that. The absolute part keeps big-M constants well above the
#: solver's feasibility tolerance (1e-9) for neurons whose range is (nearly) a
#: point. Both are harmless: big-M with any valid bounds is still exact, and a
#: wider box only loosens the MILP's LP relaxation a little.
INTERVAL_PAD_ABS = 1e-7
INTERVAL_PAD_REL = 1e-9


@frozen(eq=False)
class DenseNetwork:
    """A ReLU network as float64 affine blocks ``(W_k, b_k)``, a ReLU between consecutive blocks.

    :param weights: ``W_k`` of shape ``(n_k, n_{k-1})``, float64, CPU.
    :param biases: ``b_k`` of shape ``(n_k,)``, float64, CPU.
    :param input_shape: the model's input shape without the batch dimension.
    """

    weights: tuple[Tensor, ...] = field()
    biases: tuple[Tensor, ...] = field()
    input_shape: tuple[int, ...] = field(converter=as_tuple)

    @weights.validator
    def _check(self, attribute: object, value: tuple[Tensor, ...]) -> None:
        if len(value) != len(self.biases) or not value:
            raise ValueError("DenseNetwork: need as many biases as weights, and at least one block")
        width = math.prod(self.input_shape)
        for k, (w, b) in enumerate(zip(value, self.biases, strict=True)):
            if w.dim() != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                raise ValueError(
                    f"DenseNetwork: block {k} has W {tuple(w.shape)} and b {tuple(b.shape)}, "
                    f"expected ({b.shape[0] if b.dim() == 1 else '?'}, {width}) and (n,)"
                )
            width = w.shape[0]

    @property
    def num_relu_layers(self) -> int:
        """Number of ReLU layers (blocks minus one)."""
        return len(self.weights) - 1

    @property
    def input_size(self) -> int:
        """Flattened input size ``d``."""
        return math.prod(self.input_shape)

    @property
    def output_size(self) -> int:
        """Number of outputs ``K``."""
        return self.weights[-1].shape[0]

    def widths(self) -> list[int]:
        """Widths ``[d, n_1, ..., n_K]``."""
        return [self.input_size, *(w.shape[0] for w in self.weights)]

    def __call__(self, x: Tensor) -> Tensor:
        """Evaluate in float64: ``(N, *input_shape)`` or ``(N, d)`` -> ``(N, K)``."""
        h = x.to(torch.float64).reshape(x.shape[0], -1)
        if h.shape[1] != self.input_size:
            raise ValueError(
                f"DenseNetwork: input has {h.shape[1]} values per example, expected {self.input_size}"
            )
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if k > 0:
                h = h.clamp(min=0.0)
            h = h @ w.T + b
        return h

    def numpy_blocks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The blocks as float64 numpy arrays."""
        return [(w.numpy(), b.numpy()) for w, b in zip(self.weights, self.biases, strict=True)]

    def interval_bounds(self, lower: np.ndarray, upper: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Interval-arithmetic pre-activation bounds of every block, padded outward.

        :param lower: ``(d,)`` input lower bounds; ``upper`` likewise.
        :return: ``(lb_k, ub_k)`` of every block's output ``W_k a + b_k``; the
            last entry bounds the network output.
        """
        lo, up = lower, upper
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for k, (w, b) in enumerate(self.numpy_blocks()):
            if k > 0:
                lo, up = np.maximum(lo, 0.0), np.maximum(up, 0.0)
            pos, neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
            lb = pos @ lo + neg @ up + b
            ub = pos @ up + neg @ lo + b
            pad = INTERVAL_PAD_ABS + INTERVAL_PAD_REL * (
                np.abs(w) @ np.maximum(np.abs(lo), np.abs(up)) + np.abs(b)
            )
            lo, up = lb - pad, ub + pad
            out.append((lo, up))
        return out


def spec_scale(net: DenseNetwork, lower: np.ndarray, upper: np.ndarray, spec: np.ndarray) -> np.ndarray:
    """``(S,)`` magnitude ``max(|lb|, |ub|)`` of the interval-arithmetic bounds of ``spec @ f`` on one box."""
    bounds = net.interval_bounds(lower, upper)
    w, b = net.numpy_blocks()[-1]
    if net.num_relu_layers:
        lo, up = np.maximum(bounds[-2][0], 0.0), np.maximum(bounds[-2][1], 0.0)
    else:
        lo, up = lower, upper
    cw = spec @ w
    lb = np.maximum(cw, 0.0) @ lo + np.minimum(cw, 0.0) @ up + spec @ b
    ub = np.maximum(cw, 0.0) @ up + np.minimum(cw, 0.0) @ lo + spec @ b
    return np.maximum(np.abs(lb), np.abs(ub))


def _flat_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, layer in model.named_children():
        if type(layer) is nn.Sequential:
            for inner, sub in _flat_modules(layer):
                yield f"{name}.{inner}", sub
        else:
            yield name, layer


def _linear_part(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer without its bias (the linear part of the affine map), in float64."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight.detach().to(torch.float64))
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(
            x,
            layer.weight.detach().to(torch.float64),
            None,
            layer.stride,
            layer.padding,  # int tuple or "same"/"valid"
            layer.dilation,
            layer.groups,
        )
    if isinstance(layer, Normalize):
        std = layer.std.detach().to(torch.float64)
        return x / std.reshape((1, -1, *([1] * (x.dim() - 2))) if std.numel() > 1 else (1,))
    if isinstance(layer, nn.Flatten):
        return layer(x)
    raise AssertionError(f"unreachable: {type(layer).__name__}")  # pragma: no cover


def _bias_part(layer: nn.Module, zeros: Tensor) -> Tensor:
    """The layer applied to the zero input: its bias, broadcast to the output shape."""
    if isinstance(layer, nn.Linear | nn.Conv2d):
        out = _linear_part(layer, zeros)
        if layer.bias is None:
            return out
        b = layer.bias.detach().to(torch.float64)
        return out + (b.reshape(1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else b)
    if isinstance(layer, Normalize):
        mean = layer.mean.detach().to(torch.float64)
        std = layer.std.detach().to(torch.float64)
        shape = (1, -1, *([1] * (zeros.dim() - 2))) if std.numel() > 1 else (1,)
        return (zeros - mean.reshape(shape)) / std.reshape(shape)
    return _linear_part(layer, zeros)


def _check_layer(index: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.ReLU | nn.Linear | Normalize):
        pass
    elif isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"relaxlab.reference: layer {index} (Conv2d) uses padding_mode={layer.padding_mode!r}; "
                "only zero padding is supported"
            )
    elif isinstance(layer, nn.Flatten):
        if layer.start_dim == 0:
            raise ValueError(
                f"relaxlab.reference: layer {index} (Flatten) has start_dim=0 and would flatten the batch "
                "dimension; use nn.Flatten() (start_dim=1)"
            )
    else:
        raise TypeError(
            f"relaxlab.reference: layer {index} ({type(layer).__name__}) is not supported; "
            f"the references accept nn.Sequential models of {_SUPPORTED}"
        )
    for pname, p in [*layer.named_parameters(), *layer.named_buffers()]:
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"relaxlab.reference: layer {index} ({type(layer).__name__}) has non-finite values in "
                f"{pname!r}; the references need finite weights"
            )


def to_dense(model: nn.Module, input_shape: Sequence[int]) -> DenseNetwork:
    """Turn an accepted ``nn.Sequential`` into float64 affine blocks separated by ReLUs.

    Nested ``nn.Sequential`` containers are flattened. A ReLU at the very start
    or two ReLUs in a row produce an identity block; a trailing ReLU produces a
    final identity block, so ``f`` is always ``W_K relu(...) + b_K``.

    :param model: ``nn.Sequential`` of Linear, Conv2d (zero padding), Flatten,
        ReLU and :class:`relaxlab.nn.Normalize`.
    :param input_shape: the input shape without the batch dimension, e.g. ``(1, 28, 28)``.
    :return: the dense network.
    :raises TypeError: for a model that is not an ``nn.Sequential`` or holds another layer.
    :raises ValueError: for non-finite weights or an input shape that the model does not accept.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"relaxlab.reference: expected an nn.Sequential, got {type(model).__name__}; "
            f"wrap the layers ({_SUPPORTED}) in nn.Sequential"
        )
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"relaxlab.reference: input shape must be non-empty and positive, got {shape}")
    layers = list(_flat_modules(model))
    for index, layer in layers:
        _check_layer(index, layer)

    weights: list[Tensor] = []
    biases: list[Tensor] = []
    width = math.prod(shape)
    w_block = torch.eye(width, dtype=torch.float64)
    b_block = torch.zeros(width, dtype=torch.float64)
    with torch.no_grad():
        for index, layer in layers:
            if isinstance(layer, nn.ReLU):
                weights.append(w_block)
                biases.append(b_block)
                width = w_block.shape[0]
                w_block = torch.eye(width, dtype=torch.float64)
                b_block = torch.zeros(width, dtype=torch.float64)
                continue
            n = math.prod(shape)
            basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
            zeros = torch.zeros(1, *shape, dtype=torch.float64)
            try:
                image = _linear_part(layer, basis)
                bias = _bias_part(layer, zeros)
            except RuntimeError as err:
                raise ValueError(
                    f"relaxlab.reference: layer {index} ({type(layer).__name__}) does not accept inputs of "
                    f"shape {shape} (without batch): {err}"
                ) from err
            w_layer = image.reshape(n, -1).T  # column i is the image of basis vector e_i
            b_layer = bias.reshape(-1)
            w_block = w_layer @ w_block
            b_block = w_layer @ b_block + b_layer
            shape = tuple(bias.shape[1:])
    weights.append(w_block)
    biases.append(b_block)
    return DenseNetwork(
        weights=tuple(weights), biases=tuple(biases), input_shape=tuple(int(s) for s in input_shape)
    )


@frozen(eq=False)
class ReferenceInput:
    """Validated inputs of a reference computation, as float64 numpy arrays.

    :param net: the dense network.
    :param lower: ``(B, d)`` flattened input lower bounds; ``upper`` likewise.
    :param spec: ``(B, S, K)`` specification matrices.
    """

    net: DenseNetwork
    lower: np.ndarray
    upper: np.ndarray
    spec: np.ndarray


def prepare_input(
    model: nn.Module | DenseNetwork, lower: Tensor, upper: Tensor, C: Tensor | None
) -> ReferenceInput:
    """Check the arguments of a reference call and convert them, before any solver runs.

    :param model: the network (see :func:`to_dense`), or an already converted :class:`DenseNetwork`.
    :param lower: ``(B, *input_shape)`` box lower corner; ``upper`` likewise.
    :param C: ``(B, S, K)`` or ``(S, K)`` (shared by the batch) specification rows; ``None`` is the identity.
    :return: validated float64 arrays and the dense network.
    """
    if not isinstance(lower, Tensor) or not isinstance(upper, Tensor):
        raise TypeError("relaxlab.reference: lower and upper must be torch tensors")
    if lower.shape != upper.shape:
        raise ValueError(
            f"relaxlab.reference: lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape"
        )
    if lower.dim() < 2:
        raise ValueError(
            f"relaxlab.reference: lower/upper need a batch dimension, got shape {tuple(lower.shape)}; "
            "use x.unsqueeze(0) for one example"
        )
    lo = lower.detach().to(device="cpu", dtype=torch.float64)
    up = upper.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(lo).all()) or not bool(torch.isfinite(up).all()):
        raise ValueError("relaxlab.reference: lower and upper must be finite")
    if bool((lo > up).any()):
        raise ValueError("relaxlab.reference: lower > upper somewhere; the box is empty")
    net = model if isinstance(model, DenseNetwork) else to_dense(model, lo.shape[1:])
    if tuple(lo.shape[1:]) != net.input_shape:
        raise ValueError(
            f"relaxlab.reference: inputs have shape {tuple(lo.shape[1:])} but the dense network expects "
            f"{net.input_shape}"
        )
    batch, outputs = lo.shape[0], net.output_size
    if C is None:
        spec = torch.eye(outputs, dtype=torch.float64).expand(batch, outputs, outputs)
    else:
        if not isinstance(C, Tensor):
            raise TypeError("relaxlab.reference: C must be a torch tensor or None")
        spec = C.detach().to(device="cpu", dtype=torch.float64)
        if spec.dim() == 2:
            spec = spec.expand(batch, *spec.shape)
        if spec.dim() != 3 or spec.shape[0] != batch or spec.shape[2] != outputs:
            raise ValueError(
                f"relaxlab.reference: C has shape {tuple(C.shape)}; expected (batch={batch}, specs, "
                f"outputs={outputs}) or (specs, outputs={outputs})"
            )
        if not bool(torch.isfinite(spec).all()):
            raise ValueError("relaxlab.reference: C must be finite")
    return ReferenceInput(
        net=net,
        lower=lo.reshape(batch, -1).numpy().copy(),
        upper=up.reshape(batch, -1).numpy().copy(),
        spec=spec.contiguous().numpy().copy(),
    )
