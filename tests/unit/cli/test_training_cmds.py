"""What the training-side commands tell the user: where results went, what a half-done run is, how to resume."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaxlab.cli import cli
from relaxlab.cli.progress import interruptible
from tests.e2e.test_training_e2e import TINY_TOML  # FC-S, IBP, 2 epochs of 3 steps


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmds")
    (root / "c.toml").write_text(TINY_TOML)
    result = CliRunner().invoke(
        cli, ["train", str(root / "c.toml"), "--out", str(root / "runs" / "cli-ibp"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert f"run 1 in {root / 'runs' / 'results.sqlite'}" in result.output  # train says where it recorded
    return root / "runs" / "cli-ibp"


def test_certify_says_which_store_it_writes_to(run: Path) -> None:
    result = CliRunner().invoke(cli, ["certify", str(run / "checkpoint.pt"), "--n", "10", "--no-pgd", "-q"])
    assert result.exit_code == 0, result.output
    store = run.parent / "results.sqlite"
    assert (
        f"recorded 1 certification in the results store {store} (tables: relaxlab report --store {store})"
        in result.output
    )


def test_report_writes_into_the_out_directory_and_refuses_a_file_name(run: Path, tmp_path: Path) -> None:
    store = str(run.parent / "results.sqlite")
    result = CliRunner().invoke(cli, ["report", "--store", store, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and (tmp_path / "r" / "report.md").read_text().startswith(
        "# relaxlab results"
    )
    result = CliRunner().invoke(
        cli, ["report", "--store", store, "--format", "csv", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0 and (tmp_path / "r" / "report.csv").is_file()
    old = CliRunner().invoke(cli, ["report", "--store", store, "--out", str(tmp_path / "report.md")])
    assert (
        old.exit_code == 2
        and f"give --out {tmp_path}" in old.output
        and not (tmp_path / "report.md").exists()
    )


def test_landscape_says_the_file_it_wrote(run: Path, tmp_path: Path) -> None:
    """``--plot adir`` writes adir.png (and adir.csv) and says so, not ``adir``."""
    args = [
        "landscape",
        str(run / "checkpoint.pt"),
        "-r",
        "IBP,CROWN",
        "--eps",
        "0.05",
        "--points",
        "4",
        "-q",
    ]
    result = CliRunner().invoke(cli, [*args, "--plot", str(tmp_path / "adir")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'adir.png'} and {tmp_path / 'adir.csv'}" in result.output
    assert (tmp_path / "adir.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "adir").exists()
    for old, new in (("--out", "--plot"), ("--output", "--neuron")):
        refused = CliRunner().invoke(cli, [*args, old, "3"])
        assert refused.exit_code == 2 and new in refused.output


def test_a_half_trained_sweep_run_shows_as_such(tmp_path: Path) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text(
        'name = "s"\nseeds = [0]\n[base]\narchitecture = "FC-S"\nepochs = 3\nbatch_size = 50\n'
        'max_batches = 1\ntrain_subset = 50\ntest_subset = 10\n[grid]\nrelaxation = ["IBP", "hBox"]\n'
    )
    out = tmp_path / "out"
    from relaxlab.experiments.executors import InProcessExecutor
    from relaxlab.experiments.sweep import load_sweep, run_sweep
    from relaxlab.training.config import from_dict
    from relaxlab.training.trainer import train

    plan = load_sweep(sweep)
    run_sweep(plan, out, InProcessExecutor(), write=lambda _line: None)  # both done ...
    first, second = plan.runs
    (out / "results.sqlite").unlink()  # ... then forget the second: its checkpoint says how far it got
    import shutil

    shutil.rmtree(out / second.key)
    train(from_dict(second.config.to_dict()), out / second.key, stop_after=2)
    result = CliRunner().invoke(cli, ["sweep", str(sweep), "--out", str(out), "--dry-run", "--wide"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[3:]}
    assert "interrupted after epoch 2/3 (resumes)" in lines[second.key]
    assert "trained, not recorded (resumes: certifies and records it)" in lines[first.key]


def test_interrupting_says_how_to_resume() -> None:
    stream = io.StringIO()
    with pytest.raises(SystemExit) as stop, interruptible("rerun the same command", stream=stream):
        raise KeyboardInterrupt
    assert stop.value.code == 130 and stream.getvalue() == "\ninterrupted (Ctrl-C): rerun the same command\n"
    stream = io.StringIO()
    with pytest.raises(SystemExit) as stop, interruptible("rerun the same command", stream=stream):
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.value.code == 143 and "terminated (SIGTERM): rerun the same command" in stream.getvalue()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_export_writes_instances_relative_to_their_folder(run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(run / "checkpoint.pt"),
            "--onnx",
            str(tmp_path / "b" / "m.onnx"),
            "--vnnlib",
            str(tmp_path / "b" / "props"),
            "--n",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "b" / "props" / "instances.csv").read_text().splitlines()
    assert lines == ["../m.onnx,prop_0.vnnlib,60", "../m.onnx,prop_1.vnnlib,60"]
    moved = tmp_path / "moved"
    (tmp_path / "b").rename(moved)  # the folder moves as a whole; every path still resolves
    for line in lines:
        onnx, vnnlib, _ = line.split(",")
        assert (moved / "props" / onnx).is_file() and (moved / "props" / vnnlib).is_file()
    bad = CliRunner().invoke(
        cli, ["export", str(run / "checkpoint.pt"), "--onnx", str(tmp_path / "x.onnx"), "--timeout", "nan"]
    )
    assert bad.exit_code == 2 and "--timeout must be" in bad.output


def test_sweep_takes_data_dir_as_every_data_command_does(tmp_path: Path) -> None:
    """The message of a run whose data is missing says "--data-dir": sweep takes it, into every run's config."""
    from relaxlab.experiments.sweep import load_sweep

    sweep = tmp_path / "s.toml"
    sweep.write_text(
        'name = "s"\n[base]\narchitecture = "FC-S"\nepochs = 1\n[grid]\nrelaxation = ["IBP", "hBox"]\n'
    )
    assert {run.config.data_dir for run in load_sweep(sweep, data_dir="/data/mnist").runs} == {"/data/mnist"}
    plain = CliRunner().invoke(cli, ["sweep", str(sweep), "--out", str(tmp_path / "o"), "--dry-run"])
    moved = CliRunner().invoke(
        cli, ["sweep", str(sweep), "--out", str(tmp_path / "o"), "--dry-run", "--data-dir", str(tmp_path)]
    )
    assert plain.exit_code == moved.exit_code == 0
    assert plain.output.splitlines()[3:] != moved.output.splitlines()[3:]  # data_dir is part of a run's id
