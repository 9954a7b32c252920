"""``relaxlab screen``: bad files exit 2, a tiny screen prints its table and files, failed runs exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from relaxlab.cli import cli

# 2 candidates x 1 seed + the natural run; FC-S, 1 epoch of 2 batches of 50
SCREEN = """
seeds = [0]

[candidates]
names = ["IBP", "hBox"]

[schedule]
architecture = "FC-S"
epochs = 1
rampup_epochs = 1
eps_train = 0.01
eps_test = 0.01
batch_size = 50
max_batches = 2
train_subset = 100
test_subset = 20

[certify]
n = 20

[tightness]
eps_max = 0.02
points = 2
n = 20
"""


def _write(tmp_path: Path, text: str = SCREEN) -> Path:
    path = tmp_path / "mini.toml"
    path.write_text(text)
    return path


def test_an_invalid_screen_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, SCREEN.replace("[certify]", "[certify]\nrelaxation = 'CROWN'"))
    result = CliRunner().invoke(cli, ["screen", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "[certify]: unknown key(s) 'relaxation'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing ran
    missing = CliRunner().invoke(cli, ["screen", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_device_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["screen", str(_write(tmp_path)), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device is available" in result.output


def test_a_tiny_screen_prints_the_table_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path)
    dry = CliRunner().invoke(cli, ["screen", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "screen mini: 2 candidates x 1 seeds + 1 natural run = 3 runs -> runs/mini" in dry.output
    assert "0/1" in dry.output and "hBox" in dry.output
    result = CliRunner().invoke(cli, ["screen", str(path), "--executor", "inprocess", "-q"])
    assert result.exit_code == 0, result.output
    for word in ("relaxation", "lines (neg | unst | pos)", "CR-AUC", "CR (%)", "time / run", "IBP", "hBox"):
        assert word in result.output
    assert "3 trained, 0 already done, 0 failed" in result.output
    out = tmp_path / "runs" / "mini"
    assert all(
        (out / name).is_file()
        for name in ("screen.md", "screen.csv", "screen.json", "screen.png", "genealogy.png")
    )
    again = CliRunner().invoke(cli, ["screen", str(path), "--executor", "inprocess", "-q"])
    assert again.exit_code == 0 and "0 trained, 3 already done" in again.output


def test_failed_runs_are_listed_and_exit_1(tmp_path: Path) -> None:
    """A dataset that is not there fails every run; each failure is recorded, the table still written."""
    path = _write(
        tmp_path, SCREEN.replace('architecture = "FC-S"', 'architecture = "FC-S"\ndataset = "mnist"')
    )
    empty = tmp_path / "no-data"
    empty.mkdir()
    result = CliRunner().invoke(
        cli,
        [
            "screen",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--data-dir",
            str(empty),
            "--executor",
            "inprocess",
            "-q",
        ],
    )
    assert result.exit_code == 1
    assert "0 trained, 0 already done, 3 failed" in result.output
    assert "DatasetNotFoundError" in result.output and "(1 failed)" in result.output
    assert (tmp_path / "out" / "screen.png").is_file() and (tmp_path / "out" / "genealogy.png").is_file()
