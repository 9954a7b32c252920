"""Experiments composed of training, certification and the results store.

- :mod:`relaxlab.experiments.sweep`: sweep files (grid x seeds), run ids, the resumable driver;
- :mod:`relaxlab.experiments.executors`: where runs execute (in-process, or Ray tasks);
- :mod:`relaxlab.experiments.runs`: one run (train + certify) as plain values.

Nothing below this package imports it.
"""

from __future__ import annotations

from relaxlab.experiments.executors import Executor, InProcessExecutor, RayExecutor, make_executor
from relaxlab.experiments.sweep import Sweep, SweepError, SweepRun, load_sweep, parse_sweep, run_sweep

__all__ = [
    "Executor",
    "InProcessExecutor",
    "RayExecutor",
    "Sweep",
    "SweepError",
    "SweepRun",
    "load_sweep",
    "make_executor",
    "parse_sweep",
    "run_sweep",
]
