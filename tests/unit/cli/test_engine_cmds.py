"""``relaxlab bounds`` end to end on an ONNX file and a .npy/.pt input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from relaxlab.api import compute_bounds, get_relaxation
from relaxlab.cli import cli
from relaxlab.engine import margin_spec


@pytest.fixture
def onnx_model(tmp_path: Path) -> tuple[nn.Sequential, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 4),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return model, path


def test_bounds_json_matches_the_api(onnx_model: tuple[nn.Sequential, Path], tmp_path: Path) -> None:
    model, path = onnx_model
    x = np.random.default_rng(0).random((2, 4))
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(
        cli,
        [
            "bounds",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "x.npy"),
            "--eps",
            "0.1",
            "--relaxation",
            "crown ibp r",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    lb, ub = compute_bounds(model.double(), torch.tensor(x), 0.1, "CROWN-IBP (R)")
    assert payload["relaxation"] == "CROWN-IBP (R)"
    np.testing.assert_allclose([e["lower"] for e in payload["examples"]], lb.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose([e["upper"] for e in payload["examples"]], ub.detach().numpy(), atol=1e-6)


def test_bounds_margins_single_example(onnx_model: tuple[nn.Sequential, Path], tmp_path: Path) -> None:
    """A single unbatched example (.pt), margins against --label, certification reported."""
    model, path = onnx_model
    x = torch.rand(4, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    result = CliRunner().invoke(
        cli,
        [
            "bounds",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "x.pt"),
            "--eps",
            "0.001",
            "--relaxation",
            "IBP",
            "--spec",
            "margins",
            "--label",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    (example,) = json.loads(result.output)["examples"]
    lb, _ = compute_bounds(model.double(), x.unsqueeze(0), 0.001, "IBP", C=margin_spec(torch.tensor([1]), 3))
    assert example["label"] == 1 and example["others"] == [0, 2]
    np.testing.assert_allclose(example["lower"], lb[0].detach().numpy(), atol=1e-6)
    assert example["certified"] == bool((lb > 0).all())


def test_bounds_table_output(onnx_model: tuple[nn.Sequential, Path], tmp_path: Path) -> None:
    _, path = onnx_model
    np.save(tmp_path / "x.npy", np.zeros((1, 4)))
    result = CliRunner().invoke(
        cli,
        [
            "bounds",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "x.npy"),
            "--eps",
            "0.1",
            "--relaxation",
            "DeepZ",
            "--spec",
            "margins",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "certified:" in result.output and "lower" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "-1", "--relaxation", "IBP"], "eps must be >= 0"),
        (["--eps", "0.1", "--relaxation", "NoSuch"], "unknown relaxation"),
        (["--eps", "0.1", "--relaxation", "IBP", "--spec", "margins", "--label", "7"], "--label 7"),
    ],
)
def test_bounds_errors(
    onnx_model: tuple[nn.Sequential, Path], tmp_path: Path, args: list, message: str
) -> None:
    _, path = onnx_model
    np.save(tmp_path / "x.npy", np.zeros((1, 4)))
    result = CliRunner().invoke(
        cli, ["bounds", "--model", str(path), "--input", str(tmp_path / "x.npy"), *args]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_bounds_wrong_input_shape(onnx_model: tuple[nn.Sequential, Path], tmp_path: Path) -> None:
    _, path = onnx_model
    np.save(tmp_path / "x.npy", np.zeros((2, 5)))
    result = CliRunner().invoke(
        cli,
        [
            "bounds",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "x.npy"),
            "--eps",
            "0.1",
            "--relaxation",
            "IBP",
        ],
    )
    assert result.exit_code == 2 and "does not fit the model" in result.output


def test_bounds_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "m.h5").write_text("x")
    np.save(tmp_path / "x.npy", np.zeros((1, 4)))
    result = CliRunner().invoke(
        cli,
        [
            "bounds",
            "--model",
            str(tmp_path / "m.h5"),
            "--input",
            str(tmp_path / "x.npy"),
            "--eps",
            "0.1",
            "--relaxation",
            "IBP",
        ],
    )
    assert result.exit_code == 2 and "unknown file type" in result.output


@pytest.mark.parametrize(("gap", "expected"), [(1e-9, False), (1e-3, True)])
def test_bounds_and_certify_agree_on_margins_near_zero(tmp_path: Path, gap: float, expected: bool) -> None:
    """A margin of 1e-9 is positive but within the tolerance of zero: neither command may certify it."""
    from relaxlab.evaluation.certify import certify

    model = nn.Sequential(nn.Linear(2, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([gap, 0.0], dtype=torch.float64))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.float(),
            (torch.zeros(1, 2),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    model.double()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([gap, 0.0], dtype=torch.float64))  # exact in float64
    x = np.full((1, 2), 0.5)
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(
        cli,
        [
            "bounds",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "x.npy"),
            "--eps",
            "0",
            "-r",
            "IBP",
            "--spec",
            "margins",
            "--label",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)["examples"][0]
    assert record["lower"][0] > 0  # the bound itself is positive in both cases
    (certified,) = certify(
        model, torch.tensor(x), torch.tensor([0]), 0.0, [get_relaxation("IBP")], num_classes=2, pgd=False
    )
    assert record["certified"] is expected
    assert (certified.certified == 1.0) is expected


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0.1 + 1j, 0.2]]), "complex"),
        (np.array([["a", "b"]]), "strings"),
        (np.zeros((0, 4)), "empty"),
    ],
)
def test_inputs_that_are_not_real_points_are_refused_by_name(
    onnx_model: tuple[nn.Sequential, Path], tmp_path: Path, array: np.ndarray, message: str
) -> None:
    _, path = onnx_model
    np.save(tmp_path / "x.npy", array)
    result = CliRunner().invoke(
        cli, ["bounds", "--model", str(path), "--input", str(tmp_path / "x.npy"), "--eps", "0.1", "-r", "IBP"]
    )
    assert result.exit_code == 2 and message in result.output, result.output


def test_bounds_takes_lists_and_selectors_as_every_r_does(
    onnx_model: tuple[nn.Sequential, Path], tmp_path: Path
) -> None:
    """`bounds --help` says -r takes a comma list and 'paper': it does, one result per relaxation."""
    model, path = onnx_model
    x = np.random.default_rng(1).random((1, 4))
    np.save(tmp_path / "x.npy", x)
    args = ["bounds", "--model", str(path), "--input", str(tmp_path / "x.npy"), "--eps", "0.05"]
    result = CliRunner().invoke(cli, [*args, "-r", "paper", "--spec", "margins", "--json"])
    assert result.exit_code == 0, result.output
    payloads = json.loads(result.output)
    assert [p["relaxation"] for p in payloads] == ["IBP", "hBox", "DeepZ", "CROWN", "CROWN-IBP (R)"]
    for payload in payloads:
        label = payload["examples"][0]["label"]
        C = margin_spec(torch.tensor([label]), 3, dtype=torch.float64)
        lb, _ = compute_bounds(model.double(), torch.tensor(x), 0.05, payload["relaxation"], C=C)
        np.testing.assert_allclose(payload["examples"][0]["lower"], lb[0].detach().numpy(), atol=1e-6)
    table = CliRunner().invoke(cli, [*args, "-r", "IBP,CROWN", "--spec", "margins"])
    assert table.exit_code == 0 and "certified: " in table.output and " with CROWN " in table.output
