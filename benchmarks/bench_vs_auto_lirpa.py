"""Training steps and bounds side by side with auto_LiRPA (issue 24's table), identical bounds checked first.

Run (auto_LiRPA must import; otherwise the script prints how to install it and exits 0)::

    /work/lirpa/.venv/bin/python benchmarks/bench_vs_auto_lirpa.py [--repeats 5] [--rows fc-crown conv-crown ...]
        [--memory-gib 10] [--json out.json]

Setting (issue 24): one torch thread, batch 100, 1x28x28 inputs uniform in [0, 1] (seed 0), labels
uniform, the registered architectures FC (784-400-200-100-100-10), CONV and CONV+ with PyTorch's
default initialisation (seed 0) in training mode, eps = 0.1 clipped to [0, 1], float32, 9 margin
rows per example (``margin_spec``, elided into the last layer on both sides).

- *step* = lower bound of the margins + robust cross-entropy (``CE([0, -lb], 0)``) + ``backward()``;
  relaxlab: ``relaxlab.compute_bounds(..., lower_only=True)``; auto_LiRPA:
  ``BoundedModule.compute_bounds(..., bound_upper=False)`` (method ``backward`` for CROWN,
  ``CROWN-IBP`` for CROWN-IBP (R)), both without loss fusion;
- *bound*: the same lower bound under ``torch.no_grad()`` (IBP), beside the network's eager
  forward pass ``model(x)`` under ``torch.no_grad()``.

auto_LiRPA runs with ``_auto_lirpa.DEFINITION`` (CROWN's every intermediate bound by CROWN, as
relaxlab computes it; see ``compare_auto_lirpa.py``) and its default ``conv_mode="patches"``; with
``--auto-defaults`` a third column times auto_LiRPA with its default options (sparse intermediate
bounds: it backsubstitutes only the neurons its interval reference leaves unstable), checked the
same way. auto_LiRPA is handed the network after the leading ``Normalize`` and the normalised box
(exactly the same set; its patches mode cannot bound the normalisation), so its steps skip one
elementwise map of the input box that relaxlab's include.

Before any timing, each side's lower bounds (under ``no_grad``) must agree to 1e-5 relative
(``max |a - b| <= 1e-5 · max |b|``) or the row is reported as differing and not timed.

Timing: one warm-up call per side, then ``--repeats`` rounds, each timing both sides in turn
(alternating which goes first); min and median wall time per side, the ratio of the minima and
the median of the per-round ratios, and the ratio of the minimal process CPU times (on a shared
machine the least disturbed by other work). Both sides run in one process with glibc's allocator
tuned as the ``relaxlab`` command line tunes it (``relaxlab.runtime.tune_allocator``; it keeps
freed blocks instead of faulting them in again; ``--no-tune-allocator`` leaves it). The column
``target`` is issue 24's.
Peak memory (rows marked ``peak``): each side runs one step in a subprocess of its own (address
space capped at ``--memory-gib``); reported are the process's peak resident set (``VmHWM``; not
``ru_maxrss``, which a child inherits from its parent at fork) and its growth over the resident
set before the step.

Timings from a machine shared with other work are preliminary; the load average at the start and
the end is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _auto_lirpa  # noqa: E402
from _machine import load_note  # noqa: E402

import relaxlab  # noqa: E402
from relaxlab.engine.spec import margin_spec  # noqa: E402
from relaxlab.runtime import tune_allocator  # noqa: E402

BATCH, EPS, DOMAIN, NUM_CLASSES = 100, 0.1, (0.0, 1.0), 10
MEAN, STD = [0.1307], [0.3081]

#: name -> (architecture, relaxlab relaxation, auto_LiRPA method, kind, measure peak memory)
ROWS: dict[str, tuple[str, str, str, str, bool]] = {
    "fc-crown": ("FC", "CROWN", "backward", "step", False),
    "conv-crown": ("CONV", "CROWN", "backward", "step", False),
    "convp-crown": ("CONV+", "CROWN", "backward", "step", True),
    "fc-crown-ibp": ("FC", "CROWN-IBP (R)", "CROWN-IBP", "step", False),
    "conv-crown-ibp": ("CONV", "CROWN-IBP (R)", "CROWN-IBP", "step", False),
    "conv-ibp": ("CONV", "IBP", "IBP", "bound", False),
}
#: issue 24's targets: of the ratio relaxlab / auto_LiRPA (steps), of bound / forward pass (IBP)
TARGETS = {
    "fc-crown": "<= 0.5",
    "conv-crown": "keep 0.23",
    "convp-crown": "keep 0.29, <= 4 GB",
    "fc-crown-ibp": "<= 0.6",
    "conv-crown-ibp": "<= 0.4",
    "conv-ibp": "bound/fwd <= 2.5x",
}


def problem(arch: str) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """``(model, x, labels, C)`` of the setting, model in training mode."""
    torch.manual_seed(0)
    model = relaxlab.get_registry().architectures[arch].build((1, 28, 28), NUM_CLASSES, MEAN, STD)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, 28, 28, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    return model.train(), x, labels, margin_spec(labels, NUM_CLASSES)


def robust_ce(lb: Tensor) -> Tensor:
    """Cross-entropy of the worst-case logits the margin bounds allow (0 for the label, ``-lb_j`` else)."""
    logits = torch.cat([lb.new_zeros(lb.shape[0], 1), -lb], dim=1)
    return F.cross_entropy(logits, lb.new_zeros(lb.shape[0], dtype=torch.long))


class Sides:
    """The closures of one row: relaxlab's and auto_LiRPA's bound, step and (for IBP) the eager forward."""

    def __init__(self, row: str, auto_options: dict) -> None:
        arch, self.name, self.method, self.kind, _ = ROWS[row]
        self.model, self.x, labels, self.C = problem(arch)
        body, self.x_n, self.lower_n, self.upper_n = _auto_lirpa.without_normalize(
            self.model, self.x, EPS, DOMAIN
        )
        self.module = _auto_lirpa.bounded_module(body, self.x_n, {**auto_options})
        self.module.train()

    def relaxlab_bound(self) -> Tensor:
        lb, _ = relaxlab.compute_bounds(
            self.model, self.x, EPS, self.name, C=self.C, domain=DOMAIN, lower_only=True
        )
        return lb

    def auto_bound(self) -> Tensor:
        lb, _ = _auto_lirpa.compute_bounds(
            self.module, self.x_n, self.lower_n, self.upper_n, self.C, self.method, bound_upper=False
        )
        return lb

    def _run(self, bound: Callable[[], Tensor], owner: nn.Module) -> None:
        if self.kind == "bound":
            with torch.no_grad():
                bound()
            return
        owner.zero_grad(set_to_none=True)
        robust_ce(bound()).backward()

    def relaxlab_run(self) -> None:
        self._run(self.relaxlab_bound, self.model)

    def auto_run(self) -> None:
        self._run(self.auto_bound, self.module)

    def forward_run(self) -> None:
        with torch.no_grad():
            self.model(self.x)

    def check(self) -> float:
        """``max |relaxlab - auto_LiRPA| / max |auto_LiRPA|`` of the lower bounds."""
        with torch.no_grad():
            ours, theirs = self.relaxlab_bound(), self.auto_bound()
        return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))


def interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    """Wall and CPU seconds of every closure: one warm-up, then ``repeats`` rounds in alternating order."""
    for run in runs.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "wall": wall[name],
            "cpu": cpu[name],
            "min": min(wall[name]),
            "median": statistics.median(wall[name]),
            "cpu_min": min(cpu[name]),
        }
        for name in names
    }


_MEMORY_CELL = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[4])
limit = int(sys.argv[3]) << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
torch.set_num_threads(1)
import bench_vs_auto_lirpa as bench, _auto_lirpa
if sys.argv[6] == "1":
    bench.tune_allocator()
_auto_lirpa.require()
row, side = sys.argv[1], sys.argv[2]
sides = bench.Sides(row, json.loads(sys.argv[5]))
run = sides.relaxlab_run if side == "relaxlab" else sides.auto_run

def status(key):  # kB; VmHWM is this process's own peak (ru_maxrss inherits the parent's at fork)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

before = status("VmRSS")
try:
    run()
    peak = status("VmHWM")
    print(json.dumps({"before_MiB": before / 1024, "peak_MiB": peak / 1024, "step_MiB": (peak - before) / 1024}))
except MemoryError:
    print(json.dumps({"error": "out of memory"}))
"""


def peak_memory(row: str, side: str, memory_gib: int, options: dict, tuned: bool = False) -> dict:
    """One step of one side in a subprocess (allocator tuned as in the parent): the growth of its peak
    resident set."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_CELL,
            row,
            side,
            str(memory_gib),
            str(Path(__file__).resolve().parent),
            json.dumps(options),
            "1" if tuned else "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--auto-defaults", action="store_true", help="also time auto_LiRPA with its default options"
    )
    parser.add_argument(
        "--memory-gib", type=int, default=10, help="address-space cap of the memory subprocesses"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the peak-memory subprocesses, no timing"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--no-tune-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (by default it is tuned as the relaxlab CLI tunes it)",
    )
    args = parser.parse_args(argv)
    _auto_lirpa.require()
    torch.set_num_threads(1)
    tuned = not args.no_tune_allocator and tune_allocator()
    load_start = os.getloadavg()
    results = []
    for row in args.rows:
        record: dict = {"row": row, "arch": ROWS[row][0], "relaxation": ROWS[row][1], "kind": ROWS[row][3]}
        if args.memory_only:
            if ROWS[row][4]:
                record["memory"] = {
                    side: peak_memory(row, side, args.memory_gib, _auto_lirpa.DEFINITION, tuned)
                    for side in ("relaxlab", "auto_LiRPA")
                }
                print(f"{row}: " + json.dumps(record["memory"]))
            continue
        sides = Sides(row, _auto_lirpa.DEFINITION)
        record["rel_diff"] = sides.check()
        runs: dict[str, Callable[[], None]] = {"relaxlab": sides.relaxlab_run, "auto_LiRPA": sides.auto_run}
        if args.auto_defaults:
            defaults = Sides(row, {})
            record["rel_diff_defaults"] = defaults.check()
            if record["rel_diff_defaults"] <= 1e-5:
                runs["auto_LiRPA defaults"] = defaults.auto_run
        if ROWS[row][3] == "bound":
            runs["forward"] = sides.forward_run
        if record["rel_diff"] > 1e-5:
            record["error"] = f"bounds differ by {record['rel_diff']:.2g} (relative): not timed"
        else:
            record["times"] = interleaved(runs, args.repeats)
        if ROWS[row][4] and not args.no_memory:
            record["memory"] = {
                side: peak_memory(row, side, args.memory_gib, _auto_lirpa.DEFINITION, tuned)
                for side in ("relaxlab", "auto_LiRPA")
            }
        results.append(record)
        print(f"# {row}: done", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    _print(results, args.repeats, load_start, load_end, tuned)
    if args.json:
        args.json.write_text(
            json.dumps({"load_start": load_start, "load_end": load_end, "rows": results}, indent=1)
        )
    return 0


def _print(results: list[dict], repeats: int, load_start: tuple, load_end: tuple, tuned: bool) -> None:
    print(
        f"relaxlab vs auto_LiRPA, one thread, batch {BATCH}, eps {EPS}, float32, 9 margin rows; min / median of "
        f"{repeats} paired rounds (wall); ratio min: of the minima; paired med: median of the per-round ratios; "
        f"cpu ratio: of the minimal process CPU times; torch {torch.__version__}, glibc allocator "
        f"{'tuned (relaxlab.runtime.tune_allocator, as the relaxlab CLI; both sides)' if tuned else 'untuned'}"
    )
    print(load_note(load_start, load_end))
    header = (
        f"{'row':<34}{'relaxlab min/med':>20}{'auto_LiRPA min/med':>22}{'ratio min':>10}{'paired med':>11}"
        f"{'cpu ratio':>10}{'rel diff':>10}  {'target':<19}extra"
    )
    print(header)
    print("-" * len(header))
    for record in results:
        label = f"{record['arch']}, {record['relaxation']} {record['kind']}"
        if "times" not in record:
            print(f"{label:<34}{record.get('error', '')}")
            continue
        t = record["times"]
        ours, theirs = t["relaxlab"], t["auto_LiRPA"]
        paired = statistics.median(a / b for a, b in zip(ours["wall"], theirs["wall"], strict=True))
        extra = []
        if "forward" in t:
            extra.append(
                f"forward {1e3 * t['forward']['min']:.2f} ms (bound/forward: relaxlab "
                f"{ours['min'] / t['forward']['min']:.1f}x, auto_LiRPA {theirs['min'] / t['forward']['min']:.1f}x)"
            )
        if "auto_LiRPA defaults" in t:
            extra.append(f"auto_LiRPA defaults {_ms(t['auto_LiRPA defaults']['min'])}")
        elif "rel_diff_defaults" in record:
            extra.append(
                f"auto_LiRPA defaults: bounds differ by {record['rel_diff_defaults']:.2g}, not timed"
            )
        for side, mem in record.get("memory", {}).items():
            extra.append(
                f"{side} peak {mem['peak_MiB']:.0f} MiB (+{mem['step_MiB']:.0f} in the step)"
                if "step_MiB" in mem
                else f"{side}: {mem['error']}"
            )
        print(
            f"{label:<34}{_ms(ours['min']) + ' / ' + _ms(ours['median']):>20}"
            f"{_ms(theirs['min']) + ' / ' + _ms(theirs['median']):>22}{ours['min'] / theirs['min']:>10.2f}"
            f"{paired:>11.2f}{ours['cpu_min'] / theirs['cpu_min']:>10.2f}{record['rel_diff']:>10.1g}  "
            f"{TARGETS[record['row']]:<19}{'; '.join(extra)}"
        )


def _ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{1e3 * seconds:.1f} ms"


if __name__ == "__main__":
    raise SystemExit(main())
