"""What the benchmarks say about the machine they ran on: its load, and a best-of timer."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable


def load_note(start: tuple[float, float, float], end: tuple[float, float, float]) -> str:
    """The 1/5/15-minute load averages at the start and the end, and whether timings are preliminary."""
    busy = max(start[0], end[0]) > 1.5
    return (
        f"load average (1, 5, 15 min): start {start[0]:.1f} {start[1]:.1f} {start[2]:.1f}, "
        f"end {end[0]:.1f} {end[1]:.1f} {end[2]:.1f} on {os.cpu_count()} cores: "
        f"{'PRELIMINARY (shared machine: rerun on a quiet one)' if busy else 'quiet'}"
    )


def best_time(run: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up call."""
    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
