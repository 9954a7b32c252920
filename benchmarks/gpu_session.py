"""One GPU session: the CUDA tests, the engine benchmark and the paradox grid on FC, in at most 8 minutes.

Run from the repository root on the machine with the GPU, with the Python environment that has
torch with CUDA (nothing is installed and nothing is fetched; the working tree's ``src`` is used):

    python benchmarks/gpu_session.py                 # outputs under $OUT (default ./gpu-out)
    python benchmarks/gpu_session.py --dry-run       # the plan: phases, limits, commands; needs no GPU

Phases, each a subprocess with a hard time limit (SIGINT, then SIGKILL 10 s later); a phase that
fails or runs out of time is recorded and the session goes on. The limits add up to at most
``--total`` seconds (480 by default), and the paradox phase gets what the others leave:

1. ``check``: CUDA present (else the session stops at once with exit status 2), the device and
   versions (``environment.json``, ``nvidia-smi.txt``), the MNIST files found (``$RELAXLAB_DATA``,
   ``data/mnist`` in the working tree, or where the loader probes);
2. ``tests``: ``pytest -m gpu`` (every test's CUDA parameter and the GPU-only tests):
   ``pytest-gpu.log``, ``pytest-gpu.xml``;
3. ``bench``: ``benchmarks/bench_engine.py --device cuda --json``: ``bench_engine.json``;
4. ``calibrate``: seconds per training step of each relaxation of the grid on FC with MNIST's
   batch shape (``calibration.json``), from which the grid's schedule is sized to the time left:
   the same number of epochs for every relaxation, as many as fit;
5. ``paradox``: ``relaxlab sweep`` of ``examples/paradox_fc_gpu.toml`` with that schedule
   (``paradox_fc.toml``) on ``--device cuda``: ``paradox/results.sqlite``, ``paradox.log``;
6. ``report``: ``relaxlab report`` of that store: ``paradox_report.md``.

``session.json`` records every phase (command, limit, wall time, status) and the schedule. Exit
status: 0 when every phase passed, 1 when one failed or ran out of time, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "examples" / "paradox_fc_gpu.toml"
#: Seconds each phase may take at most (the paradox phase gets the rest of ``--total``).
LIMITS = {"check": 20, "tests": 75, "bench": 60, "calibrate": 45, "report": 15}
#: Seconds kept back at the end (stopping a phase, writing session.json).
RESERVE = 15
#: The grid of the template, and its shape (read from the file by :func:`template_grid`).
STEPS_PER_EPOCH = 600  # 60,000 training images, batch 100
#: Seconds a run spends besides training steps: a worker's CUDA start and data loading (first run
#: only, counted for every run to stay on the safe side), the final evaluation and certification.
RUN_OVERHEAD = 25.0
#: Seconds to start the sweep (Ray) before the first run.
SWEEP_START = 30.0


def template_grid(path: Path = TEMPLATE) -> tuple[list[str], list[int]]:
    """The relaxations and seeds of the template sweep file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    data = tomllib.loads(path.read_text())
    return list(data["grid"]["relaxation"]), list(data["seeds"])


def size_schedule(
    step_seconds: Mapping[str, float],
    *,
    seeds: int,
    budget: float,
    workers: int,
    speedup: float,
    steps_per_epoch: int = STEPS_PER_EPOCH,
    max_epochs: int = 200,
) -> dict[str, int]:
    """The common schedule of the grid that fits ``budget`` seconds.

    The grid's training work per epoch is ``steps_per_epoch · Σ step_seconds · seeds`` seconds on
    one process; ``workers`` processes sharing the GPU are assumed to get through it ``speedup``
    times faster, and the slowest run must also fit alone. Warm-up and ramp-up follow the
    template's proportions (1 warm-up from 4 epochs on, half the epochs ramping up).

    :return: ``epochs``, ``warmup_epochs``, ``rampup_epochs`` and ``max_batches`` (0: whole epochs).
    """
    runs = len(step_seconds) * seeds
    rounds = math.ceil(runs / max(workers, 1))
    usable = budget - SWEEP_START - rounds * RUN_OVERHEAD
    grid_step = sum(step_seconds.values()) * seeds / max(speedup, 1e-9)  # one step of every run
    slowest = max(step_seconds.values())
    steps = int(max(0.0, min(usable / grid_step, usable / slowest))) if usable > 0 else 0
    epochs = min(max_epochs, steps // steps_per_epoch)
    if epochs < 1:  # not one epoch fits: one epoch of as many batches as fit (at least 10)
        return {"epochs": 1, "warmup_epochs": 0, "rampup_epochs": 1, "max_batches": max(10, steps)}
    warmup = 1 if epochs >= 4 else 0
    return {"epochs": epochs, "warmup_epochs": warmup, "rampup_epochs": max(1, epochs // 2), "max_batches": 0}


def sweep_text(schedule: Mapping[str, int], template: Path = TEMPLATE) -> str:
    """The template sweep file with ``schedule``'s keys set (its comments kept)."""
    text = template.read_text()
    for key in ("epochs", "warmup_epochs", "rampup_epochs"):
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {schedule[key]}", text, flags=re.M)
        if count != 1:
            raise ValueError(f"{template} must set {key} once in [base]")
    if schedule.get("max_batches"):
        text = text.replace("\n[grid]", f"max_batches = {schedule['max_batches']}\n\n[grid]", 1)
    header = (
        f"# Written by benchmarks/gpu_session.py: {template.name} with the schedule sized to this "
        f"session's budget: {dict(schedule)}\n"
    )
    return header + text


class Session:
    """The phases of one session: limits from a deadline, logs and a record of each in ``out``."""

    def __init__(self, out: Path, total: float, python: str, dry_run: bool) -> None:
        self.out, self.total, self.python, self.dry_run = out, total, python, dry_run
        self.start = time.monotonic()
        self.phases: list[dict[str, object]] = []
        self.record: dict[str, object] = {"out": str(out), "total_s": total, "phases": self.phases}

    def left(self) -> float:
        """Seconds left before the session's deadline (less the reserve)."""
        return self.total - RESERVE - (time.monotonic() - self.start)

    def env(self) -> dict[str, str]:
        """The environment of every phase: the working tree's ``src`` first, MNIST where it is."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT / "src"), env.get("PYTHONPATH"))))
        env.setdefault("RELAXLAB_PROGRESS_EVERY", "15")
        if "RELAXLAB_DATA" not in env and (ROOT / "data" / "mnist").is_dir():
            env["RELAXLAB_DATA"] = str(ROOT / "data")
        return env

    def run(
        self, name: str, command: Sequence[str], limit: float, log: str, errors: str | None = None
    ) -> dict[str, object]:
        """Run one phase, its output to ``out/log`` (its errors too, unless ``errors`` names another
        file); stop it at ``limit`` seconds."""
        limit = max(0.0, min(limit, self.left()))
        entry: dict[str, object] = {
            "name": name,
            "command": shlex.join(command),
            "limit_s": round(limit),
            "log": log,
        }
        self.phases.append(entry)
        if self.dry_run:
            print(f"  {name:10s} <= {limit:4.0f} s  {shlex.join(command)}  > {log}")
            entry["status"] = "planned"
            return entry
        if limit < 5:
            entry.update(status="skipped", reason="no time left")
            return entry
        started = time.monotonic()
        with contextlib.ExitStack() as files:
            stream = files.enter_context(open(self.out / log, "w"))
            error_stream = files.enter_context(open(self.out / errors, "w")) if errors else subprocess.STDOUT
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env(), stdout=stream, stderr=error_stream, start_new_session=True
            )
            try:
                code = process.wait(timeout=limit)
                entry["status"] = "ok" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGINT)  # the sweep records what finished and stops Ray
                try:
                    code = process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    code = process.wait()
                entry["status"] = "timeout"
        entry.update(returncode=code, wall_s=round(time.monotonic() - started, 1))
        print(
            f"{name}: {entry['status']} in {entry['wall_s']} s (limit {entry['limit_s']} s), log {log}",
            flush=True,
        )
        self.save()
        return entry

    def save(self) -> None:
        """Write ``session.json``."""
        self.record["wall_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "session.json").write_text(json.dumps(self.record, indent=1))


def check_cuda() -> dict[str, object]:
    """The device and versions; exits with status 2 at once when CUDA is missing."""
    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_session: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "this session needs one. `--dry-run` prints its plan anywhere.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    properties = torch.cuda.get_device_properties(0)
    return {
        "device": properties.name,
        "memory_GiB": round(properties.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }


def calibrate(out: Path, relaxations: Sequence[str], steps: int = 20) -> None:
    """Seconds per training step of each relaxation on FC, MNIST's batch shape, ε = 0.3, κ = 0.5 (to ``out``)."""
    import torch

    import relaxlab
    from relaxlab.training.loss import training_loss

    registry = relaxlab.get_registry()
    dataset = registry.datasets["mnist"]
    model = registry.architectures["FC"].build(dataset.input_shape, 10, dataset.mean, dataset.std).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(100, *dataset.input_shape, device="cuda")
    y = torch.randint(0, 10, (100,), device="cuda")
    seconds = {}
    for name in relaxations:
        relaxation = relaxlab.get_relaxation(name)
        for index in range(steps + 3):  # three steps to warm up
            if index == 3:
                torch.cuda.synchronize()
                start = time.perf_counter()
            loss, _ = training_loss(
                model,
                x,
                y,
                eps=0.3,
                kappa=0.5,
                beta=1.0,
                relaxations=(relaxation,),
                num_classes=10,
                elision=True,
                l1=0.0,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        seconds[name] = (time.perf_counter() - start) / steps
    out.write_text(json.dumps(seconds, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "gpu-out"),
        help="where everything is written (default: $OUT, else ./gpu-out)",
    )
    parser.add_argument("--total", type=float, default=480.0, help="seconds the whole session may take")
    parser.add_argument("--workers", type=int, default=8, help="paradox runs at the same time on the GPU")
    parser.add_argument(
        "--speedup",
        type=float,
        default=2.0,
        help="assumed throughput of --workers runs sharing the GPU, relative to one run",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument("--calibrate-only", type=Path, help=argparse.SUPPRESS)  # the calibrate phase's body
    args = parser.parse_args(argv)
    relaxations, seeds = template_grid()
    if args.calibrate_only:
        calibrate(args.calibrate_only, relaxations)
        return 0
    fixed = sum(LIMITS.values())
    if fixed + RESERVE + SWEEP_START >= args.total:
        parser.error(
            f"--total {args.total:g} s leaves no time for the paradox grid (the other phases take {fixed} s)"
        )
    out = args.out.resolve()
    session = Session(out, args.total, sys.executable, args.dry_run)
    py = [sys.executable]
    if args.dry_run:
        print(f"GPU session plan (at most {args.total:g} s; outputs under {out}):")
    else:
        session.record["environment"] = check_cuda()
        out.mkdir(parents=True, exist_ok=True)
        (out / "environment.json").write_text(json.dumps(session.record["environment"], indent=1))
    session.run(
        "check",
        [
            *py,
            "-c",
            "import relaxlab; x, _ = relaxlab.get_registry().datasets['mnist'].load('test');"
            " print('MNIST test images:', len(x))",
        ],
        LIMITS["check"],
        "check.log",
    )
    if not args.dry_run:
        with open(out / "nvidia-smi.txt", "w") as stream:
            subprocess.run(["nvidia-smi"], stdout=stream, stderr=subprocess.STDOUT, check=False, timeout=10)
    session.run(
        "tests",
        [
            *py,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rA",
            f"--junitxml={out / 'pytest-gpu.xml'}",
            "tests",
        ],
        LIMITS["tests"],
        "pytest-gpu.log",
    )
    session.run(
        "bench",
        [*py, "benchmarks/bench_engine.py", "--device", "cuda", "--repeats", "20", "--json"],
        LIMITS["bench"],
        "bench_engine.json",
        errors="bench_engine.log",
    )
    mnist = args.dry_run or session.phases[0]["status"] == "ok"
    calibration = out / "calibration.json"
    if mnist:
        session.run(
            "calibrate",
            [*py, str(Path(__file__).resolve()), "--calibrate-only", str(calibration)],
            LIMITS["calibrate"],
            "calibrate.log",
        )
    budget = session.left() - LIMITS["report"]
    sweep_file = out / "paradox_fc.toml"
    command = [
        *py,
        "-m",
        "relaxlab",
        "sweep",
        str(sweep_file),
        "--out",
        str(out / "paradox"),
        "--device",
        "cuda",
        "--workers",
        str(args.workers),
    ]
    report = [*py, "-m", "relaxlab", "report", "--store", str(out / "paradox" / "results.sqlite")]
    if args.dry_run:
        budget = args.total - RESERVE - fixed
        print(f"  paradox    <= {budget:4.0f} s  {shlex.join(command)}  > paradox.log")
        print(f"  report     <= {LIMITS['report']:4.0f} s  {shlex.join(report)}  > paradox_report.md")
        print(
            f"paradox grid: {TEMPLATE.relative_to(ROOT)}, {len(relaxations)} relaxations x {len(seeds)} seeds "
            f"({', '.join(relaxations)}); epochs sized from the calibration to {budget:.0f} s with "
            f"{args.workers} workers at an assumed speed-up of {args.speedup:g}"
        )
        return 0
    if not mnist:
        session.phases.append(
            {
                "name": "paradox",
                "status": "skipped",
                "reason": "no MNIST files (see check.log): set RELAXLAB_DATA or put them in data/mnist",
            }
        )
    elif session.phases[-1]["status"] != "ok":
        session.phases.append({"name": "paradox", "status": "skipped", "reason": "calibration failed"})
    else:
        steps = json.loads(calibration.read_text())
        schedule = size_schedule(
            steps, seeds=len(seeds), budget=budget, workers=args.workers, speedup=args.speedup
        )
        session.record["schedule"] = {
            **schedule,
            "budget_s": round(budget),
            "step_seconds": steps,
            "workers": args.workers,
            "speedup_assumed": args.speedup,
        }
        sweep_file.write_text(sweep_text(schedule))
        session.run("paradox", command, budget, "paradox.log")
        if (out / "paradox" / "results.sqlite").is_file():
            session.run("report", report, LIMITS["report"], "paradox_report.md", errors="report.log")
    session.save()
    failed = [p["name"] for p in session.phases if p.get("status") not in ("ok",)]
    print(
        f"gpu session: {len(session.phases) - len(failed)} of {len(session.phases)} phases ok"
        + (f"; not ok: {', '.join(map(str, failed))}" if failed else "")
        + f"; everything in {out}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
