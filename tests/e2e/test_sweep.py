"""End to end: ``relaxlab sweep`` on tiny data, in-process and on local Ray, interrupted and resumed."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import relaxlab.training.trainer as trainer
from relaxlab.cli import cli
from relaxlab.experiments.executors import Executor, InProcessExecutor
from relaxlab.experiments.runs import RunOutcome, RunTask
from relaxlab.experiments.sweep import load_sweep, run_sweep
from relaxlab.store import Store

# 2 relaxations x 2 seeds; each run is one second or two (FC-S, 2 epochs of 2 batches of 50).
SWEEP = """
name = "tiny"
seeds = [0, 1]

[base]
architecture = "FC-S"
epochs = 2
rampup_epochs = 1
eps_train = 0.05
eps_test = 0.05
batch_size = 50
max_batches = 2
train_subset = 100
test_subset = 20
validation = 20

[grid]
relaxation = ["IBP", "CROWN-IBP (R)"]

[certify]
relaxations = ["own", "IBP"]
n = 10
"""


def _write(tmp_path: Path, text: str = SWEEP, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def store_contents(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Runs (without ids and times) and metrics (by run kind, key and name), sorted."""
    conn = sqlite3.connect(path)
    try:
        runs = conn.execute(
            "SELECT id, kind, name, status, config, environment, key, error FROM runs"
        ).fetchall()
        names = {row[0]: (row[1], row[6], row[2]) for row in runs}
        metrics = sorted((*names[r], s, n, v) for r, s, n, v in conn.execute("SELECT * FROM metrics"))
    finally:
        conn.close()
    return sorted(row[1:] for row in runs), metrics


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[Any]]:
    """The store of the sweep run in one go, in-process."""
    tmp = tmp_path_factory.mktemp("full")
    summary = run_sweep(load_sweep(_write(tmp)), tmp / "out", InProcessExecutor(), write=lambda _line: None)
    assert len(summary.trained) == 4 and not summary.failed
    return store_contents(tmp / "out" / "results.sqlite")


class StopAfter(Executor):
    """Wraps an executor; raises KeyboardInterrupt (a Ctrl-C in the driver) after k outcomes."""

    def __init__(self, inner: Executor, k: int) -> None:
        super().__init__(inner.workers)
        self.inner, self.k = inner, k

    def run(
        self,
        tasks: Sequence[RunTask],
        on_start: Callable[[RunTask], None] | None = None,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> Iterator[RunOutcome]:
        outcomes = self.inner.run(tasks, on_start, on_progress)
        for index, outcome in enumerate(outcomes):
            if index == self.k:
                outcomes.close()  # what the interrupted driver's generator cleanup does
                raise KeyboardInterrupt
            yield outcome


def test_killed_mid_run_resumes_to_the_uninterrupted_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: Any
) -> None:
    sweep = load_sweep(_write(tmp_path))
    real_train, calls = trainer.train, []

    def dies_in_third_run(config: Any, out_dir: Any, **kwargs: Any) -> Any:
        calls.append(config.name)
        if len(calls) == 3:  # one epoch checkpointed, then the process is "killed"
            real_train(config, out_dir, **{**kwargs, "stop_after": 1})
            raise KeyboardInterrupt
        return real_train(config, out_dir, **kwargs)

    monkeypatch.setattr(trainer, "train", dies_in_third_run)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path / "out", InProcessExecutor(), write=lambda _line: None)
    monkeypatch.setattr(trainer, "train", real_train)
    with Store(tmp_path / "out" / "results.sqlite") as store:
        assert len(store.runs(kind="train", status="done")) == 2
    assert (tmp_path / "out" / calls[2] / "checkpoint.pt").is_file()  # the third run resumes from here

    lines: list[str] = []
    summary = run_sweep(sweep, tmp_path / "out", InProcessExecutor(), write=lines.append, tty=False)
    assert summary.trained == (sweep.runs[2].key, sweep.runs[3].key) and len(summary.skipped) == 2
    assert lines[-1].startswith("2/2 done (+2 done earlier), 0 running, 0 failed, ETA 0m00s")
    assert store_contents(tmp_path / "out" / "results.sqlite") == uninterrupted

    again = run_sweep(sweep, tmp_path / "out", InProcessExecutor(), write=lines.append)
    assert again.trained == () and len(again.skipped) == 4
    assert store_contents(tmp_path / "out" / "results.sqlite") == uninterrupted


def test_interrupted_between_runs_resumes(tmp_path: Path, uninterrupted: Any) -> None:
    sweep = load_sweep(_write(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path / "out", StopAfter(InProcessExecutor(), 1), write=lambda _line: None)
    summary = run_sweep(sweep, tmp_path / "out", InProcessExecutor(), write=lambda _line: None)
    assert len(summary.trained) == 3 and len(summary.skipped) == 1
    assert store_contents(tmp_path / "out" / "results.sqlite") == uninterrupted


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_on_local_ray_interrupted_resumed_equals_in_process(tmp_path: Path, uninterrupted: Any) -> None:
    import ray

    from relaxlab.experiments.executors import RayExecutor, start_local_ray

    sweep = load_sweep(_write(tmp_path))
    # one local Ray for both calls (the executor reuses a running Ray and leaves it running)
    start_local_ray(ray, 2)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(sweep, tmp_path / "out", StopAfter(RayExecutor(2), 1), write=lambda _line: None)
        with Store(tmp_path / "out" / "results.sqlite") as store:
            assert 1 <= len(store.runs(kind="train", status="done")) < 4
        summary = run_sweep(sweep, tmp_path / "out", RayExecutor(2), write=lambda _line: None)
    finally:
        ray.shutdown()
    assert len(summary.trained) + len(summary.skipped) == 4 and not summary.failed
    assert store_contents(tmp_path / "out" / "results.sqlite") == uninterrupted


def test_cli_dry_run_failures_and_bad_files(tmp_path: Path) -> None:
    runner = CliRunner()
    failing = SWEEP.replace('[grid]\nrelaxation = ["IBP", "CROWN-IBP (R)"]', '[grid]\nrelaxation = ["IBP"]')
    failing += '\n[[runs]]\nrelaxation = "IBP"\ndata_dir = "/nonexistent/mnist-mini"\n'
    path = _write(tmp_path, failing.replace("seeds = [0, 1]", "seeds = [0]"))
    sweep = load_sweep(path)
    out = tmp_path / "out"

    dry = runner.invoke(cli, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert all(run.key in dry.output for run in sweep.runs) and "pending" in dry.output
    assert not out.exists()

    result = runner.invoke(cli, ["sweep", str(path), "--out", str(out), "--executor", "inprocess", "-q"])
    assert result.exit_code == 1, result.output
    assert "1 trained, 0 already done, 1 failed" in result.output and "DatasetNotFoundError" in result.output
    with Store(out / "results.sqlite") as store:
        (failed,) = store.runs(kind="train", status="failed")
        assert failed.key == sweep.runs[1].key and "DatasetNotFoundError" in (failed.error or "")
        assert len(store.runs(kind="train", status="done")) == 1
    dry = runner.invoke(cli, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert f"{sweep.runs[0].key}  done" in dry.output and f"{sweep.runs[1].key}  failed" in dry.output
    report = runner.invoke(cli, ["report", "--store", str(out / "results.sqlite")])
    assert report.exit_code == 0 and "## Sweep tiny: 1/2 runs done (failed)" in report.output
    assert f"- `{sweep.runs[1].key}`: DatasetNotFoundError" in report.output

    # a second call retries the failed run only (and it fails again, replacing the earlier record)
    result = runner.invoke(cli, ["sweep", str(path), "--out", str(out), "--executor", "inprocess", "-q"])
    assert "0 trained, 1 already done, 1 failed" in result.output
    with Store(out / "results.sqlite") as store:
        assert len(store.runs(kind="train")) == 2

    for text, message in [
        (
            SWEEP.replace("[grid]\n", "[grid]\nlrr = [0.1]\n"),
            "[grid]: unknown key(s) 'lrr' (did you mean 'lr'",
        ),
        (SWEEP.replace("epochs = 2", "epochs = 2\nseed = 3"), "`seed` is set by the sweep"),
        (SWEEP + "\n[select]\nover = ['lr']\n", "[select] over must list keys that vary"),
        (SWEEP.replace("eps_train = 0.05", "eps_train = 2.0"), "eps_train must be in [0, 1]"),
        (SWEEP.replace('"IBP", "CROWN-IBP (R)"', '"IBP", "CROWM"'), "did you mean 'CROWN'"),
        (SWEEP.replace("seeds = [0, 1]", "seeds = [0, 0]"), "lists a seed twice"),
        ("workers = 3\n" + SWEEP, "top level: unknown key(s) 'workers'"),
    ]:
        bad = _write(tmp_path, text, "bad.toml")
        result = runner.invoke(cli, ["sweep", str(bad), "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and message in result.output, (message, result.output)
        assert not (tmp_path / "bad").exists()


def test_two_sweeps_on_one_store_train_each_run_once(tmp_path: Path, uninterrupted: Any) -> None:
    """Two processes started on one sweep and one store share the runs: each run trains once, one record per
    run id, and both exit 0 (each claims a run before it trains it)."""
    path = _write(tmp_path)
    command = [
        sys.executable,
        "-m",
        "relaxlab",
        "sweep",
        str(path),
        "--out",
        str(tmp_path / "out"),
        "--executor",
        "inprocess",
        "-q",
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    trained = [int(re.search(r"(\d+) trained", output)[1]) for output in outputs]  # type: ignore[index]
    assert sum(trained) == 4, outputs
    runs, metrics = store_contents(tmp_path / "out" / "results.sqlite")
    expected_runs, expected_metrics = uninterrupted
    trains = [run for run in runs if run[0] == "train"]
    assert (
        len(trains) == 4 and len({run[5] for run in trains}) == 4 and {run[2] for run in trains} == {"done"}
    )
    assert sorted((run[0], run[1], run[5]) for run in runs if run[0] != "sweep") == sorted(
        (run[0], run[1], run[5]) for run in expected_runs if run[0] != "sweep"
    )
    assert len(metrics) == len(expected_metrics)
    with Store(tmp_path / "out" / "results.sqlite") as store:
        assert store.claims() == []  # each process released what it held
