"""No value is accepted silently, and every refusal is one clear line (issue 27, items 10 and 12).

Each case is what a user could type; each was accepted (or crashed with a traceback, or was named
misleadingly) before: ``certify --n -5`` certified 995 images, ``lr = nan`` trained into a NaN
network, a malicious pickle was called "corrupt".
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from relaxlab.cli import cli
from relaxlab.training.checkpoint import CheckpointError, read_checkpoint

TINY = """
name = "tiny"
architecture = "FC-S"
epochs = 1
eps_train = 0.02
eps_test = 0.02
batch_size = 50
max_batches = 1
train_subset = 50
test_subset = 10
"""


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _one_line_refusal(result: Result, *words: str) -> None:
    """Exit status 2 (bad input), one line, no traceback, every word in it."""
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    for word in words:
        assert word in text, (word, text)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("tiny")
    (where / "tiny.toml").write_text(TINY)
    result = _invoke("train", str(where / "tiny.toml"), "--out", str(where / "tiny"), "-q")
    assert result.exit_code == 0, result.output
    return where / "tiny" / "checkpoint.pt"


def test_negative_image_counts_are_refused(checkpoint: Path) -> None:
    """The option's own range refuses them before any work: click's usage error, whose error line names both."""
    for command, extra, value in (("certify", ["--no-pgd"], "-5"), ("tightness", ["--points", "2"], "-1")):
        result = _invoke(command, str(checkpoint), "--n", value, "-q", *extra)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        error = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and "'--n'" in error[0] and value in error[0], result.output


@pytest.mark.parametrize("timeout", ["nan", "-5", "inf", "0"])
def test_export_timeouts_must_be_seconds(checkpoint: Path, tmp_path: Path, timeout: str) -> None:
    result = _invoke(
        "export",
        str(checkpoint),
        "--onnx",
        str(tmp_path / "m.onnx"),
        "--vnnlib",
        str(tmp_path / "v"),
        "--timeout",
        timeout,
    )
    _one_line_refusal(result, "--timeout", timeout)
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("lr = nan", ("lr must be a finite number > 0", "nan")),
        ("lr = inf", ("lr must be a finite number > 0",)),
        ("l1 = nan", ("l1 must be a finite number >= 0",)),
        ("seed = 18446744073709551616", ("seed must be an integer in",)),  # 2**64
        ("lr_schedule = 'milestones'\nlr_milestones = [-1]", ("lr_milestones must be", "[-1]")),
        ("lr_schedule = 'milestones'\nlr_milestones = ['3']", ("lr_milestones must be",)),
    ],
)
def test_train_refuses_values_it_cannot_train_with(
    tmp_path: Path, setting: str, words: tuple[str, ...]
) -> None:
    (tmp_path / "c.toml").write_text(TINY + setting + "\n")
    result = _invoke("train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "-q")
    _one_line_refusal(result, *words)
    assert not (tmp_path / "run").exists()


def test_gd_experiment_refuses_a_nan_learning_rate_by_its_name(tmp_path: Path) -> None:
    result = _invoke("gd-experiment", "--lr", "nan", "--epochs", "2", "--plot", str(tmp_path / "gd.png"))
    _one_line_refusal(result, "lr", "nan")
    assert "weight contains NaN" not in result.output


def test_bounds_of_an_overflowing_radius_say_so_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    from relaxlab.engine.export import export_onnx

    export_onnx(model, (3,), tmp_path / "net.onnx")
    np.save(tmp_path / "x.npy", np.zeros(3, dtype=np.float32))
    result = _invoke(
        "bounds",
        "--model",
        str(tmp_path / "net.onnx"),
        "--input",
        str(tmp_path / "x.npy"),
        "--eps",
        "1e308",
        "-r",
        "CROWN",
    )
    _one_line_refusal(result, "overflow")


@pytest.mark.parametrize("command", ["sweep", "screen"])
def test_files_that_are_not_utf8_are_refused_in_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "f.toml"
    path.write_bytes(b'name = "caf\xe9"\n[base]\nepochs = 1\n')  # Latin-1, not UTF-8
    result = _invoke(command, str(path), "--out", str(tmp_path / "out"))
    _one_line_refusal(result, "not UTF-8", str(path))


@pytest.mark.skipif(not Path("/proc/version").exists(), reason="needs /proc (Linux)")
def test_discover_refuses_a_plugin_path_it_cannot_write() -> None:
    result = _invoke("discover", "--family", "none", "--no-relations", "--emit-plugin", "/proc/x", "-q")
    _one_line_refusal(result, "--emit-plugin /proc/x", "cannot write")


class _Runs:
    """Pickled, it asks the loader to call ``os.system``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_malicious_pickle_is_called_unsafe_not_corrupt(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:  # a plain (legacy) pickle, as torch.save wrote before zip files
        pickle.dump({"format": "relaxlab-checkpoint", "model": _Runs()}, handle, protocol=protocol)
    with pytest.raises(CheckpointError, match="refused as unsafe") as error:
        read_checkpoint(path)
    assert "system" in str(error.value) and "corrupt" not in str(error.value)
    # a damaged but harmless file is still called corrupt
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=protocol)[:-3])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)
