"""benchmarks/gpu_session.py, the parts a CPU can check: the plan, the schedule it sizes, the file it writes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from relaxlab.experiments.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )


def test_dry_run_prints_every_phase_within_eight_minutes_and_writes_nothing(tmp_path: Path) -> None:
    done = _run("--dry-run", out=tmp_path / "gpu-out")
    assert done.returncode == 0, done.stderr
    plan = done.stdout
    assert f"outputs under {tmp_path / 'gpu-out'}" in plan  # $OUT
    for phase, command in (
        ("check", "mnist"),
        ("tests", "-m pytest -m gpu"),
        ("bench", "bench_engine.py --device cuda"),
        ("calibrate", "--calibrate-only"),
        ("paradox", "-m relaxlab sweep"),
        ("report", "-m relaxlab report"),
    ):
        line = next(ln for ln in plan.splitlines() if ln.strip().startswith(phase))
        assert command in line, line
    limits = [int(ln.split("<=")[1].split()[0]) for ln in plan.splitlines() if "<=" in ln]
    assert len(limits) == 6 and sum(limits) <= 480
    assert "--device cuda" in next(ln for ln in plan.splitlines() if ln.strip().startswith("paradox"))
    assert not (tmp_path / "gpu-out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_stops_at_once_with_status_2(tmp_path: Path) -> None:
    done = _run(out=tmp_path / "gpu-out")
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert not (tmp_path / "gpu-out").exists()


def test_the_schedule_fits_the_budget_and_is_the_same_for_every_relaxation() -> None:
    session = _module()
    steps = {"IBP": 0.002, "CROWN-IBP (R)": 0.005, "hBox": 0.02, "DeepZ": 0.02, "CROWN": 0.02}
    plan = session.size_schedule(steps, seeds=3, budget=300.0, workers=8, speedup=2.0)
    # 300 s - 30 s start - 2 rounds x 25 s = 220 s; one step of the grid: 0.067 x 3 / 2 = 0.1005 s
    assert plan == {"epochs": 3, "warmup_epochs": 0, "rampup_epochs": 1, "max_batches": 0}
    longer = session.size_schedule(steps, seeds=3, budget=3000.0, workers=8, speedup=2.0)
    assert longer["epochs"] > plan["epochs"] and longer["warmup_epochs"] == 1
    assert longer["warmup_epochs"] + longer["rampup_epochs"] <= longer["epochs"]
    # the slowest run alone must fit too, however many workers share the work
    # (500 s - 30 s - 25 s = 445 s: 445 steps of 1 s, however fast 100 runs at once would be)
    alone = session.size_schedule({"CROWN": 1.0}, seeds=1, budget=500.0, workers=8, speedup=100.0)
    assert alone == {"epochs": 1, "warmup_epochs": 0, "rampup_epochs": 1, "max_batches": 445}
    # not one epoch fits: one epoch of as many batches as fit
    short = session.size_schedule(steps, seeds=3, budget=100.0, workers=8, speedup=2.0)
    assert short["epochs"] == 1 and 10 <= short["max_batches"] < 600


def test_the_sweep_it_writes_is_the_template_with_that_schedule(tmp_path: Path) -> None:
    session = _module()
    for schedule in (
        {"epochs": 5, "warmup_epochs": 1, "rampup_epochs": 2, "max_batches": 0},
        {"epochs": 1, "warmup_epochs": 0, "rampup_epochs": 1, "max_batches": 120},
    ):
        (tmp_path / "paradox_fc.toml").write_text(session.sweep_text(schedule))
        sweep = load_sweep(tmp_path / "paradox_fc.toml")
        assert len(sweep.runs) == 15 and sweep.certify.n == 1000
        config = sweep.runs[0].config
        assert (config.dataset, config.architecture, config.eps_train, config.batch_size) == (
            "mnist",
            "FC",
            0.3,
            100,
        )
        assert (config.epochs, config.warmup_epochs, config.rampup_epochs, config.max_batches) == tuple(
            schedule.values()
        )
        assert {r.config.relaxation for r in sweep.runs} == {"IBP", "CROWN-IBP (R)", "hBox", "DeepZ", "CROWN"}
