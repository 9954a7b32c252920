"""Certified-training step and bound cost on FC, CONV and CONV+ for the paper's five relaxations.

Run (one documented command; ``--before`` adds a side-by-side column for another source tree)::

    .venv/bin/python benchmarks/bench_training.py [--before OLD/src] [--repeats 5] [--memory-gib 12]

Every cell runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is its own
and a cell that runs out of memory (address space capped at ``--memory-gib``) is reported as such
instead of killing the machine. With ``--before``, the same cell runs in a second process with the
other tree, the two started together and their runs alternating (the order swapped every round), so
that load from other work falls on both alike; the table then adds the median of the paired ratios
of CPU time, now / before.

Setting (issue 13): one torch thread, batch 100, 1x28x28 inputs uniform in [0, 1], random weights
(PyTorch's default initialisation, seed 0), eps = 0.1 clipped to [0, 1], margin specifications
(9 rows per example, elided into the last layer).

- *step*: ``relaxlab.training.loss.training_loss`` with kappa = 0 (the robust cross-entropy of the
  margins' lower bounds, ``lower_only``) and ``backward()``, model in training mode; the
  *natural* row is the same function with kappa = 1 (cross-entropy of the logits only);
- *bound*: ``margin_bounds`` under ``torch.no_grad()`` (what certification runs).

Each time is the minimum over ``--repeats`` runs after one warm-up run (wall clock; the process's
CPU time is recorded beside it in ``--json``: on a machine shared with other work it is the better
estimate of the quiet time). Targets of issue 13 are
printed with pass / fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ARCHITECTURES = ("FC", "CONV", "CONV+")
RELAXATIONS = ("IBP", "CROWN-IBP (R)", "hBox", "DeepZ", "CROWN")

#: auto_LiRPA 0.7.1 training steps on this machine, from issue 13 (ms); the targets are ratios to these.
AUTO_LIRPA_STEP_MS = {
    ("FC", "CROWN-IBP (R)"): (50.0, 57.0),
    ("CONV", "CROWN-IBP (R)"): (138.0, 184.0),
    ("CONV+", "CROWN"): (24500.0, 34500.0),
}
AUTO_LIRPA_BOUND_MS = {("CONV+", "CROWN"): 7000.0}

_CELL = r"""
import json, resource, sys, time
limit = int(sys.argv[4]) << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
torch.set_num_threads(1)
from torch import nn
from relaxlab.api import get_relaxation
from relaxlab.architectures import BUILTIN_ARCHITECTURES
from relaxlab.engine.spec import margin_bounds
from relaxlab.runtime import tune_allocator
from relaxlab.training.loss import training_loss
tune_allocator()
arch, name, kind = sys.argv[1], sys.argv[2], sys.argv[3]
builder = {a.name: a for a in BUILTIN_ARCHITECTURES}[arch].builder
torch.manual_seed(0)
model = nn.Sequential(*builder((1, 28, 28), 10))
x = torch.rand(100, 1, 28, 28)
labels = torch.randint(0, 10, (100,))
relaxation = None if name == "natural" else get_relaxation(name)

def step():
    model.zero_grad(set_to_none=True)
    loss, _ = training_loss(model, x, labels, eps=0.1, kappa=1.0 if relaxation is None else 0.0, beta=1.0,
                            relaxations=() if relaxation is None else (relaxation,), num_classes=10,
                            elision=True, l1=0.0)
    loss.backward()

def bound():
    with torch.no_grad():
        margin_bounds(model, x, labels, 0.1, relaxation, num_classes=10, check_centre=False)

run = step if kind == "step" else bound
model.train(kind == "step")
# One line per timing asked for on stdin (the parent alternates the trees run by run); the first
# run is the warm-up.
try:
    run()
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        print(json.dumps([time.perf_counter() - start, time.process_time() - start_cpu]), flush=True)
except MemoryError:
    print(json.dumps({"error": "out of memory"}), flush=True)
    sys.exit(0)
print(json.dumps({"peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""


def _start(src: str, arch: str, name: str, kind: str, memory_gib: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, "-c", _CELL, arch, name, kind, str(memory_gib)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _failed(proc: subprocess.Popen) -> dict:
    proc.kill()
    _, err = proc.communicate()
    tail = (err.strip().splitlines() or ["killed"])[-1]
    error = "out of memory" if "MemoryError" in err or "alloc" in tail.lower() else tail
    return {"ms": None, "error": error, "peak_MiB": None}


def _cells(trees: dict[str, str], arch: str, name: str, kind: str, repeats: int, memory_gib: int) -> dict:
    """One cell per tree, each in its own process, the runs alternating between the trees (the order
    swapped every round) so that load from other work falls on all alike."""
    procs = {label: _start(src, arch, name, kind, memory_gib) for label, src in trees.items()}
    results: dict[str, dict] = {}
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    for label, proc in procs.items():
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line or "ready" not in json.loads(line):
            results[label] = _failed(proc) if not line else json.loads(line) | {"ms": None, "peak_MiB": None}
    live = [label for label in trees if label not in results]
    for round_ in range(repeats):
        for label in live if round_ % 2 == 0 else live[::-1]:
            proc = procs[label]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            times[label].append(tuple(json.loads(proc.stdout.readline())))
    for label in live:
        proc = procs[label]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        peak = json.loads(proc.stdout.readline())["peak_MiB"]
        proc.wait()
        walls, cpus = [t[0] for t in times[label]], [t[1] for t in times[label]]
        results[label] = {
            "ms": 1e3 * min(walls),
            "cpu_ms": 1e3 * min(cpus),
            "peak_MiB": peak,
            "runs": times[label],
        }
    if (
        "before" in results
        and "now" in results
        and results["before"].get("runs")
        and results["now"].get("runs")
    ):
        ratios = [n[1] / b[1] for n, b in zip(results["now"]["runs"], results["before"]["runs"], strict=True)]
        results["now"]["paired_cpu_ratio"] = statistics.median(ratios)
    return results


def _repeats(arch: str, name: str, repeats: int) -> int:
    """Fewer repeats where one run takes seconds (full backsubstitution on the convolutional nets)."""
    if name in ("hBox", "DeepZ", "CROWN") and arch != "FC":
        return max(1, repeats // 5)
    return repeats


def _format(cell: dict | None) -> str:
    if cell is None:
        return ""
    if cell.get("ms") is None:
        return cell.get("error", "failed")
    ms = cell["ms"]
    return f"{ms:,.1f} ms" if ms < 1000 else f"{ms / 1000:,.2f} s"


def _memory(cell: dict | None) -> str:
    if cell is None or cell.get("peak_MiB") is None:
        return ""
    return f"{cell['peak_MiB'] / 1024:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another relaxlab source tree (its src/) to measure side by side")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-gib", type=int, default=12, help="address-space cap per cell (GiB)")
    parser.add_argument("--arch", action="append", choices=ARCHITECTURES, help="default: all three")
    parser.add_argument("-r", "--relaxation", action="append", choices=RELAXATIONS, help="default: all five")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"now": here} if args.before is None else {"before": args.before, "now": here}
    results: dict[str, dict] = {}
    for arch in args.arch or ARCHITECTURES:
        for name in ("natural", *(args.relaxation or RELAXATIONS)):
            for kind in ("step",) if name == "natural" else ("step", "bound"):
                repeats = _repeats(arch, name, args.repeats)
                cells = _cells(trees, arch, name, kind, repeats, args.memory_gib)
                for label, cell in cells.items():
                    results[f"{label}|{arch}|{name}|{kind}"] = cell
                    ratio = cell.get("paired_cpu_ratio")
                    print(
                        f"{label:6s} {arch:5s} {name:14s} {kind:5s} {_format(cell):>12s} "
                        f"peak {_memory(cell)} GiB" + ("" if ratio is None else f"  now/before {ratio:.2f}"),
                        file=sys.stderr,
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    labels = list(trees)
    header = ["network", "relaxation"]
    for label in labels:
        header += [f"step ({label})", f"bound ({label})", f"peak GiB ({label})"]
    paired = len(labels) == 2
    if paired:
        header += ["step now/before", "bound now/before"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(header) - 2))
    for arch in args.arch or ARCHITECTURES:
        for name in ("natural", *(args.relaxation or RELAXATIONS)):
            row = [arch, name]
            for label in labels:
                step, bound = (
                    results.get(f"{label}|{arch}|{name}|step"),
                    results.get(f"{label}|{arch}|{name}|bound"),
                )
                peak = max((c.get("peak_MiB") or 0 for c in (step, bound) if c), default=None)
                row += [_format(step), _format(bound), f"{peak / 1024:.2f}" if peak else ""]
            if paired:
                for kind in ("step", "bound"):
                    ratio = (results.get(f"now|{arch}|{name}|{kind}") or {}).get("paired_cpu_ratio")
                    row.append("" if ratio is None else f"{ratio:.2f}")
            print("| " + " | ".join(row) + " |")
    _targets(results)


def _ms(results: dict, arch: str, name: str, kind: str) -> float | None:
    cell = results.get(f"now|{arch}|{name}|{kind}")
    return None if cell is None else cell.get("ms")


def _check(label: str, value: float | None, target: float, unit: str = "") -> None:
    verdict = "n/a" if value is None else ("pass" if value <= target else "FAIL")
    shown = "not measured / failed" if value is None else f"{value:.3g}{unit}"
    print(f"target {label}: <= {target:g}{unit} -> {shown}: {verdict}")


def _targets(results: dict) -> None:
    print()
    step = _ms(results, "CONV+", "CROWN", "step")
    _check("CONV+ CROWN training step (s)", None if step is None else step / 1000, 12.0, " s")
    peak = results.get("now|CONV+|CROWN|step", {}).get("peak_MiB")
    _check("CONV+ CROWN training step peak memory (GiB)", None if peak is None else peak / 1024, 4.0, " GiB")
    bound = _ms(results, "CONV+", "CROWN", "bound")
    _check("CONV+ CROWN bound (s)", None if bound is None else bound / 1000, 4.0, " s")
    for (arch, name), target in ((("FC", "CROWN-IBP (R)"), 0.6), (("CONV", "CROWN-IBP (R)"), 0.4)):
        ours = _ms(results, arch, name, "step")
        low, _ = AUTO_LIRPA_STEP_MS[(arch, name)]
        _check(
            f"{arch} {name} step / auto_LiRPA's ({low:g} ms, issue 13)",
            None if ours is None else ours / low,
            target,
            "x",
        )
    for arch in ARCHITECTURES:
        natural, ibp = _ms(results, arch, "natural", "step"), _ms(results, arch, "IBP", "step")
        ratio = None if natural is None or ibp is None else ibp / natural
        _check(f"{arch} IBP step / natural step", ratio, 3.0, "x")


if __name__ == "__main__":
    main()
