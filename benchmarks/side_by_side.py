"""The engine at another revision and the working tree, side by side: paired interleaved rounds.

Run::

    .venv/bin/python benchmarks/side_by_side.py --base main [--rows fc-crown conv-crown-ibp ...] [--rounds 7]

Two worker processes, one thread each: one imports relaxlab from ``git archive <base> src`` (in a
temporary directory), the other from this working tree. Each builds the problems of
``roofline.py`` (batch 100, eps 0.1, 9 margin rows, ``lower_only``; *step*: bound, robust
cross-entropy and ``backward()``; *bound*: under ``no_grad``) and first checks that its lower
bounds equal the other's (``max |a - b| / max |b|`` printed). Then every round runs one call in
each process in turn, the order alternating, so that load from other work falls on both alike;
printed are min and median of the wall and of the process CPU time per side, and the median of the
per-round ratios (now / base). On a shared machine the CPU times are the steadier measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import load_note

HERE = Path(__file__).resolve().parent

#: name -> (architecture, relaxation, phase)
ROWS = {
    "fc-crown": ("FC", "CROWN", "step"),
    "conv-crown": ("CONV", "CROWN", "step"),
    "convp-crown": ("CONV+", "CROWN", "step"),
    "fc-crown-ibp": ("FC", "CROWN-IBP (R)", "step"),
    "conv-crown-ibp": ("CONV", "CROWN-IBP (R)", "step"),
    "fc-ibp": ("FC", "IBP", "bound"),
    "fc-ibp-step": ("FC", "IBP", "step"),
    "conv-ibp": ("CONV", "IBP", "bound"),
    "conv-ibp-step": ("CONV", "IBP", "step"),
}

_WORKER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
import roofline
from relaxlab.runtime import tune_allocator
tune_allocator()
rows = json.loads(sys.argv[2])
runs, bounds = {}, {}
for name, (arch, method, phase) in rows.items():
    model, x, C = roofline.problem(arch, roofline.BATCH)
    both = roofline.runners(model, x, C, method)
    runs[name] = both[phase]
    model.eval()
    with torch.no_grad():
        import relaxlab
        lb, _ = relaxlab.compute_bounds(model, x, roofline.EPS, method, C=C, domain=roofline.DOMAIN, lower_only=True)
    bounds[name] = lb.flatten().tolist()
    runs[name]()  # warm-up
print(json.dumps(bounds), flush=True)
for line in sys.stdin:
    name = line.strip()
    start, start_cpu = time.perf_counter(), time.process_time()
    runs[name]()
    print(json.dumps([time.perf_counter() - start, time.process_time() - start_cpu]), flush=True)
"""


def worker(src: Path, rows: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(HERE), json.dumps(rows)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision whose src/ is the baseline")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["fc-crown", "fc-crown-ibp", "conv-crown-ibp", "conv-ibp", "conv-crown"],
        choices=list(ROWS),
    )
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    root = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    rows = {name: ROWS[name] for name in args.rows}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", args.base, "src"], cwd=root, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        sides = {"base": worker(Path(tmp) / "src", rows), "now": worker(root / "src", rows)}
        bounds = {side: json.loads(proc.stdout.readline()) for side, proc in sides.items()}
        times: dict[str, dict[str, list[tuple[float, float]]]] = {s: {n: [] for n in rows} for s in sides}
        for round_ in range(args.rounds):
            for name in rows:
                for side in ("base", "now") if round_ % 2 == 0 else ("now", "base"):
                    sides[side].stdin.write(name + "\n")
                    sides[side].stdin.flush()
                    times[side][name].append(tuple(json.loads(sides[side].stdout.readline())))
        for proc in sides.values():
            proc.stdin.close()
            proc.wait()
    print(f"engine at {args.base} (base) and the working tree (now), one thread, {args.rounds} paired rounds")
    print(load_note(load_start, os.getloadavg()))
    header = (
        f"{'row':<16}{'rel diff':>9}{'base wall min/med':>20}{'now wall min/med':>20}{'paired':>8}"
        f"{'base cpu min/med':>20}{'now cpu min/med':>20}{'paired':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in rows:
        base, now = times["base"][name], times["now"][name]
        ref = max(abs(v) for v in bounds["base"][name])
        diff = max(abs(a - b) for a, b in zip(bounds["now"][name], bounds["base"][name], strict=True)) / ref
        cells = [f"{name:<16}{diff:>9.1g}"]
        for index in (0, 1):
            b, n = [t[index] for t in base], [t[index] for t in now]
            ratio = statistics.median(x / y for x, y in zip(n, b, strict=True))
            cells.append(
                f"{_ms(min(b)) + ' / ' + _ms(statistics.median(b)):>20}"
                f"{_ms(min(n)) + ' / ' + _ms(statistics.median(n)):>20}{ratio:>8.2f}"
            )
        print("".join(cells))
    print(
        "rel diff: max |now - base| / max |base| of the lower bounds (eval mode, no_grad); paired: median of the\n"
        "per-round ratios now / base."
    )
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{1e3 * seconds:.1f} ms"


if __name__ == "__main__":
    raise SystemExit(main())
