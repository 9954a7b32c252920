"""Load an ONNX model whose nodes form a DAG (residual ``Add``, ``Concat``) as a traceable module.

:func:`relaxlab.engine.onnx_loader.load_onnx` hands a graph here when it is not a chain. The
result is an :class:`OnnxGraph`: one torch module per ONNX layer node plus a fixed plan of
which value each step reads and writes; ``torch.fx`` traces it into the graph engine's ops.
Supported nodes:

- ``Gemm`` (``transA = 0``), ``MatMul`` with a constant weight: ``nn.Linear``; a following
  ``Add`` of a constant is merged into its bias when the product has no other consumer;
- ``Conv`` (2-d, symmetric pads, dilation 1, one group): ``nn.Conv2d``;
- ``BatchNormalization`` (inference form): ``nn.BatchNorm1d``/``BatchNorm2d`` in eval mode;
- ``AveragePool`` (2-d, symmetric pads, no ``ceil_mode``): ``nn.AvgPool2d``;
- ``Relu``; ``Flatten`` (``axis = 1``); ``Reshape`` to ``(batch, -1)``;
- ``Add`` of two computed tensors (a residual connection); ``Concat`` along ``axis = 1``;
- ``Sub``/``Div``/``Add``/``Mul`` by a per-channel constant: :class:`relaxlab.nn.Normalize`;
- ``Identity``, ``Dropout`` (inference): skipped; ``Constant`` nodes supply values.

Shapes: the ONNX input is ``(batch, *input_shape)``; ranks are tracked per value (2 after
``Gemm``/``Flatten``, unchanged by elementwise ops) to pick ``BatchNorm1d`` or ``BatchNorm2d``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from relaxlab.engine.onnx_loader import (
    OnnxLoadError,
    _attributes,
    _conv,
    _elementwise,
    _linear,
    _where,
)

#: A step of the plan: (kind, module key or "", input value names, output value name).
Step = tuple[str, str, tuple[str, ...], str]


class OnnxGraph(nn.Module):
    """A DAG of modules read from ONNX; ``forward`` runs the plan (``torch.fx`` unrolls it).

    :param layers: the layer modules by key.
    :param plan: steps ``(kind, key, inputs, output)``: ``kind`` is ``"module"`` (``layers[key]``
        on one input), ``"add"`` (two inputs), ``"cat"`` (along dimension 1) or ``"flatten"``.
    :param input_name: the ONNX input's name; ``output_name``: the graph output's name.
    """

    def __init__(
        self, layers: dict[str, nn.Module], plan: list[Step], input_name: str, output_name: str
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.plan = list(plan)
        self.input_name = input_name
        self.output_name = output_name

    def forward(self, x: Tensor) -> Tensor:
        values = {self.input_name: x}
        for kind, key, inputs, output in self.plan:
            if kind == "module":
                values[output] = self.layers[key](values[inputs[0]])
            elif kind == "add":
                values[output] = values[inputs[0]] + values[inputs[1]]
            elif kind == "cat":
                values[output] = torch.cat([values[name] for name in inputs], dim=1)
            else:  # flatten
                values[output] = torch.flatten(values[inputs[0]], 1)
        return values[self.output_name]


def _batch_norm(attrs: dict[str, Any], consts: list[np.ndarray], rank: int, where: str) -> nn.Module:
    if len(consts) != 4:
        raise OnnxLoadError(f"{where}: expects BatchNormalization(X, scale, B, mean, var) with constants")
    if int(attrs.get("training_mode", 0)):
        raise OnnxLoadError(f"{where}: training_mode=1 is not supported (export the model in eval mode)")
    scale, bias, mean, var = (np.array(c, dtype=np.float32).reshape(-1) for c in consts)
    kind = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    if rank not in (2, 3, 4):
        raise OnnxLoadError(f"{where}: BatchNormalization of rank-{rank} tensors is not supported")
    # ONNX stores epsilon as float32; its shortest decimal (1e-05) is the value the exporter was given.
    layer = kind(scale.size, eps=float(str(np.float32(attrs.get("epsilon", 1e-5)))))
    with torch.no_grad():
        for target, value in ((layer.weight, scale), (layer.bias, bias), (layer.running_mean, mean)):
            target.copy_(torch.from_numpy(value))
        layer.running_var.copy_(torch.from_numpy(var))
    return layer.eval()


def _avg_pool(attrs: dict[str, Any], where: str) -> nn.AvgPool2d:
    kernel = [int(k) for k in attrs.get("kernel_shape", [])]
    if len(kernel) != 2:
        raise OnnxLoadError(f"{where}: only 2-d average pooling is supported")
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise OnnxLoadError(f"{where}: asymmetric pads {pads} are not supported")
    if int(attrs.get("ceil_mode", 0)):
        raise OnnxLoadError(f"{where}: ceil_mode=1 is not supported")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)) not in ("NOTSET", "VALID"):
        raise OnnxLoadError(f"{where}: auto_pad={auto_pad!r} is not supported; export with explicit pads")
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    include = bool(int(attrs.get("count_include_pad", 0)))
    if not include and any(pads):
        raise OnnxLoadError(f"{where}: count_include_pad=0 with padding is not supported")
    return nn.AvgPool2d(tuple(kernel), tuple(strides), (pads[0], pads[1]), count_include_pad=True)  # type: ignore[arg-type]


def load_onnx_graph(model: Any) -> OnnxGraph:
    """Convert a parsed ONNX ``ModelProto`` whose nodes form a DAG into an :class:`OnnxGraph`.

    :raises OnnxLoadError: naming the node for unsupported operations or settings.
    """
    from onnx import numpy_helper

    graph = model.graph
    constants: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxLoadError("the ONNX graph must have exactly one (non-constant) input and one output")
    input_name = inputs[0].name
    rank = {input_name: len(inputs[0].type.tensor_type.shape.dim)}
    uses = Counter(name for node in graph.node for name in node.input)
    layers: dict[str, nn.Module] = {}
    plan: list[Step] = []
    alias: dict[str, str] = {}
    producer: dict[str, str] = {}  # value name -> layer key that computed it

    def data(name: str) -> str:
        return alias.get(name, name)

    for index, node in enumerate(graph.node):
        where = _where(index, node)
        attrs = _attributes(node)
        op = node.op_type
        if op == "Constant":
            value = attrs.get("value")
            if value is None:
                raise OnnxLoadError(f"{where}: only tensor-valued Constant nodes are supported")
            constants[node.output[0]] = numpy_helper.to_array(value)
            continue
        sources = [data(name) for name in node.input if name and name not in constants]
        consts = [constants[name] for name in node.input if name in constants]
        unknown = [name for name in sources if name not in rank]
        if unknown:
            raise OnnxLoadError(f"{where} reads {unknown}, which no earlier node computes")
        output = node.output[0]
        key = f"n{index}"
        if op == "Identity" and not sources and len(consts) == 1:  # a renamed constant
            constants[output] = consts[0]
            continue
        if op in ("Identity", "Dropout") and len(sources) == 1:
            alias[output] = sources[0]
            continue
        if op == "Add" and len(sources) == 2:
            plan.append(("add", "", tuple(sources), output))
            rank[output] = rank[sources[0]]
            continue
        if op == "Concat" and sources and not consts:
            if int(attrs.get("axis", 0)) != 1:
                raise OnnxLoadError(f"{where}: only Concat along axis 1 (channels) is supported")
            plan.append(("cat", "", tuple(sources), output))
            rank[output] = rank[sources[0]]
            continue
        if len(sources) != 1:
            raise OnnxLoadError(
                f"{where} reads {len(sources)} computed tensors {list(sources)}; only Add and Concat join branches"
            )
        source = sources[0]
        position = [data(name) for name in node.input].index(source)
        module: nn.Module
        if op == "Relu":
            module, rank[output] = nn.ReLU(), rank[source]
        elif op == "Flatten" or op == "Reshape":
            if op == "Flatten" and int(attrs.get("axis", 1)) != 1:
                raise OnnxLoadError(f"{where}: axis={attrs.get('axis')} (only axis=1 is supported)")
            if op == "Reshape":
                target = [int(v) for v in np.asarray(consts[0]).reshape(-1)] if len(consts) == 1 else []
                if len(target) != 2 or (target[1] != -1 and target[0] not in (-1, 0)):
                    raise OnnxLoadError(f"{where}: only flattening to (batch, -1) is supported")
            plan.append(("flatten", "", (source,), output))
            rank[output] = 2
            continue
        elif op == "Gemm":
            if int(attrs.get("transA", 0)) or len(consts) not in (1, 2) or position != 0:
                raise OnnxLoadError(f"{where}: expects Gemm(input, W[, b]) with constant W, b and transA=0")
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            weight = consts[0] if int(attrs.get("transB", 0)) else consts[0].T
            module = _linear(weight * alpha, consts[1] * beta if len(consts) == 2 else None)
            rank[output] = 2
        elif op == "MatMul":
            if len(consts) != 1 or position != 0 or consts[0].ndim != 2:
                raise OnnxLoadError(f"{where}: expects MatMul(input, W) with a constant 2-d W")
            module, rank[output] = _linear(consts[0].T, None), 2
        elif op == "Conv":
            module, rank[output] = _conv(attrs, consts, where), 4
        elif op == "BatchNormalization":
            module, rank[output] = _batch_norm(attrs, consts, rank[source], where), rank[source]
        elif op == "AveragePool":
            module, rank[output] = _avg_pool(attrs, where), 4
        elif op in ("Add", "Sub", "Mul", "Div"):
            previous: list[nn.Module] = []
            owner = layers.get(producer.get(source, ""))
            if op == "Add" and isinstance(owner, (nn.Linear, nn.Conv2d)) and uses[source] == 1:
                previous = [owner]  # a bias: merged into the layer that computed ``source``
            made = _elementwise(op, consts, previous, where, position)
            if not made:
                alias[output] = source
                continue
            module, rank[output] = made[0], rank[source]
        else:
            raise OnnxLoadError(
                f"{where} is not supported; the engine accepts Gemm, MatMul(+Add), Conv, BatchNormalization, "
                "AveragePool, Relu, Flatten, Reshape, Add of two branches, Concat and per-channel "
                "Sub/Div/Add/Mul normalisation"
            )
        layers[key] = module
        producer[output] = key
        plan.append(("module", key, (source,), output))
    output_name = data(graph.output[0].name)
    if output_name not in rank or output_name == input_name:
        raise OnnxLoadError(f"the graph output {graph.output[0].name!r} is not computed by any layer")
    network = OnnxGraph(layers, plan, input_name, output_name)
    network.eval()
    return network
