"""Bounds of one network at many parameter points at once.

The analyses evaluate a bound at hundreds of parameter vectors ``θ + t·d`` (Sec. 4.3, 5.1 and
App. E.2 of the paper). Instead of one engine call per point, the fully connected layers that
move become :class:`~relaxlab.engine.ops.Linear` operations with per-example weights (a leading
batch dimension): the engine then bounds every (input, parameter point) pair of a batch in one
call, on any network it accepts. Networks whose moved parameters are not in ``nn.Linear`` layers
fall back to one engine call per point.

Shapes: ``P`` points (input, parameter vector) evaluated together; ``S`` specification rows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.core.relaxer import check_relaxer
from relaxlab.engine.bounds import compute_bounds
from relaxlab.engine.network import Network
from relaxlab.engine.ops import Linear
from relaxlab.engine.parse import parse_model
from relaxlab.engine.spec import margin_bounds, worst_case_logits

#: Default number of points bounded in one engine call.
DEFAULT_POINTS_PER_CALL = 128


def linear_parameter_names(model: nn.Module) -> dict[str, nn.Linear]:
    """Parameter name -> owning ``nn.Linear`` for every weight and bias of a Linear layer."""
    owners: dict[str, nn.Linear] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            prefix = f"{module_name}." if module_name else ""
            owners[f"{prefix}weight"] = module
            if module.bias is not None:
                owners[f"{prefix}bias"] = module
    return owners


def first_layer_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the first ``Linear``/``Conv2d`` layer (Sec. 4.3: "first-layer weights")."""
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            prefix = f"{module_name}." if module_name else ""
            return [f"{prefix}{name}" for name, _ in module.named_parameters(recurse=False)]
    raise ValueError("the model has no Linear or Conv2d layer whose weights could move")


def check_direction(model: nn.Module, direction: Mapping[str, Tensor], batch: int | None) -> None:
    """Validate a direction: known parameter names, matching shapes (with a leading batch dim if given)."""
    params = dict(model.named_parameters())
    if not direction:
        raise ValueError("the direction is empty: give at least one parameter to move")
    for name, value in direction.items():
        if name not in params:
            raise ValueError(
                f"direction names {name!r}, which is not a parameter of the model; it has {sorted(params)}"
            )
        want = tuple(params[name].shape) if batch is None else (batch, *params[name].shape)
        if tuple(value.shape) != want:
            raise ValueError(f"direction for {name!r} has shape {tuple(value.shape)}, expected {want}")


def batched_network(
    model: nn.Module,
    input_shape: Sequence[int],
    values: Mapping[str, Tensor],
) -> Network:
    """The parsed network with the Linear layers named in ``values`` given per-point parameters.

    :param values: parameter name -> ``(P, *shape)`` values, one per point; names of parameters
        of ``nn.Linear`` layers only. A layer whose weight (or bias) is missing keeps its own,
        broadcast to every point.
    """
    owners = linear_parameter_names(model)
    bad = sorted(set(values) - set(owners))
    if bad:
        raise ValueError(f"parameters {bad} are not in nn.Linear layers; only those can be batched")
    net = parse_model(model, tuple(int(s) for s in input_shape))
    points = next(iter(values.values())).shape[0]
    nodes = list(net.nodes)
    by_module = {id(owner): name for name, owner in owners.items()}
    for module in {id(m): m for m in owners.values()}.values():
        if not any(id(module) == id(owners[n]) for n in values):
            continue
        prefix = by_module[id(module)].rsplit(".", 1)[0] + "." if "." in by_module[id(module)] else ""
        weight = values.get(f"{prefix}weight")
        bias = values.get(f"{prefix}bias")
        index = next(
            (
                i
                for i, node in enumerate(nodes)
                if isinstance(node.op, Linear) and node.op.weight is module.weight
            ),
            None,
        )
        if index is None:
            raise ValueError("could not match a Linear layer of the model to the parsed network")
        op = nodes[index].op
        assert isinstance(op, Linear)
        if len(op.in_shape) != 1:
            raise ValueError(
                f"{net.describe(index)} reads inputs of shape {op.in_shape}; only flat inputs can be batched"
            )
        if weight is None:
            weight = module.weight.unsqueeze(0).expand(points, *module.weight.shape)
        if bias is None and module.bias is not None:
            bias = module.bias.unsqueeze(0).expand(points, *module.bias.shape)
        nodes[index] = attrs.evolve(nodes[index], op=attrs.evolve(op, weight=weight, bias=bias))
    return Network(tuple(nodes), net.input_shape)


#: ``value_fn(network, x, labels) -> (P,)``: what to follow along a segment (labels may be None).
ValueFn = Callable[[Network | nn.Module, Tensor, Tensor | None], Tensor]


def evaluate_points(
    model: nn.Module,
    x: Tensor,
    offsets: Mapping[str, Tensor],
    value_fn: Callable[[Network | nn.Module, int, int], Tensor],
    *,
    points_per_call: int = DEFAULT_POINTS_PER_CALL,
) -> Tensor:
    """Values at ``P`` points: input ``x[p]`` with parameters ``θ + offsets[·][p]``.

    :param x: ``(P, *input_shape)`` inputs (repeat an input to follow it at many parameter points).
    :param offsets: parameter name -> ``(P, *shape)`` displacement from the model's parameters.
    :param value_fn: ``value_fn(network, start, stop) -> (stop - start,)`` for the points
        ``start:stop``; the network is a batched :class:`Network` for exactly those points (or a
        perturbed copy of the model, one point at a time, in the fallback path).
    :return: ``(P,)`` values (no gradient).
    """
    if points_per_call < 1:
        raise ValueError(f"points_per_call must be >= 1, got {points_per_call}")
    points = int(x.shape[0])
    check_direction(model, offsets, points)
    params = dict(model.named_parameters())
    linear = linear_parameter_names(model)
    out = []
    with torch.no_grad():
        if set(offsets) <= set(linear):
            for start in range(0, points, points_per_call):
                stop = min(points, start + points_per_call)
                values = {name: params[name].unsqueeze(0) + d[start:stop] for name, d in offsets.items()}
                net = batched_network(model, tuple(x.shape[1:]), values)
                out.append(value_fn(net, start, stop).reshape(-1))
        else:
            clone = copy.deepcopy(model)
            clone_params = dict(clone.named_parameters())
            for p in range(points):
                for name, d in offsets.items():
                    clone_params[name].copy_(params[name] + d[p])
                out.append(value_fn(clone, p, p + 1).reshape(-1))
    return torch.cat(out)


def bound_value(
    relaxation: object,
    eps: float,
    *,
    output: int | None = None,
    labels: Tensor | None = None,
    kappa: float = 0.0,
    domain: tuple[float, float] | None = None,
) -> ValueFn:
    """A value function: the lower bound of ``output``, or the certified loss for ``labels``.

    The certified loss is ``kappa·CE(z, y) + (1 - kappa)·CE(z_worst, y)`` per example, with
    ``z_worst`` from the margin lower bounds (the training loss of one example, L1 excluded).
    """
    resolved = check_relaxer(relaxation)
    if (output is None) == (labels is None):
        raise ValueError("give exactly one of output= (follow a lower bound) or labels= (follow the loss)")
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must be in [0, 1], got {kappa}")

    def value(network: Network | nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        net = network if isinstance(network, Network) else parse_model(network, tuple(x.shape[1:]))
        if output is not None:
            if not 0 <= output < net.output_dim:
                raise ValueError(f"output {output} is out of range: the network has {net.output_dim} outputs")
            spec = torch.zeros(1, net.output_dim, dtype=x.dtype, device=x.device)
            spec[0, output] = 1.0
            lb, _ = compute_bounds(net, x, eps, resolved, C=spec, domain=domain, lower_only=True)
            return lb[:, 0]
        assert y is not None
        return certified_loss(net, x, y, eps, resolved, kappa=kappa, domain=domain)

    return value


def certified_loss(
    network: Network | nn.Module,
    x: Tensor,
    labels: Tensor,
    eps: float,
    relaxation: object,
    *,
    kappa: float = 0.0,
    domain: tuple[float, float] | None = None,
) -> Tensor:
    """Per-example ``kappa·CE(z, y) + (1 - kappa)·CE(z_worst, y)``, ``(B,)``, differentiable."""
    net = network if isinstance(network, Network) else parse_model(network, tuple(x.shape[1:]))
    lb, others = margin_bounds(
        net, x, labels, eps, check_relaxer(relaxation), num_classes=net.output_dim, domain=domain
    )
    loss = F.cross_entropy(worst_case_logits(lb, others, net.output_dim), labels, reduction="none")
    if kappa > 0.0:
        loss = (1.0 - kappa) * loss + kappa * F.cross_entropy(net.forward(x), labels, reduction="none")
    return loss


def gradient_directions(
    model: nn.Module,
    x: Tensor,
    names: Sequence[str],
    value_fn: ValueFn,
    labels: Tensor | None = None,
    *,
    normalize: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-example gradients of ``value_fn`` with respect to the named parameters.

    :return: ``(directions, norms)``: name -> ``(B, *shape)`` gradients (divided by their joint
        norm when ``normalize``; a zero gradient stays zero) and their ``(B,)`` norms.
    """
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"unknown parameter names {missing}; the model has {sorted(params)}")
    chosen = [params[n] for n in names]
    grads: dict[str, list[Tensor]] = {n: [] for n in names}
    norms = []
    for b in range(int(x.shape[0])):
        y = None if labels is None else labels[b : b + 1]
        value = value_fn(model, x[b : b + 1], y).sum()
        raw = torch.autograd.grad(value, chosen, allow_unused=True)
        g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(chosen, raw, strict=True)]
        # sum() of tensors is a tensor (with no names it is the int 0, which torch.sqrt refuses)
        squares = cast(Tensor, sum((gi.double() ** 2).sum() for gi in g))
        norm = torch.sqrt(squares).to(x.dtype)
        norms.append(norm)
        scale = 1.0 / norm if (normalize and float(norm) > 0) else 1.0
        for n, gi in zip(names, g, strict=True):
            grads[n].append(gi.detach() * scale)
    return {n: torch.stack(v) for n, v in grads.items()}, torch.stack(norms)


def along_segments(
    model: nn.Module,
    x: Tensor,
    directions: Mapping[str, Tensor],
    steps: Tensor,
    value_fn: ValueFn,
    labels: Tensor | None = None,
    *,
    points_per_call: int = DEFAULT_POINTS_PER_CALL,
) -> Tensor:
    """``value_fn`` at ``θ + t·d_b`` for every input ``b`` and every ``t`` in ``steps``: ``(B, n)``.

    :param directions: name -> ``(B, *shape)``, one direction per input.
    :param steps: ``(n,)`` the values of ``t``.
    """
    batch, n = int(x.shape[0]), int(steps.shape[0])
    check_direction(model, directions, batch)
    xs = x.repeat_interleave(n, dim=0)
    ys = None if labels is None else labels.repeat_interleave(n, dim=0)
    t = steps.to(dtype=x.dtype, device=x.device)
    offsets = {
        name: (d.unsqueeze(1) * t.reshape(1, n, *([1] * (d.dim() - 1)))).reshape(batch * n, *d.shape[1:])
        for name, d in directions.items()
    }

    def chunk(network: Network | nn.Module, start: int, stop: int) -> Tensor:
        return value_fn(network, xs[start:stop], None if ys is None else ys[start:stop])

    values = evaluate_points(model, xs, offsets, chunk, points_per_call=points_per_call)
    return values.reshape(batch, n)


__all__ = [
    "along_segments",
    "batched_network",
    "bound_value",
    "certified_loss",
    "evaluate_points",
    "first_layer_names",
    "gradient_directions",
]
