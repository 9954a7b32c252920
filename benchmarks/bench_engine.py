"""Engine cost on the paper's CONV network (Table 7), as multiples of a natural forward pass.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--batch 100] [--threads 1] [--repeats 30]``

Network: Normalize, Conv2d(1, 16, 4, stride 2, padding 1), ReLU, Flatten, Linear(3136, 100),
ReLU, Linear(100, 10) on 28x28 inputs, random weights (PyTorch default init), uniform inputs,
eps = 0.1 clipped to [0, 1]. Each timing is the *minimum* over ``--repeats`` runs, with the
methods interleaved, so that load from other processes on the machine inflates it least.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (tensor memory only); on the CPU
``tracemalloc`` does not see torch's allocator, so we report the peak of the process's resident
set (``resource.getrusage(...).ru_maxrss``, which only grows) measured after each method in
order of increasing cost.

Rows marked ``diag:`` use stand-in relaxations whose lines are written directly in torch; the
difference to the registered relaxation is the cost of evaluating the declared expressions.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import relaxlab
from relaxlab.api import compute_bounds
from relaxlab.core.relaxer import RelaxationTensors
from relaxlab.engine import bound_network, margin_spec, parse_model
from relaxlab.nn import Normalize
from relaxlab.runtime import tune_allocator


def conv_net() -> nn.Sequential:
    """CONV of Table 7 (Jovanović et al. 2022): CONV 16 4x4+2, FC 100, FC 10."""
    return nn.Sequential(
        Normalize([0.1307], [0.3081]),
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 14 * 14, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


class _HandIBP:
    """Diagnostic stand-in: IBP's lines written directly in torch (what the expression evaluator costs)."""

    name, intermediate, final, is_interval = "IBP (hand-written lines)", "interval", "backsub", True

    def transform_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lower, upper

    def coefficients(self, lower: torch.Tensor, upper: torch.Tensor) -> RelaxationTensors:
        zero = torch.zeros_like(lower)
        return RelaxationTensors(zero, torch.relu(lower), zero, torch.relu(upper))


class _HandCrownIBP(_HandIBP):
    """Diagnostic stand-in: CROWN's lines written directly in torch, interval intermediate bounds."""

    name, is_interval = "CROWN-IBP (R) (hand-written lines)", False

    def coefficients(self, lower: torch.Tensor, upper: torch.Tensor) -> RelaxationTensors:
        unstable, positive = (lower < 0) & (upper > 0), (lower >= 0) & (upper > 0)
        chord = upper / (upper - lower).clamp_min(torch.finfo(lower.dtype).tiny)
        upper_slope = torch.where(unstable, chord, positive.to(lower.dtype))
        lower_slope = torch.where(unstable, (upper > -lower).to(lower.dtype), positive.to(lower.dtype))
        offset = torch.where(unstable, -upper_slope * lower, torch.zeros_like(lower))
        return RelaxationTensors(lower_slope, torch.zeros_like(lower), upper_slope, offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-crown-repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time bound_network wrapped in torch.compile(fullgraph=True) (compiles first, ~10-60 s)",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc settings alone (default: relaxlab.runtime.tune_allocator(), as the CLI does)",
    )
    args = parser.parse_args()
    tuned = False if args.default_allocator else tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = conv_net().to(device).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    spec = margin_spec(labels, 10).to(device)
    eps, domain = 0.1, (0.0, 1.0)
    network = parse_model(model, (1, 28, 28))
    ibp, crown_ibp, crown = (relaxlab.get_relaxation(n) for n in ("IBP", "CROWN-IBP (R)", "CROWN"))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    methods: dict[str, Callable[[], object]] = {
        "forward": lambda: model(x),
        "IBP (margins)": lambda: compute_bounds(network, x, eps, ibp, C=spec, domain=domain),
        "IBP (margins, incl. parsing)": lambda: compute_bounds(model, x, eps, ibp, C=spec, domain=domain),
        "CROWN-IBP (R) (margins, lower only)": lambda: compute_bounds(
            network, x, eps, crown_ibp, C=spec, domain=domain, lower_only=True
        ),
        "CROWN-IBP (R) (margins, both)": lambda: compute_bounds(
            network, x, eps, crown_ibp, C=spec, domain=domain
        ),
        "diag: IBP, hand-written lines": lambda: compute_bounds(
            network, x, eps, _HandIBP(), C=spec, domain=domain
        ),
        "diag: CROWN-IBP (R) lower, hand lines": lambda: compute_bounds(
            network, x, eps, _HandCrownIBP(), C=spec, domain=domain, lower_only=True
        ),
    }
    if args.compile:
        lower, upper = (x - eps).clamp(*domain), (x + eps).clamp(*domain)
        for label, relaxation, lower_only in (("IBP", ibp, False), ("CROWN-IBP (R)", crown_ibp, True)):
            compiled = torch.compile(
                lambda lo, hi, r=relaxation, only=lower_only: bound_network(
                    network, lo, hi, r, spec, lower_only=only
                ),
                fullgraph=True,
                dynamic=False,
            )
            with torch.no_grad():
                compiled(lower, upper)  # compile outside the timed runs
            suffix = " lower only" if lower_only else ""
            methods[f"compiled: {label} (margins{suffix})"] = lambda f=compiled: f(lower, upper)
    best = dict.fromkeys(methods, float("inf"))
    peaks: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, run in methods.items():
                sync()
                start = time.perf_counter()
                run()
                sync()
                best[name] = min(best[name], time.perf_counter() - start)
        for name, run in methods.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run()
            peaks[name] = (
                torch.cuda.max_memory_allocated() / 2**20
                if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            )
        name = "CROWN (full backsubstitution, margins)"
        best[name] = float("inf")
        for _ in range(args.full_crown_repeats):
            sync()
            start = time.perf_counter()
            compute_bounds(network, x, eps, crown, C=spec, domain=domain)
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        compute_bounds(network, x, eps, crown, C=spec, domain=domain)
        peaks[name] = (
            torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
    forward = best["forward"]
    rows = [
        {"method": name, "ms": 1e3 * seconds, "ratio": seconds / forward, "peak_MiB": peaks[name]}
        for name, seconds in best.items()
    ]
    info = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "torch": torch.__version__,
        "allocator": "tuned" if tuned else "default",
        "memory": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "ru_maxrss (process peak so far)",
    }
    if args.json:
        json.dump({"info": info, "rows": rows}, sys.stdout, indent=2)
        print()
        return
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{'method':40s} {'ms':>9s} {'x forward':>10s} {'peak MiB':>9s}")
    for row in rows:
        print(f"{row['method']:40s} {row['ms']:9.2f} {row['ratio']:10.2f} {row['peak_MiB']:9.0f}")
    targets = {"IBP (margins)": 2.5, "CROWN-IBP (R) (margins, lower only)": 15.0}
    for name, target in targets.items():
        ratio = best[name] / forward
        print(f"target {name}: <= {target}x -> {ratio:.2f}x {'OK' if ratio <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
