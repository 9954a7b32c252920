"""Time the full discovery pipeline (catalog, filters, families, transforms, relations) and the genealogy.

Run: .venv/bin/python benchmarks/bench_discovery.py [--repeat 3] [--no-transforms]
Prints the stage counts and the wall and CPU time of each run (CPU time varies less on a shared
machine); the target is under 10 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

from relaxlab.discovery import discover
from relaxlab.discovery.genealogy import genealogy
from relaxlab.registry import build_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process-like runs (caches cleared)")
    parser.add_argument(
        "--no-transforms", action="store_true", help="the plain pipeline (relaxlab discover --transform none)"
    )
    args = parser.parse_args()
    for run in range(args.repeat):
        _clear_caches()
        start, cpu_start = time.perf_counter(), time.process_time()
        registry = build_registry(load_entry_points=False)
        found = discover(registry, transforms=[] if args.no_transforms else None)
        middle, cpu_middle = time.perf_counter(), time.process_time()
        graph = genealogy(found, registry.relaxations.values())
        end, cpu_end = time.perf_counter(), time.process_time()
        if run == 0:
            print("stages:", " -> ".join(f"{s} {c}" for s, c in found.stages))
            print(f"genealogy: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges")
        print(
            f"run {run + 1}: discover() {middle - start:.2f} s "
            f"({cpu_middle - cpu_start:.2f} s CPU), genealogy {end - middle:.2f} s ({cpu_end - cpu_middle:.2f} s CPU), "
            f"total {end - start:.2f} s"
        )


def _clear_caches() -> None:
    from relaxlab.discovery import flags
    from relaxlab.properties import derive, tightness

    for cached in (
        flags.internal_jump,
        flags.line_sensitive,
        tightness.profile,
        tightness.effective_intermediate,
        derive,
    ):
        cached.cache_clear()


if __name__ == "__main__":
    main()
