"""``relaxlab table10``: certifies into a record, prints the matrix beside the paper's, refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from relaxlab.cli import cli
from relaxlab.data.readers import write_idx
from relaxlab.experiments.table10 import load_record


@pytest.fixture
def mnist_dir(tmp_path: Path, embedded_test: tuple[torch.Tensor, torch.Tensor]) -> Path:
    """IDX files of the first 200 MNIST test images, as the full set's files are named."""
    x, y = embedded_test
    directory = tmp_path / "mnist"
    directory.mkdir()
    write_idx(directory / "t10k-images-idx3-ubyte", (x[:200, 0] * 255).round().to(torch.uint8).numpy())
    write_idx(directory / "t10k-labels-idx1-ubyte", y[:200].to(torch.uint8).numpy())
    return directory


def test_table10_certifies_prints_and_shows(mnist_dir: Path, released_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "table10.json"  # the record's name in --out
    args = [
        "table10",
        "--out",
        str(tmp_path),
        "--n",
        "200",
        "--net",
        "mnist_FC_box",
        "--net",
        "mnist_CONV_zono",
        "-r",
        "IBP",
        "--networks",
        str(released_dir),
        "--data-dir",
        str(mnist_dir),
        "--threads",
        "1",
        "-q",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = load_record(out)
    assert {key: cell.done for key, cell in record.cells.items()} == {
        ("mnist_FC_box", "IBP"): 200,
        ("mnist_CONV_zono", "IBP"): 200,
    }
    box = f"{record.certified_percent('mnist_FC_box', 'IBP', 200):.2f} (74)"
    assert "on the first 200 MNIST test images" in result.output and box in result.output
    assert "2 cells recorded in" in result.output

    shown = CliRunner().invoke(
        cli, ["table10", "--out", str(tmp_path), "--n", "200", "-r", "IBP,DeepZ", "--show", "--wide"]
    )
    assert shown.exit_code == 0, shown.output
    rows = [line.split() for line in shown.output.splitlines() if line.startswith(("FC ", "CONV "))]
    assert len(rows) == 12
    assert rows[0][:2] == ["FC", "IBP"] and rows[0][4:6] == box.split() and rows[0][6:] == ["—", "(3.7)"]
    assert rows[1][4:] == ["—", "(57)", "—", "(2.4)"]
    assert "— (0.4)" not in shown.output  # the DeepZ-trained CONV's IBP cell is recorded


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--net", "mnist_FC_boxx"], "'mnist_FC_boxx' is not one of the paper's released networks"),
        (["-r", "IBPP"], "IBPP"),
        (["--eps", "2"], "--eps"),
    ],
)
def test_bad_input_is_one_line_with_status_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["table10", "--out", str(tmp_path), "--show", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_file_that_is_no_record_or_missing_networks_are_refused(mnist_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "table10.json").write_text(json.dumps({"format": "something else"}))
    result = CliRunner().invoke(cli, ["table10", "--out", str(other), "--show"])
    assert result.exit_code == 2 and "not a relaxlab Table 10 record" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(
        cli,
        [
            "table10",
            "--out",
            str(tmp_path),
            "--networks",
            str(empty),
            "--data-dir",
            str(mnist_dir),
            "--n",
            "100",
            "-q",
        ],
    )
    assert result.exit_code == 2 and "the paper's released networks are not in" in result.output, (
        result.output
    )
    assert len(result.output.strip().splitlines()) == 1
