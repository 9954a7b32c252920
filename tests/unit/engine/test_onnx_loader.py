"""ONNX loading: real files from ``torch.onnx.export`` and hand-built graphs (chains and DAGs); refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from relaxlab.api import compute_bounds
from relaxlab.engine import parse_model
from relaxlab.engine.onnx_loader import OnnxLoadError, load_onnx
from relaxlab.nn import Normalize


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
        )
    return path


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_exported_model_round_trips(kind: str, tmp_path: Path) -> None:
    """A network exported by torch.onnx.export loads with the same outputs and the same bounds."""
    torch.manual_seed(0)
    if kind == "dense":
        model = nn.Sequential(
            Normalize([0.5, 0.1, 0.0], [0.2, 0.5, 1.0]), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)
        ).eval()
        x = torch.rand(4, 3)
    else:
        model = nn.Sequential(
            Normalize([0.1307], [0.3081]),
            nn.Conv2d(1, 3, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 5 * 5, 10),
            nn.ReLU(),
            nn.Linear(10, 3),
        ).eval()
        x = torch.rand(2, 1, 11, 11)
    loaded = load_onnx(_export(model, x, tmp_path / "model.onnx"))
    assert isinstance(loaded, nn.Sequential)
    assert any(isinstance(m, Normalize) for m in loaded)
    torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=1e-6)
    for name in ("IBP", "CROWN"):
        expected = compute_bounds(model.double(), x.double(), 0.05, name)
        got = compute_bounds(loaded.double(), x.double(), 0.05, name)
        model.float()
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _save(nodes: list, initializers: list, path: Path, in_shape: list, out_shape: list) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_hand_built_graph(tmp_path: Path) -> None:
    """Sub/Div normalisation, Conv, Relu, Reshape to (batch, -1) from a Constant, MatMul + Add, Gemm(transB=0)."""
    rng = np.random.default_rng(0)
    mean, std = np.array([0.2, 0.4]), np.array([0.5, 2.0])
    conv_w, conv_b = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    w1, b1 = rng.normal(size=(3 * 2 * 2, 4)), rng.normal(size=4)
    w2, b2 = rng.normal(size=(4, 2)), rng.normal(size=2)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["a"]),
        helper.make_node("Div", ["a", "std"], ["b"]),
        helper.make_node(
            "Conv", ["b", "cw", "cb"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node(
            "Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1], np.int64))
        ),
        helper.make_node("Reshape", ["d", "shape"], ["e"]),
        helper.make_node("MatMul", ["e", "w1"], ["f"]),
        helper.make_node("Add", ["f", "b1"], ["g"]),
        helper.make_node("Relu", ["g"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], alpha=0.5, beta=2.0),
    ]
    inits = [
        _const("mean", mean.reshape(1, 2, 1, 1)),
        _const("std", std.reshape(1, 2, 1, 1)),
        _const("cw", conv_w),
        _const("cb", conv_b),
        _const("w1", w1),
        _const("b1", b1),
        _const("w2", w2),
        _const("b2", b2),
    ]
    loaded = load_onnx(_save(nodes, inits, tmp_path / "g.onnx", ["N", 2, 4, 4], ["N", 2]))
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    # The same computation written directly in torch (float32 weights, as stored in the file).
    f32 = lambda a: torch.tensor(np.asarray(a, np.float32), dtype=torch.float64)  # noqa: E731
    z = (x - f32(mean).reshape(1, 2, 1, 1)) / f32(std).reshape(1, 2, 1, 1)
    z = torch.relu(torch.nn.functional.conv2d(z, f32(conv_w), f32(conv_b), stride=2, padding=1)).flatten(1)
    z = torch.relu(z @ f32(w1) + f32(b1))
    expected = 0.5 * (z @ f32(w2)) + 2.0 * f32(b2)
    torch.testing.assert_close(loaded.double()(x), expected, atol=1e-6, rtol=1e-6)
    assert sum(isinstance(m, Normalize) for m in loaded) == 1  # Sub and Div merged


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (helper.make_node("Sigmoid", ["x"], ["y"]), r"ONNX node 0 \(Sigmoid\) is not supported"),
        (
            helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1], pads=[0, 0, 1, 1]),
            "asymmetric pads",
        ),
        (helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1], dilations=[2, 2]), "dilations"),
        (helper.make_node("Mul", ["x", "x"], ["y"]), "only Add and Concat join branches"),
    ],
)
def test_refusals_name_the_node(node: onnx.NodeProto, message: str, tmp_path: Path) -> None:
    inits = [_const("w", np.ones((2, 2, 1, 1)))] if node.op_type == "Conv" else []
    path = _save([node], inits, tmp_path / "bad.onnx", [1, 2, 3, 3], [1, 2, 3, 3])
    with pytest.raises(OnnxLoadError, match=message):
        load_onnx(path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(OnnxLoadError, match="cannot read ONNX file"):
        load_onnx(path)


def test_hand_built_dag(tmp_path: Path) -> None:
    """Gemm + bias Add, BatchNormalization on rank 2, a residual Add and a Concat, against numpy."""
    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=(8, 2))
    scale, shift, mean, var = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), 0.5 + rng.random(4)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("BatchNormalization", ["h1", "s", "t", "m", "v"], ["h2"], epsilon=1e-3),
        helper.make_node("Relu", ["h2"], ["a"]),
        helper.make_node("Add", ["a", "h1"], ["r"]),
        helper.make_node("Concat", ["r", "a"], ["c"], axis=1),
        helper.make_node("Gemm", ["c", "w2"], ["y"]),
    ]
    inits = [
        _const(k, v)
        for k, v in {"w1": w1, "b1": b1, "s": scale, "t": shift, "m": mean, "v": var, "w2": w2}.items()
    ]
    loaded = load_onnx(_save(nodes, inits, tmp_path / "dag.onnx", ["N", 3], ["N", 2])).double()
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    x = rng.normal(size=(5, 3))
    h1 = x @ f32(w1) + f32(b1)
    a = np.maximum((h1 - f32(mean)) / np.sqrt(f32(var) + 1e-3) * f32(scale) + f32(shift), 0)
    expected = np.concatenate([a + h1, a], axis=1) @ f32(w2)
    got = loaded(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9, rtol=1e-9)
    assert not parse_model(loaded, (3,)).is_chain


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (helper.make_node("Concat", ["x", "x"], ["y"], axis=2), "only Concat along axis 1"),
        (helper.make_node("Mul", ["x", "x"], ["y"]), "only Add and Concat join branches"),
        (helper.make_node("Sub", ["x", "x"], ["y"]), "only Add and Concat join branches"),
        (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1), "ceil_mode"),
        (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2]), r"\(MaxPool\) is not supported"),
    ],
)
def test_dag_refusals_name_the_node(node: onnx.NodeProto, message: str, tmp_path: Path) -> None:
    # An AveragePool/Concat anywhere sends the file to the DAG loader.
    extra = [helper.make_node("AveragePool", ["y"], ["z"], kernel_shape=[1, 1])]
    path = _save([node, *extra], [], tmp_path / "bad.onnx", [1, 2, 4, 4], [1, 2, 4, 4])
    with pytest.raises(OnnxLoadError, match=message):
        load_onnx(path)
