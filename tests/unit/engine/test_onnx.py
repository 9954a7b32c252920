"""The ONNX reader (engine/onnx.py, the op table's ONNX rules) against independent evaluations of the graph.

References: onnxruntime on the float32 graph (what verification tools run), and ONNX's own numpy
reference evaluator (``onnx.reference``) on a float64 copy of the graph. Every supported node type
is checked with the attribute combinations that change what it computes; every refused setting
has its test (one line naming the node); the VNN-COMP 2021 networks in ``shared/`` load, equal the
references and are bounded soundly; corrupted files give ``OnnxLoadError`` or a working network.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import relaxlab
from relaxlab.engine import parse_model
from relaxlab.engine.onnx import OnnxLoadError, OnnxModel, fuse_biases, load_onnx, onnx_input_shape, read_onnx
from relaxlab.engine.ops import Linear, Shift
from relaxlab.engine.optable import ONNX, ONNX_MAX_ELEMENTS

VNNCOMP = Path(__file__).resolve().parents[4] / "shared" / "vnncomp2021"
if not VNNCOMP.is_dir():  # a worktree beside the main checkout
    VNNCOMP = Path("/work/shared/vnncomp2021")
VNNCOMP_NETWORKS = sorted(VNNCOMP.glob("*/*.onnx"))
needs_shared = pytest.mark.skipif(
    not VNNCOMP_NETWORKS, reason="the VNN-COMP 2021 files are not on this machine"
)


# -- building graphs and evaluating them independently --------------------------------------------


def _init(name: str, value: object, dtype: object = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(
    nodes: list,
    inits: list,
    in_shape: list,
    opset: int = 17,
    elem: int = TensorProto.FLOAT,
    inputs: list | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", elem, in_shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _as_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64: float initializers, constants, casts and types widened."""
    model = copy.deepcopy(model)
    graph = model.graph
    for k, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[k].CopyFrom(_init(init.name, numpy_helper.to_array(init), np.float64))
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(_init(attribute.t.name, numpy_helper.to_array(attribute.t), np.float64))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
    return model


def _input_feed(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    initializers = {init.name for init in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
    return {value.name: x.reshape(dims)}


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime on one example ``x`` (float32 graph)."""
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, _input_feed(model, x.astype(np.float32)))[0]


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX's reference evaluator on the float64 copy of the graph, one example ``x``."""
    double = _as_double(model)
    return ReferenceEvaluator(double).run(None, _input_feed(double, x.astype(np.float64)))[0]


def _check_against_references(model: onnx.ModelProto, tmp_path: Path, examples: int = 3) -> OnnxModel:
    """Our float32 network equals onnxruntime (float32 rounding) and our float64 network the reference
    evaluator (1e-10), example by example."""
    loaded = load_onnx(_save(model, tmp_path / "m.onnx"))
    loaded64 = load_onnx(_save(_as_double(model), tmp_path / "m64.onnx"))
    assert all(t.dtype == torch.float64 for t in loaded64.network.tensors())
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(examples, *loaded.input_shape))
    ours32 = loaded(torch.from_numpy(xs).float()).detach().numpy()
    ours64 = loaded64(torch.from_numpy(xs)).detach().numpy()
    for k in range(examples):
        want32, want64 = _ort(model, xs[k]), _reference(model, xs[k])
        assert ours32[k].size == want32.size and ours64[k].size == want64.size
        scale = 1.0 + np.abs(want64).max()
        np.testing.assert_allclose(ours32[k].reshape(-1), want32.reshape(-1), rtol=0, atol=2e-5 * scale)
        np.testing.assert_allclose(ours64[k].reshape(-1), want64.reshape(-1), rtol=0, atol=1e-10 * scale)
    return loaded


def _rng_init(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return _init(name, np.random.default_rng(seed + hash(name) % 1000).normal(size=shape))


def _node(op: str, inputs: list[str], output: str = "y", **attributes: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"{op.lower()}0", **attributes)


# -- every supported node type, with the attributes that change what it computes -------------------


def _cases() -> list[object]:
    r = np.random.default_rng(1)
    c = lambda name, *shape: _init(name, r.normal(size=shape))  # noqa: E731
    i64 = lambda name, values: _init(name, values, np.int64)  # noqa: E731
    shape_chain = [  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch exports x.view(x.size(0), -1)
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["bu"]),
        helper.make_node("Concat", ["bu", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        _node("MatMul", ["flat", "w"]),
    ]
    cases = [
        # elementwise with constants of any broadcastable shape, either order
        ("sub-1x1x1x5-on-batched", [_node("Sub", ["x", "c"])], [c("c", 1, 1, 1, 5)], [1, 1, 1, 5]),
        ("sub-1x1x1x5-on-vector", [_node("Sub", ["x", "c"])], [c("c", 1, 1, 1, 5)], [5]),
        ("div-by-vector", [_node("Div", ["x", "c"])], [_init("c", [0.5, 2.0, -4.0, 1.5, 3.0])], [1, 1, 1, 5]),
        ("constant-minus-x", [_node("Sub", ["c", "x"])], [c("c", 1, 5)], [1, 5]),
        ("constant-plus-x", [_node("Add", ["c", "x"])], [c("c", 5)], ["N", 5]),
        ("constant-times-x", [_node("Mul", ["c", "x"])], [c("c", 3, 1, 1)], [1, 3, 2, 2]),
        ("x-times-scalar", [_node("Mul", ["x", "c"])], [_init("c", -2.5)], [1, 3, 2, 2]),
        ("add-per-position", [_node("Add", ["x", "c"])], [c("c", 3, 2, 2)], [1, 3, 2, 2]),
        ("neg", [_node("Neg", ["x"])], [], [1, 4]),
        ("relu", [_node("Relu", ["x"])], [], [1, 2, 3]),
        ("add-two-branches", [helper.make_node("Relu", ["x"], ["r"]), _node("Add", ["r", "x"])], [], [1, 4]),
        ("sub-two-branches", [helper.make_node("Relu", ["x"], ["r"]), _node("Sub", ["x", "r"])], [], [1, 4]),
        (
            "add-broadcast-branches",
            [
                helper.make_node("Flatten", ["x"], ["f"], axis=0),
                helper.make_node("Squeeze", ["f", "ax0"], ["s"]),
                _node("Add", ["f", "s"]),
            ],
            [i64("ax0", [0])],
            [1, 4],
        ),
        # products
        ("matmul-x-W", [_node("MatMul", ["x", "w"])], [c("w", 4, 3)], [1, 4]),
        ("matmul-x-vector", [_node("MatMul", ["x", "w"])], [c("w", 4)], [1, 4]),
        ("matmul-W-vector-input", [_node("MatMul", ["w", "x"])], [c("w", 3, 4)], [4]),
        ("matmul-W-x-3d", [_node("MatMul", ["w", "x"])], [c("w", 2, 3)], [1, 3, 4]),
        ("matmul-vector-x-3d", [_node("MatMul", ["w", "x"])], [c("w", 3)], [1, 3, 4]),
        ("matmul-x-W-on-3d", [_node("MatMul", ["x", "w"])], [c("w", 4, 2)], [1, 3, 4]),
        (
            "gemm-transB-alpha-beta",
            [_node("Gemm", ["x", "w", "b"], alpha=0.7, beta=-1.3, transB=1)],
            [c("w", 3, 4), c("b", 3)],
            [1, 4],
        ),
        ("gemm-transA", [_node("Gemm", ["x", "w"], transA=1)], [c("w", 1, 3)], [1, 4]),
        ("gemm-bias-matrix", [_node("Gemm", ["x", "w", "b"])], [c("w", 4, 3), c("b", 1, 3)], [1, 4]),
        (
            "gemm-constant-A",
            [_node("Gemm", ["w", "x", "b"], transB=1, alpha=2.0)],
            [c("w", 3, 4), c("b", 3, 1)],
            [1, 4],
        ),
        (
            "matmul-add-merged",
            [helper.make_node("MatMul", ["x", "w"], ["m"]), _node("Add", ["m", "b"])],
            [c("w", 4, 3), c("b", 3)],
            [1, 4],
        ),
        (
            "matmul-add-product-read-twice",
            [
                helper.make_node("MatMul", ["x", "w"], ["m"]),
                helper.make_node("Add", ["m", "b"], ["a"]),
                _node("Sub", ["a", "m"]),
            ],
            [c("w", 4, 3), c("b", 3)],
            [1, 4],
        ),
        # convolution, pooling, normalisation
        (
            "conv-symmetric-pads-stride",
            [_node("Conv", ["x", "w", "b"], pads=[1, 2, 1, 2], strides=[2, 1], kernel_shape=[3, 3])],
            [c("w", 4, 2, 3, 3), c("b", 4)],
            [1, 2, 6, 5],
        ),
        (
            "conv-asymmetric-pads",
            [_node("Conv", ["x", "w"], pads=[0, 1, 2, 0])],
            [c("w", 3, 2, 2, 3)],
            [1, 2, 5, 5],
        ),
        (
            "conv-groups",
            [_node("Conv", ["x", "w", "b"], group=2, pads=[1, 1, 1, 1])],
            [c("w", 4, 1, 3, 3), c("b", 4)],
            ["N", 2, 5, 5],
        ),
        (
            "conv-same-upper",
            [_node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])],
            [c("w", 2, 2, 4, 4)],
            [1, 2, 7, 6],
        ),
        (
            "conv-same-lower",
            [_node("Conv", ["x", "w"], auto_pad="SAME_LOWER")],
            [c("w", 2, 2, 2, 3)],
            [1, 2, 5, 5],
        ),
        ("conv-valid", [_node("Conv", ["x", "w"], auto_pad="VALID")], [c("w", 2, 2, 3, 3)], [1, 2, 5, 5]),
        (
            "conv-add-bias-merged",
            [helper.make_node("Conv", ["x", "w"], ["v"]), _node("Add", ["v", "b"])],
            [c("w", 3, 2, 3, 3), c("b", 1, 3, 1, 1)],
            [1, 2, 5, 5],
        ),
        (
            "average-pool",
            [_node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])],
            [],
            [1, 2, 6, 5],
        ),
        (
            "average-pool-pads-included",
            [_node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
            [],
            [1, 2, 5, 5],
        ),
        (
            "average-pool-asymmetric-included",
            [
                _node(
                    "AveragePool",
                    ["x"],
                    kernel_shape=[2, 2],
                    pads=[0, 1, 1, 0],
                    count_include_pad=1,
                    strides=[1, 2],
                )
            ],
            [],
            [1, 2, 5, 5],
        ),
        (
            "average-pool-valid",
            [_node("AveragePool", ["x"], kernel_shape=[2, 3], auto_pad="VALID")],
            [],
            [1, 1, 4, 5],
        ),
        (
            "average-pool-dilations-1",
            [_node("AveragePool", ["x"], kernel_shape=[2, 2], dilations=[1, 1])],
            [],
            [1, 1, 4, 4],
            19,
        ),
        ("global-average-pool", [_node("GlobalAveragePool", ["x"])], [], [1, 3, 4, 5]),
        ("max-pool", [_node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], [], [1, 2, 6, 6]),
        ("max-pool-overlapping", [_node("MaxPool", ["x"], kernel_shape=[3, 2])], [], [1, 2, 5, 4]),
        (
            "batch-norm-maps",
            [_node("BatchNormalization", ["x", "s", "t", "m", "v"], epsilon=1e-3)],
            [c("s", 3), c("t", 3), c("m", 3), _init("v", [0.5, 1.0, 2.0])],
            [1, 3, 2, 2],
        ),
        (
            "batch-norm-vector",
            [_node("BatchNormalization", ["x", "s", "t", "m", "v"], momentum=0.9)],
            [c("s", 4), c("t", 4), c("m", 4), _init("v", [0.5, 1.0, 2.0, 3.0])],
            [1, 4],
        ),
        # shapes
        ("flatten-axis-1", [_node("Flatten", ["x"])], [], [1, 2, 3, 2]),
        ("flatten-axis-0", [_node("Flatten", ["x"], axis=0)], [], [1, 2, 3]),
        ("flatten-axis-2", [_node("Flatten", ["x"], axis=2)], [], [1, 2, 3, 2]),
        ("flatten-axis-negative", [_node("Flatten", ["x"], axis=-1)], [], [1, 2, 3, 2]),
        (
            "reshape-constant",
            [helper.make_node("Reshape", ["x", "shape"], ["r"]), _node("MatMul", ["r", "w"])],
            [i64("shape", [1, -1]), c("w", 6, 2)],
            [1, 2, 3],
        ),
        ("reshape-zero-copies", [_node("Reshape", ["x", "shape"])], [i64("shape", [0, 3, -1])], [1, 2, 3, 2]),
        (
            "reshape-shape-chain",
            shape_chain,
            [i64("zero", 0), i64("ax0", [0]), i64("minus1", [-1]), c("w", 12, 2)],
            ["batch", 3, 4],
        ),
        ("transpose-keeping-batch", [_node("Transpose", ["x"], perm=[0, 2, 1])], [], [1, 3, 4]),
        ("transpose-moving-batch", [_node("Transpose", ["x"], perm=[2, 0, 1])], [], [1, 3, 4]),
        ("transpose-default", [_node("Transpose", ["x"])], [], [1, 3, 4]),
        ("squeeze-axes-input", [_node("Squeeze", ["x", "axes"])], [i64("axes", [2])], [1, 3, 1, 4]),
        ("squeeze-all", [_node("Squeeze", ["x"])], [], [1, 3, 1, 4]),
        ("squeeze-axes-attribute", [_node("Squeeze", ["x"], axes=[-2])], [], [1, 3, 1, 4], 11),
        ("unsqueeze-axes-input", [_node("Unsqueeze", ["x", "axes"])], [i64("axes", [0, -1])], [1, 3]),
        ("unsqueeze-axes-attribute", [_node("Unsqueeze", ["x"], axes=[1])], [], [1, 3], 11),
        ("identity", [helper.make_node("Identity", ["x"], ["i"]), _node("Relu", ["i"])], [], [1, 3]),
        (
            "dropout-inference",
            [helper.make_node("Dropout", ["x", "ratio"], ["d"]), _node("Relu", ["d"])],
            [_init("ratio", 0.5)],
            [1, 3],
            13,
        ),
        (
            "dropout-legacy",
            [helper.make_node("Dropout", ["x"], ["d"], ratio=0.3), _node("Relu", ["d"])],
            [],
            [1, 3],
            10,
        ),
        (
            "cast-to-float",
            [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT), _node("Relu", ["f"])],
            [],
            [1, 3],
        ),
        (
            "pad-constant",
            [_node("Pad", ["x", "pads", "value"])],
            [i64("pads", [0, 0, 1, 0, 0, 1, 2, 3]), _init("value", 0.5)],
            [1, 2, 3, 3],
        ),
        (
            "pad-axes",
            [_node("Pad", ["x", "pads", "", "axes"])],
            [i64("pads", [1, 0, 0, 2]), i64("axes", [1, 3])],
            [1, 2, 3, 3],
            18,
        ),
        ("pad-batch-axis", [_node("Pad", ["x", "pads"])], [i64("pads", [1, 0, 0, 1])], [1, 3]),
        ("pad-legacy", [_node("Pad", ["x"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=-1.0)], [], [1, 2, 3, 3], 9),
        (
            "concat-channels",
            [helper.make_node("Relu", ["x"], ["r"]), _node("Concat", ["x", "r"], axis=1)],
            [],
            [1, 2, 3, 3],
        ),
        (
            "concat-last",
            [helper.make_node("Neg", ["x"], ["n"]), _node("Concat", ["x", "n", "x"], axis=-1)],
            [],
            [1, 2, 3],
        ),
        (
            "concat-batch-axis",
            [helper.make_node("Neg", ["x"], ["n"]), _node("Concat", ["x", "n"], axis=0)],
            [],
            [1, 3],
        ),
        (
            "slice-steps-negative-bounds",
            [_node("Slice", ["x", "st", "en", "ax", "sp"])],
            [i64("st", [1, -4]), i64("en", [100, -1]), i64("ax", [1, 3]), i64("sp", [1, 2])],
            [1, 3, 2, 6],
        ),
        ("slice-legacy", [_node("Slice", ["x"], starts=[1], ends=[3], axes=[2])], [], [1, 2, 4], 9),
        ("gather-scalar", [_node("Gather", ["x", "i"], axis=1)], [i64("i", 2)], [1, 4, 3]),
        ("gather-progression", [_node("Gather", ["x", "i"], axis=-1)], [i64("i", [-5, -3, -1])], [1, 2, 5]),
        (
            "constant-node",
            [
                helper.make_node("Constant", [], ["k"], value=_init("k", [[1.0, -2.0, 3.0]])),
                _node("Mul", ["x", "k"]),
            ],
            [],
            [1, 3],
        ),
        (
            "constant-of-shape",
            [
                helper.make_node("Constant", [], ["s"], value_ints=[1, 3]),
                helper.make_node("ConstantOfShape", ["s"], ["k"], value=_init("v", [2.5])),
                _node("Add", ["x", "k"]),
            ],
            [],
            [1, 3],
        ),
        (
            "shape-slice-size",
            [
                helper.make_node("Shape", ["x"], ["s"], start=1, end=-1),
                helper.make_node("Size", ["x"], ["n0"]),
                helper.make_node("Unsqueeze", ["n0", "ax0"], ["n"]),
                helper.make_node("Concat", ["s", "one", "n"], ["t"], axis=0),
                helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
                helper.make_node("Slice", ["tf", "st", "en"], ["tf2"]),
                _node("Mul", ["x", "tf2"]),
            ],
            [i64("one", [1]), i64("st", [0]), i64("en", [2]), i64("ax0", [0])],
            [1, 3, 2],
        ),
        (
            "folded-constant-arithmetic",
            [
                helper.make_node("Div", ["a", "b"], ["q"]),
                helper.make_node("Sub", ["q", "one"], ["k"]),
                helper.make_node("Neg", ["k"], ["nk"]),
                helper.make_node("Relu", ["nk"], ["rk"]),
                helper.make_node("Transpose", ["w"], ["wt"]),
                helper.make_node("Gemm", ["wt", "wt"], ["ww"], transB=1),
                helper.make_node("MatMul", ["x", "ww"], ["m"]),
                _node("Add", ["m", "rk"]),
            ],
            [_init("a", [6.0, 7.0]), _init("b", 4.0), _init("one", 2.0), c("w", 2, 2)],
            [1, 2],
        ),
    ]
    return [pytest.param(*case[1:4], case[4] if len(case) > 4 else 17, id=case[0]) for case in cases]


@pytest.mark.parametrize(("nodes", "inits", "in_shape", "opset"), _cases())
def test_node_types_equal_the_references(
    nodes: list, inits: list, in_shape: list, opset: int, tmp_path: Path
) -> None:
    _check_against_references(_model(nodes, inits, in_shape, opset), tmp_path)


def test_every_rule_has_a_case() -> None:
    """Each node type of the table appears in a reference case (so none is untested)."""
    used = {node.op_type for p in _cases() for node in p.values[0]}
    assert set(ONNX) <= used, sorted(set(ONNX) - used)


def test_bias_merged_only_into_a_product_nothing_else_reads(tmp_path: Path) -> None:
    """Issue 27 item 3: a dead ``Add(y, 5)`` beside the graph output ``y`` is not merged into the Conv's bias;
    a bias Add is merged (one Linear with bias) where the product has no other reader."""
    rng = np.random.default_rng(0)
    dead = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "five"], ["z"])],
        [_init("w", rng.normal(size=(2, 1, 2, 2))), _init("five", 5.0)],
        [1, 1, 3, 3],
    )
    loaded = _check_against_references(dead, tmp_path)
    assert loaded.network.nodes[-1].op.bias is None
    merged = _model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), _node("Add", ["m", "b"])],
        [_init("w", rng.normal(size=(4, 3))), _init("b", rng.normal(size=3))],
        [1, 4],
    )
    network = load_onnx(_save(merged, tmp_path / "merged.onnx")).network
    assert [type(n.op) for n in network.nodes[1:]] == [Linear] and network.nodes[1].op.bias is not None
    twice = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            _node("Sub", ["a", "m"]),
        ],
        [_init("w", rng.normal(size=(4, 3))), _init("b", rng.normal(size=3))],
        [1, 4],
    )
    network = load_onnx(_save(twice, tmp_path / "twice.onnx")).network
    assert any(isinstance(n.op, Shift) for n in network.nodes)


def test_fuse_biases_chain_at_the_output() -> None:
    """Two shifts after a linear map, the last one the output, merge into one bias (same function)."""
    from relaxlab.engine.network import NetworkBuilder

    builder = NetworkBuilder((3,), dtype=torch.float64)
    first = builder.add("fc", Linear(torch.randn(2, 3, dtype=torch.float64), None, (3,), (2,)), (0,))
    second = builder.add("b1", Shift(torch.randn(2, dtype=torch.float64), (2,)), (first,))
    network = builder.build(
        builder.add("b2", Shift(torch.randn(1, 2, dtype=torch.float64)[0], (2,)), (second,))
    )
    fused = fuse_biases(network)
    assert len(fused.nodes) == 2
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fused.forward(x), network.forward(x), rtol=0, atol=1e-12)


# -- refusals: one line naming the node and the setting --------------------------------------------


def _refusals() -> list[object]:
    w = lambda *shape: _init("w", np.ones(shape))  # noqa: E731
    i64 = lambda name, values: _init(name, values, np.int64)  # noqa: E731
    cases = [
        (
            "unknown-op",
            [_node("Sigmoid", ["x"])],
            [],
            [1, 4],
            r"ONNX node 0 'sigmoid0' \(Sigmoid\) is not supported",
        ),
        (
            "unnamed-node",
            [helper.make_node("Sigmoid", ["x"], ["y"])],
            [],
            [1, 4],
            r"^ONNX node 0 \(Sigmoid, unnamed, writes 'y'\) is not supported",
        ),
        ("unknown-attribute", [_node("Relu", ["x"], alpha=0.1)], [], [1, 4], "attribute alpha not supported"),
        (
            "conv-dilations",
            [_node("Conv", ["x", "w"], dilations=[2, 2])],
            [w(2, 2, 2, 2)],
            [1, 2, 5, 5],
            r"dilations=\[2, 2\]",
        ),
        (
            "conv-pads-of-length-2",
            [_node("Conv", ["x", "w"], pads=[1, 1])],
            [w(2, 2, 2, 2)],
            [1, 2, 5, 5],
            r"pads=\[1, 1\]: 2-d maps take 4 pads",
        ),
        (
            "conv-negative-pads",
            [_node("Conv", ["x", "w"], pads=[-1, 0, 0, 0])],
            [w(2, 2, 2, 2)],
            [1, 2, 5, 5],
            "negative pads",
        ),
        (
            "conv-auto-pad-and-pads",
            [_node("Conv", ["x", "w"], pads=[1, 1, 1, 1], auto_pad="SAME_UPPER")],
            [w(2, 2, 3, 3)],
            [1, 2, 5, 5],
            "given together",
        ),
        (
            "conv-group-mismatch",
            [_node("Conv", ["x", "w"], group=3)],
            [w(2, 1, 2, 2)],
            [1, 2, 5, 5],
            "group=3",
        ),
        ("conv-1d", [_node("Conv", ["x", "w"])], [w(2, 2, 3)], [1, 2, 5], "only 2-d maps"),
        ("conv-3d-weight", [_node("Conv", ["x", "w"])], [w(2, 2, 3)], [1, 2, 5, 5], "only 2-d convolutions"),
        (
            "conv-kernel-shape-mismatch",
            [_node("Conv", ["x", "w"], kernel_shape=[3, 3])],
            [w(2, 2, 2, 2)],
            [1, 2, 5, 5],
            "differs from the weight",
        ),
        (
            "conv-computed-weight",
            [_node("Conv", ["x", "x"])],
            [],
            [1, 2, 5, 5],
            "weight .input 1. must be a constant",
        ),
        (
            "conv-bias-size",
            [_node("Conv", ["x", "w", "b"])],
            [w(2, 2, 2, 2), _init("b", np.ones(3))],
            [1, 2, 5, 5],
            r"bias of shape \(3,\)",
        ),
        (
            "conv-huge-pads",
            [_node("Conv", ["x", "w"], pads=[100000] * 4)],
            [w(2, 2, 2, 2)],
            [1, 2, 5, 5],
            f"more than the {ONNX_MAX_ELEMENTS}",
        ),
        (
            "average-pool-dilations",
            [_node("AveragePool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])],
            [],
            [1, 1, 6, 6],
            r"dilations=\[2, 2\]",
            19,
        ),
        (
            "average-pool-ceil-mode",
            [_node("AveragePool", ["x"], kernel_shape=[2, 2], ceil_mode=1)],
            [],
            [1, 1, 5, 5],
            "ceil_mode=1",
        ),
        (
            "average-pool-same",
            [_node("AveragePool", ["x"], kernel_shape=[2, 2], auto_pad="SAME_UPPER")],
            [],
            [1, 1, 5, 5],
            "auto_pad='SAME_UPPER' is not supported",
        ),
        (
            "average-pool-excluding-pads",
            [_node("AveragePool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])],
            [],
            [1, 1, 5, 5],
            "count_include_pad=0 with pads",
        ),
        ("average-pool-1d", [_node("AveragePool", ["x"], kernel_shape=[2])], [], [1, 1, 5], "4-d input"),
        (
            "max-pool-pads",
            [_node("MaxPool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])],
            [],
            [1, 1, 5, 5],
            "pads are not supported",
        ),
        (
            "max-pool-dilations",
            [_node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[1, 2])],
            [],
            [1, 1, 5, 5],
            "dilations",
        ),
        (
            "max-pool-ceil-mode",
            [_node("MaxPool", ["x"], kernel_shape=[2, 2], ceil_mode=1)],
            [],
            [1, 1, 5, 5],
            "ceil_mode=1",
        ),
        (
            "max-pool-same",
            [_node("MaxPool", ["x"], kernel_shape=[2, 2], auto_pad="SAME_LOWER")],
            [],
            [1, 1, 5, 5],
            "auto_pad='SAME_LOWER'",
        ),
        (
            "max-pool-window",
            [_node("MaxPool", ["x"], kernel_shape=[40, 40])],
            [],
            [1, 1, 40, 40],
            "a window of 1600 entries",
        ),
        (
            "max-pool-indices-read",
            [
                helper.make_node("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 2]),
                helper.make_node("Cast", ["idx"], ["y"], to=TensorProto.FLOAT),
            ],
            [],
            [1, 1, 4, 4],
            "output 1 of ONNX node 0",
        ),
        (
            "batch-norm-training",
            [_node("BatchNormalization", ["x", "s", "s", "s", "s"], training_mode=1)],
            [_init("s", np.ones(2))],
            [1, 2, 3, 3],
            "training mode",
        ),
        (
            "batch-norm-sizes",
            [_node("BatchNormalization", ["x", "s", "s", "s", "v"])],
            [_init("s", np.ones(2)), _init("v", np.ones(3))],
            [1, 2, 3, 3],
            "var has 3 entries for an input of 2",
        ),
        (
            "batch-norm-is-test-0",
            [_node("BatchNormalization", ["x", "s", "s", "s", "s"], is_test=0)],
            [_init("s", np.ones(2))],
            [1, 2, 3, 3],
            "training mode",
            6,
        ),
        (
            "batch-norm-spatial-0",
            [_node("BatchNormalization", ["x", "s", "s", "s", "s"], spatial=0)],
            [_init("s", np.ones(2))],
            [1, 2, 3, 3],
            "spatial=0",
            7,
        ),
        (
            "batch-norm-negative-var",
            [_node("BatchNormalization", ["x", "s", "s", "s", "v"])],
            [_init("s", np.ones(2)), _init("v", [-1.0, 1.0])],
            [1, 2, 3, 3],
            "NaN/inf",
        ),
        ("product-of-computed", [_node("Mul", ["x", "x"])], [], [1, 4], "product of two computed tensors"),
        (
            "matmul-of-computed",
            [_node("MatMul", ["x", "x"])],
            [],
            [1, 4, 4],
            "one operand must be a constant",
        ),
        (
            "gemm-of-computed",
            [helper.make_node("Relu", ["x"], ["r"]), _node("Gemm", ["x", "r"], transB=1)],
            [],
            [1, 4],
            "product of two computed tensors",
        ),
        ("constant-over-x", [_node("Div", ["c", "x"])], [_init("c", 1.0)], [1, 4], "not affine"),
        (
            "derived-constant-overflows",
            [_node("Gemm", ["x", "w"], alpha=1e30)],
            [_init("w", np.full((2, 2), 1e10))],
            [1, 2],
            r"its weight overflows torch.float32",
        ),
        ("divide-by-zero", [_node("Div", ["x", "c"])], [_init("c", [1.0, 0.0])], [1, 2], "divides by 0"),
        ("nan-weight", [_node("MatMul", ["x", "w"])], [_init("w", [[np.nan], [1.0]])], [1, 2], "NaN/inf"),
        (
            "broadcast-enlarges",
            [_node("Add", ["x", "c"])],
            [_init("c", np.ones((3, 1)))],
            [1, 4],
            "broadcasts the computed tensor",
        ),
        (
            "matmul-3d-constant",
            [_node("MatMul", ["x", "w"])],
            [w(2, 4, 3)],
            [1, 4],
            "only 1-d and 2-d constants",
        ),
        ("matmul-sizes", [_node("MatMul", ["x", "w"])], [w(5, 3)], [1, 4], "by a matrix with 5 rows"),
        (
            "pad-reflect",
            [_node("Pad", ["x", "p"], mode="reflect")],
            [i64("p", [0, 1, 0, 1])],
            [1, 4],
            "mode='reflect'",
        ),
        ("pad-negative", [_node("Pad", ["x", "p"])], [i64("p", [0, -1, 0, 0])], [1, 4], "negative pads"),
        (
            "pad-huge",
            [_node("Pad", ["x", "p"])],
            [i64("p", [0, 0, 100000, 100000, 0, 0, 100000, 100000])],
            [1, 1, 28, 28],
            f"more than the {ONNX_MAX_ELEMENTS}",
        ),
        ("reshape-impossible", [_node("Reshape", ["x", "s"])], [i64("s", [1, 5])], [1, 4], "cannot reshape"),
        ("reshape-computed-shape", [_node("Reshape", ["x", "x"])], [], [1, 4], "must be a constant"),
        (
            "dropout-training",
            [_node("Dropout", ["x", "r", "t"])],
            [_init("r", 0.5), _init("t", True, np.bool_)],
            [1, 4],
            "training_mode is not a constant false",
            13,
        ),
        (
            "dropout-mask-read",
            [
                helper.make_node("Dropout", ["x"], ["d", "mask"]),
                helper.make_node("Cast", ["mask"], ["y"], to=TensorProto.FLOAT),
            ],
            [],
            [1, 4],
            "output 1 of ONNX node 0",
        ),
        ("cast-to-int", [_node("Cast", ["x"], to=TensorProto.INT64)], [], [1, 4], "not affine"),
        (
            "gather-shuffle",
            [_node("Gather", ["x", "i"], axis=1)],
            [i64("i", [2, 0])],
            [1, 4],
            "evenly spaced",
        ),
        (
            "gather-out-of-range",
            [_node("Gather", ["x", "i"], axis=1)],
            [i64("i", [4])],
            [1, 4],
            "out of range",
        ),
        (
            "slice-negative-step",
            [_node("Slice", ["x", "s", "e", "a", "p"])],
            [i64("s", [3]), i64("e", [0]), i64("a", [1]), i64("p", [-1])],
            [1, 4],
            "only positive steps",
        ),
        (
            "slice-empty",
            [_node("Slice", ["x", "s", "e"])],
            [i64("s", [0, 2]), i64("e", [1, 2])],
            [1, 4],
            "is empty",
        ),
        (
            "concat-constant-and-computed",
            [_node("Concat", ["x", "c"], axis=1)],
            [_init("c", np.ones((1, 2)))],
            [1, 4],
            "concatenates constants with computed",
        ),
        ("transpose-bad-perm", [_node("Transpose", ["x"], perm=[0, 0])], [], [1, 4], "is not a permutation"),
        ("squeeze-not-1", [_node("Squeeze", ["x", "a"])], [i64("a", [1])], [1, 4], "dimensions of size 1"),
        (
            "constant-of-shape-huge",
            [helper.make_node("ConstantOfShape", ["s"], ["k"]), _node("Add", ["x", "k"])],
            [i64("s", [100000, 100000])],
            [1, 4],
            f"more than the {ONNX_MAX_ELEMENTS}",
        ),
        (
            "constant-string",
            [helper.make_node("Constant", [], ["k"], value_string="a"), _node("Add", ["x", "k"])],
            [],
            [1, 4],
            "attribute value_string not supported",
        ),
        ("missing-input", [_node("Flatten", [""])], [], [1, 4], "has no input"),
        (
            "other-domain",
            [helper.make_node("Relu", ["x"], ["y"], name="r", domain="com.microsoft")],
            [],
            [1, 4],
            "domain 'com.microsoft'",
        ),
    ]
    return [pytest.param(*case[1:5], case[5] if len(case) > 5 else 17, id=case[0]) for case in cases]


@pytest.mark.parametrize(("nodes", "inits", "in_shape", "message", "opset"), _refusals())
def test_refusals_name_the_node(
    nodes: list, inits: list, in_shape: list, message: str, opset: int, tmp_path: Path
) -> None:
    path = _save(_model(nodes, inits, in_shape, opset), tmp_path / "bad.onnx")
    with pytest.raises(OnnxLoadError, match=message) as error:
        load_onnx(path)
    text = str(error.value)
    assert "\n" not in text, text
    named = [
        f"ONNX node {index} '{node.name}' ({node.op_type})"
        if node.name
        else f"ONNX node {index} ({node.op_type}, unnamed, writes '{node.output[0]}')"
        for index, node in enumerate(nodes)
    ]
    assert any(text.startswith(f"{name}:") or text.startswith(f"{name} ") for name in named), text


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]),
            ],
            "exactly one .non-constant. input",
        ),
        ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "K"])], r"shape \[None, None\]"),
        ([helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4])], "element type 7"),
        ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [])], "is a scalar"),
        ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100000, 100000])], "more than the"),
    ],
)
def test_graph_input_refusals(inputs: list, message: str, tmp_path: Path) -> None:
    path = _save(_model([_node("Relu", ["x"])], [], [], inputs=inputs), tmp_path / "bad.onnx")
    with pytest.raises(OnnxLoadError, match=message):
        load_onnx(path)


def test_graph_level_refusals(tmp_path: Path) -> None:
    constant_out = _model([_node("Add", ["c", "c"])], [_init("c", 1.0)], [1, 4])
    with pytest.raises(OnnxLoadError, match="does not depend on the input"):
        load_onnx(_save(constant_out, tmp_path / "c.onnx"))
    undefined = _model([_node("Add", ["x", "nowhere"])], [], [1, 4])
    with pytest.raises(OnnxLoadError, match="reads 'nowhere', which no earlier node computes"):
        load_onnx(_save(undefined, tmp_path / "u.onnx"))
    identity = _model([_node("Identity", ["x"])], [], [1, 4])
    with pytest.raises(OnnxLoadError, match="no layers"):
        load_onnx(_save(identity, tmp_path / "i.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(OnnxLoadError, match="cannot read ONNX file"):
        load_onnx(junk)
    with pytest.raises(OnnxLoadError, match="cannot read ONNX file"):
        load_onnx(tmp_path / "missing.onnx")


def test_dead_unsupported_nodes_are_not_read(tmp_path: Path) -> None:
    """Nodes the output does not depend on are never read (a dead Sigmoid is no reason to refuse)."""
    model = _model([_node("Relu", ["x"]), helper.make_node("Sigmoid", ["x"], ["dead"])], [], [1, 4])
    _check_against_references(model, tmp_path)


# -- the module: dtype, device, parse without tracing ----------------------------------------------


def test_module_casts_and_is_read_without_tracing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = _model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), _node("Relu", ["h"])],
        [_init("w", rng.normal(size=(3, 4))), _init("b", rng.normal(size=3))],
        ["N", 4],
    )
    loaded = load_onnx(_save(model, tmp_path / "m.onnx"))
    assert loaded.input_shape == (4,) and loaded.output_shape == (3,) and not list(loaded.parameters())
    network = parse_model(loaded, (4,))
    assert network.nodes[1].op.weight is loaded.node1_weight  # the module's buffer itself: nothing traced
    double = copy.deepcopy(loaded).double()
    assert all(t.dtype == torch.float64 for t in double.network.tensors())
    assert all(t.dtype == torch.float32 for t in loaded.network.tensors())
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(double(x), loaded.to(torch.float64)(x), rtol=0, atol=0)
    state = {k: v.clone() * 0 for k, v in loaded.state_dict().items()}
    assert torch.equal(
        torch.func.functional_call(loaded, state, (x,)), torch.zeros(3, 3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match=r"takes inputs of shape \(batch, 4\)"):
        loaded(torch.zeros(2, 5, dtype=torch.float64))
    lb, ub = relaxlab.compute_bounds(double, x, 0.1, "CROWN")  # the float64 replay and centre check pass
    assert bool((lb <= double(x)).all() and (double(x) <= ub).all())


def test_casts_start_from_the_float64_constants(tmp_path: Path) -> None:
    """BatchNorm's scale and a merged bias are derived in float64: a float32 module cast to float64 (even after
    casting back and forth) computes what the float64 file computes, not float32-rounded constants."""
    rng = np.random.default_rng(3)
    model = _model(
        [
            helper.make_node("BatchNormalization", ["x", "s", "t", "m", "v"], ["h"], epsilon=1e-3),
            helper.make_node("Flatten", ["h"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["g"]),
            _node("Add", ["g", "b"]),
        ],
        [
            _init("s", rng.normal(size=2)),
            _init("t", rng.normal(size=2)),
            _init("m", rng.normal(size=2)),
            _init("v", [0.3, 0.7]),
            _init("w", rng.normal(size=(8, 3))),
            _init("b", rng.normal(size=3)),
        ],
        [1, 2, 2, 2],
    )
    loaded = load_onnx(_save(model, tmp_path / "m.onnx"))
    exact = load_onnx(_save(_as_double(model), tmp_path / "m64.onnx"))
    assert all(t.dtype == torch.float32 for t in loaded.network.tensors())
    twice = copy.deepcopy(loaded).double().float().to(torch.float64)
    for a, b in zip(twice.network.tensors(), exact.network.tensors(), strict=True):
        assert torch.equal(a, b)
    network = read_onnx(tmp_path / "m.onnx", dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(network.tensors(), exact.network.tensors(), strict=True))


# -- the VNN-COMP 2021 networks in shared/ ---------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("path", VNNCOMP_NETWORKS, ids=lambda p: p.name)
def test_vnncomp_networks_equal_the_references(path: Path) -> None:
    model = onnx.load(str(path))
    loaded = load_onnx(path)
    assert loaded.input_shape == onnx_input_shape(path)
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1.0, 1.0, size=(20, *loaded.input_shape))
    ours32 = loaded(torch.from_numpy(xs).float()).detach().numpy()
    ours64 = copy.deepcopy(loaded).double()(torch.from_numpy(xs)).detach().numpy()
    session = onnxruntime.InferenceSession(
        _as_double(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for k in range(len(xs)):
        want32 = _ort(model, xs[k]).reshape(-1)
        want64 = session.run(None, _input_feed(model, xs[k]))[0].reshape(-1)
        scale = 1.0 + np.abs(want64).max()
        np.testing.assert_allclose(ours32[k].reshape(-1), want32, rtol=0, atol=1e-6 * scale)
        np.testing.assert_allclose(ours64[k].reshape(-1), want64, rtol=0, atol=1e-12 * scale)


@needs_shared
@pytest.mark.parametrize("path", VNNCOMP_NETWORKS, ids=lambda p: p.name)
@pytest.mark.parametrize("relaxation", ["IBP", "CROWN"])
def test_vnncomp_bounds_contain_samples(path: Path, relaxation: str) -> None:
    """Sampled (not exhaustive): onnxruntime's outputs at points of the box lie inside the bounds."""
    model = _as_double(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    loaded = load_onnx(path).double()
    rng = np.random.default_rng(1)
    centre = torch.from_numpy(rng.uniform(0.0, 1.0, size=(1, *loaded.input_shape)))
    eps = 0.02
    lb, ub = relaxlab.compute_bounds(loaded, centre, eps, relaxation)
    points = centre.numpy() + rng.uniform(-eps, eps, size=(300, *loaded.input_shape))
    points[:20] = centre.numpy() + eps * rng.choice([-1.0, 1.0], size=(20, *loaded.input_shape))  # vertices
    outputs = np.stack([session.run(None, _input_feed(model, p))[0].reshape(-1) for p in points])
    tolerance = 1e-9 * (1.0 + np.abs(outputs).max())
    assert (outputs >= lb.numpy() - tolerance).all() and (outputs <= ub.numpy() + tolerance).all()


@needs_shared
def test_acasxu_reads_as_exported() -> None:
    """MATLAB's ACAS Xu: Sub by a (1, 1, 1, 5) constant, Flatten, MatMul + Add: the bias Adds merged."""
    network = read_onnx(VNNCOMP / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert network.input_shape == (1, 1, 5) and network.output_shape == (5,)
    linear = [n.op for n in network.nodes if isinstance(n.op, Linear)]
    assert len(linear) == 7 and all(op.bias is not None for op in linear)


# -- corrupted files: OnnxLoadError or a working network, never a traceback ------------------------


def _outcome(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flipped.onnx"
        path.write_bytes(data)
        try:
            loaded = load_onnx(path)
        except OnnxLoadError as error:
            assert "\n" not in str(error)
            return
    out = loaded(torch.zeros(2, *loaded.input_shape, dtype=torch.float32))
    assert out.shape == (2, *loaded.output_shape)


@needs_shared
@given(
    index=st.integers(0, max(len(VNNCOMP_NETWORKS) - 1, 0)),
    flips=st.lists(
        st.tuples(
            st.floats(0.0, 1.0, exclude_max=True),
            st.sampled_from(["start", "end", "any"]),
            st.integers(1, 255),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_bit_flipped_files_load_or_are_refused(index: int, flips: list[tuple[float, str, int]]) -> None:
    data = bytearray(VNNCOMP_NETWORKS[index].read_bytes())
    for fraction, region, mask in flips:
        window = min(len(data), 2048)
        offset = {"start": 0, "end": len(data) - window, "any": 0}[region]
        span = window if region != "any" else len(data)
        data[offset + int(fraction * span)] ^= mask
    _outcome(bytes(data))


@needs_shared
@pytest.mark.parametrize("name", ["test_nano.onnx", "test_tiny.onnx"])
def test_every_byte_of_small_files_corrupted(name: str) -> None:
    data = (VNNCOMP / "test" / name).read_bytes()
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= (0x01, 0x80, 0xFF)[position % 3]
        _outcome(bytes(flipped))
