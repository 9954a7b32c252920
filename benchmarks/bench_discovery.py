"""Time the full discovery pipeline (catalog, filters, families, relations) and the genealogy.

Run: .venv/bin/python benchmarks/bench_discovery.py [--repeat 3]
Prints the stage counts and the wall time of each run; the target is under 10 s on a 2-core CPU.
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
    args = parser.parse_args()
    for run in range(args.repeat):
        _clear_caches()
        start = time.perf_counter()
        registry = build_registry(load_entry_points=False)
        found = discover(registry)
        middle = time.perf_counter()
        graph = genealogy(found, registry.relaxations.values())
        end = time.perf_counter()
        if run == 0:
            print("stages:", " -> ".join(f"{s} {c}" for s, c in found.stages))
            print(f"genealogy: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges")
        print(f"run {run + 1}: discovery (with families and relations) {middle - start:.2f} s, "
              f"genealogy {end - middle:.2f} s, total {end - start:.2f} s")


def _clear_caches() -> None:
    from relaxlab.discovery import flags
    from relaxlab.properties import derive, tightness

    for cached in (flags.internal_jump, flags.line_sensitive, tightness.profile, tightness.effective_intermediate,
                   derive):
        cached.cache_clear()


if __name__ == "__main__":
    main()
