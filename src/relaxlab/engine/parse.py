"""Turn a torch model into a :class:`~relaxlab.engine.network.Network`, through the op table.

- An ``nn.Sequential`` whose modules (nested ``Sequential`` flattened) all have a rule in
  :data:`~relaxlab.engine.optable.MODULES` and compute exactly what their class computes is read
  module by module (no tracing: this is the path every training step takes).
- Any other module is traced with ``torch.fx``; modules with a rule stay leaves, everything else
  is traced into, and functions and tensor methods go through
  :data:`~relaxlab.engine.optable.FUNCTIONS` / :data:`~relaxlab.engine.optable.METHODS`.

What is bounded is what the model computes, or nothing:

- a subclass that overrides ``forward`` of a supported module is not taken for its base class
  (``fx`` traces into its ``forward``; only what that trace contains is bounded);
- a module with forward hooks or pre-hooks is refused (tracing would not see them);
- **in-place operations** (``nn.ReLU(inplace=True)``, ``F.relu(h, inplace=True)``, ``h.relu_()``,
  ``h += y``) change the tensor every other name for it reads afterwards; ``fx`` records them as
  new values. The tracer follows eager semantics: after an in-place operation every name for the
  same tensor (``identity = h``, ``h.contiguous()``) reads the new value. A tensor that a *view*
  of it (``view``, ``reshape``, slicing, ...) shares and that is read again after the in-place
  operation is refused by name: the bound would be of another function.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from relaxlab.engine.network import Network, NetworkBuilder
from relaxlab.engine.ops import Shape, UnsupportedNetworkError
from relaxlab.engine.optable import (
    FUNCTIONS,
    METHODS,
    MODULES,
    SAME_TENSOR_METHODS,
    SUPPORTED,
    VIEW_FUNCTIONS,
    VIEW_METHODS,
    NodeRef,
    module_rule,
)
from relaxlab.nn import Normalize

__all__ = ["check_hooks", "overrides_forward", "parse_model"]


def overrides_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether ``type(module)`` defines a ``forward`` other than ``base``'s."""
    return type(module).forward is not base.forward


def _rule_base(module: nn.Module) -> type[nn.Module] | None:
    """The closest base class of ``module`` with a rule (it then decides what ``module`` computes)."""
    return next((cls for cls in type(module).__mro__ if cls in MODULES), None)


def _check_hooks(module: nn.Module, where: str) -> None:
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedNetworkError(
            f"{where} ({type(module).__name__}) has forward hooks or pre-hooks (e.g. weight_norm or spectral_norm): "
            "they change what the layer computes; remove them (torch.nn.utils.parametrize is supported)"
        )


def check_hooks(model: nn.Module) -> None:
    """Refuse a model any of whose modules has forward hooks or pre-hooks, or a ``forward`` of its
    own assigned to the instance (neither the class's rule nor tracing would see what it computes)."""
    for path, module in model.named_modules():
        where = f"model.{path}" if path else "model"
        _check_hooks(module, where)
        if "forward" in vars(module):
            raise UnsupportedNetworkError(
                f"{where} ({type(module).__name__}) has a forward assigned to the instance: the engine would "
                f"bound {type(module).__name__}'s function, not the one the model computes; define a subclass "
                "(its forward is traced) or remove the assignment"
            )
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        raise UnsupportedNetworkError(
            "global forward hooks are registered (torch.nn.modules.module.register_module_forward_hook): they "
            "change what every layer computes; remove them before bounding"
        )


def _faithful(module: nn.Module, where: str) -> None:
    """Refuse a module whose output is not what its (torch or relaxlab) base class computes."""
    base = next(
        (cls for cls in type(module).__mro__ if cls.__module__.startswith("torch.nn") or cls is Normalize),
        None,
    )
    if base is not None and overrides_forward(module, base):
        raise UnsupportedNetworkError(
            f"{where} ({type(module).__name__}) overrides forward() of {base.__name__}: the engine would bound "
            f"{base.__name__}'s function, not the one the model computes; use {base.__name__} itself"
        )
    _check_hooks(module, where)


def _chain_modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """``(path, module)`` of a chain the op table reads module by module, else ``None``."""
    modules: list[tuple[str, nn.Module]] = []
    for name, module in model.named_children():
        path = f"{prefix}{name}"
        if type(module) is nn.Sequential:
            inner = _chain_modules(module, f"{path}.")
            if inner is None:
                return None
            modules.extend(inner)
            continue
        base = _rule_base(module)
        if base is None or overrides_forward(module, base):
            return None
        modules.append((path, module))
    return modules


def parse_model(
    model: nn.Module | Network,
    input_shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    clean: Tensor | None = None,
) -> Network:
    """The :class:`Network` of ``model`` for inputs of ``input_shape``.

    :param model: any ``nn.Module`` (an ``nn.Sequential`` is read directly, others traced with
        ``torch.fx``), a module that carries a network (``network`` attribute, e.g. what the ONNX
        reader returns), or a :class:`Network` (cast to ``dtype``/``device`` when given).
    :param input_shape: shape of one input, without the batch dimension.
    :param dtype: dtype to compute in (weights are cast, differentiably); default: the weights'.
    :param device: device to compute on; default: the weights'.
    :param clean: ``(B, *input_shape)`` the clean batch, needed when a ``BatchNorm`` normalises
        with batch statistics (train mode): its statistics on this batch make it affine.
    :raises UnsupportedNetworkError: naming the node (or layer) and the operation or setting the
        engine cannot bound faithfully, before any bound is computed.
    """
    if isinstance(model, Network):
        network = model
    elif isinstance(carried := getattr(model, "network", None), Network) and isinstance(model, nn.Module):
        network = carried
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        return _parse_module(model, tuple(int(s) for s in input_shape), dtype, device, clean)
    if tuple(int(s) for s in input_shape) != network.input_shape:
        raise UnsupportedNetworkError(
            f"inputs of shape {tuple(input_shape)} given to a network that takes {network.input_shape}"
        )
    return network if dtype is None and device is None else network.cast(dtype, device)


def _needs_clean(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
        for m in model.modules()
    )


def _default_dtype(model: nn.Module) -> torch.dtype:
    for tensor in itertools.chain(model.parameters(), model.buffers()):  # stops at the first
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _parse_module(
    model: nn.Module,
    shape: Shape,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    clean: Tensor | None,
) -> Network:
    check_hooks(model)
    if clean is not None and _needs_clean(model):
        clean = clean.to(dtype=dtype if dtype is not None else clean.dtype, device=device)
    else:
        clean = None
    builder = NetworkBuilder(
        shape, dtype=dtype, device=device, default_dtype=_default_dtype(model), clean=clean
    )
    if type(model) is nn.Sequential:
        chain = _chain_modules(model)
    else:  # a single module with a rule is a chain of one
        base = _rule_base(model)
        chain = [("", model)] if base is not None and not overrides_forward(model, base) else None
    if chain is not None:
        if not chain:
            raise UnsupportedNetworkError(
                "the network has no layers; give at least one Linear or Conv2d layer"
            )
        current = 0
        for index, (path, module) in enumerate(chain):
            rule = module_rule(module)
            assert rule is not None
            where = f"layer {index} (model.{path})" if path else "model"
            current = rule(builder, module, current, where, path or type(module).__name__)
        return builder.build(current)
    return _trace(model, builder)


class _Proxy(torch.fx.Proxy):
    """A proxy that records augmented assignments as in-place operations.

    ``torch.fx``'s own proxy has no ``__iadd__``: Python then runs ``h = h + y`` and the graph
    cannot tell ``h += y`` (which changes the tensor that every other name for ``h`` reads) from a
    new value. Recording ``operator.iadd`` lets the tracer follow eager semantics.
    """

    def __iadd__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


class _Tracer(torch.fx.Tracer):
    """Modules with a rule (and their unmodified subclasses) stay leaves, torch's other modules too
    (refused by name); everything else is traced into."""

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _Proxy(node, self)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        base = _rule_base(m)
        if base is not None:
            return not overrides_forward(m, base)
        return super().is_leaf_module(m, module_qualified_name)


def _module_context(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    name = getattr(kind, "__name__", str(kind))
    return f" inside model.{path} ({name}, traced into its forward)"


def _function_name(target: Any) -> str:
    if isinstance(target, str):
        return f".{target}()"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{module}.{name}" if module else name


def _resolve(env: dict[torch.fx.Node, Any], value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return env[value]
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(env, v) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(env, v) for k, v in value.items()}
    return value


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_, F.relu_}


def _inplace_target(node: torch.fx.Node, model: nn.Module) -> torch.fx.Node | None:
    """The node whose tensor ``node`` modifies in place, if it is an in-place operation."""
    target = node.args[0] if node.args else None
    if not isinstance(target, torch.fx.Node):
        return None
    if node.op == "call_method" and str(node.target).endswith("_") and not str(node.target).startswith("_"):
        return target
    if node.op == "call_function" and (
        node.target in _INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True
    ):
        return target
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if getattr(module, "inplace", False) is True:
            return target
    return None


def _alias_kind(node: torch.fx.Node, model: nn.Module) -> str | None:
    """``"same"`` when ``node`` returns its first operand itself, ``"view"`` for a view of it."""
    if node.op == "call_method" and node.target in SAME_TENSOR_METHODS:
        return "same"
    if node.op == "call_method" and node.target in VIEW_METHODS:
        return "view"
    if node.op == "call_function" and node.target in VIEW_FUNCTIONS:
        return "view"
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if isinstance(module, (nn.Identity, nn.Dropout)):
            return "same"
        if isinstance(module, (nn.Flatten, nn.Unflatten)):
            return "view"
    return None


def _trace(model: nn.Module, builder: NetworkBuilder) -> Network:
    try:
        graph = _Tracer().trace(model)
    except UnsupportedNetworkError:
        raise
    except Exception as error:  # fx raises TraceError, TypeError, ... on data-dependent code
        raise UnsupportedNetworkError(
            f"{type(model).__name__} cannot be traced with torch.fx ({type(error).__name__}: {error}); "
            "the engine bounds nn.Sequential chains and fx-traceable modules"
        ) from error
    order = {node: position for position, node in enumerate(graph.nodes)}
    # Tensors shared by several names: each fx node's alias group, and how it relates to its operand.
    group: dict[torch.fx.Node, torch.fx.Node] = {}
    relation: dict[torch.fx.Node, str] = {}  # to the group's root: "same" tensor or a "view" of it
    env: dict[torch.fx.Node, Any] = {}
    output: Any = None
    for node in graph.nodes:
        where = f"node {node.name!r}"
        if node.op == "placeholder":
            if env:
                raise UnsupportedNetworkError(f"{where}: the network must take exactly one input")
            env[node] = NodeRef(0)
            group[node] = node
            continue
        if node.op == "output":
            output = _resolve(env, node.args[0])
            continue
        if node.op == "get_attr":
            raise UnsupportedNetworkError(
                f"{where}{_module_context(node)} reads the tensor model.{node.target} inside forward; only modules "
                f"and functions on the input are supported ({SUPPORTED})"
            )
        value = _convert(
            builder, model, node, where, _resolve(env, node.args), _resolve(env, dict(node.kwargs))
        )
        env[node] = value
        operand = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        target = _inplace_target(node, model)
        alias = _alias_kind(node, model)
        if target is not None:
            _rebind(env, group, relation, order, node, target, value)
        elif alias is not None and operand is not None and isinstance(value, NodeRef):
            group[node] = group.get(operand, operand)
            relation[node] = "view" if "view" in (alias, relation.get(operand, "same")) else "same"
        else:
            group[node] = node
    if not isinstance(output, NodeRef):
        raise UnsupportedNetworkError("the network must return one tensor")
    if int(output) == 0:
        raise UnsupportedNetworkError("the network has no layers; give at least one Linear or Conv2d layer")
    return builder.build(int(output))


def _rebind(
    env: dict[torch.fx.Node, Any],
    group: dict[torch.fx.Node, torch.fx.Node],
    relation: dict[torch.fx.Node, str],
    order: dict[torch.fx.Node, int],
    node: torch.fx.Node,
    target: torch.fx.Node,
    value: Any,
) -> None:
    """After ``node`` changed ``target``'s tensor in place, every name for that tensor reads ``value``.

    Names of the same tensor (``relation`` "same" to the group's root, like the target) are
    rebound; a view of it, or the tensor a view target belongs to, read again later is refused.
    """
    root = group.get(target, target)
    target_same = relation.get(target, "same") == "same"
    for member in [n for n, g in group.items() if g is root]:
        if member is target or (target_same and relation.get(member, "same") == "same"):
            env[member] = value
            continue
        later = [user for user in member.users if order[user] > order[node]]
        if later:
            raise UnsupportedNetworkError(
                f"node {node.name!r} modifies a tensor in place that {member.name!r} (a view of it, or the tensor "
                f"it is a view of) reads again at {later[0].name!r}; the bound would be of another function — "
                "use the out-of-place operation (e.g. relu instead of relu_, inplace=False)"
            )
    group[node], relation[node] = root, relation.get(target, "same")


def _convert(
    builder: NetworkBuilder,
    model: nn.Module,
    node: torch.fx.Node,
    where: str,
    args: Any,
    kwargs: dict[str, Any],
) -> Any:
    target = node.target
    if node.op == "call_module":
        module = model.get_submodule(str(target))
        kind = type(module).__name__
        label = f"{where} (model.{target})"
        rule = module_rule(module)
        if rule is None:
            raise UnsupportedNetworkError(
                f"{label} ({kind}) is not supported: this module type has no bound propagation rule. The engine "
                f"accepts {SUPPORTED}."
            )
        _faithful(module, f"{label}")
        source = args[0] if args else None
        if not isinstance(source, NodeRef):
            raise UnsupportedNetworkError(
                f"{label} ({kind}): its input is not a tensor computed from the input"
            )
        return NodeRef(rule(builder, module, source, label, str(target)))
    label = f"{where} ({_function_name(target)}){_module_context(node)}"
    if node.op == "call_method":
        call_rule = METHODS.get(str(target).removesuffix("_") if str(target).endswith("_") else str(target))
    else:
        call_rule = FUNCTIONS.get(target)
    if call_rule is None:
        raise UnsupportedNetworkError(
            f"{label} is not supported: no bound propagation rule. The engine accepts {SUPPORTED}."
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    return call_rule(builder, tuple(args), kwargs, label, node.name)
