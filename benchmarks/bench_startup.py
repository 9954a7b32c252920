"""CPU time of the CLI's start-up: ``relaxlab --help``, ``list`` and ``show CROWN``, cold and warm cache.

Run: ``.venv/bin/python benchmarks/bench_startup.py [--repeats 3] [--src DIR]``

Each command runs in a fresh interpreter (``python -m relaxlab ...``, output discarded) and is
measured by the CPU time (user + system) the child used, from ``resource.getrusage``: on a
machine shared with other work, wall time says more about the neighbours than about relaxlab.
The verdict cache lives in a temporary directory: *cold* removes it before each run, *warm*
runs ``list`` once before. The minimum over ``--repeats`` runs is reported, as in
``bench_engine.py``. ``--src`` puts another source tree first on ``PYTHONPATH`` (an older
checkout, for a before/after comparison).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile

COMMANDS = (
    ("relaxlab --help", ["--help"], None),
    ("relaxlab list", ["list"], "cold"),
    ("relaxlab list", ["list"], "warm"),
    ("relaxlab show -r CROWN", ["show", "-r", "CROWN"], "cold"),
    ("relaxlab show -r CROWN", ["show", "-r", "CROWN"], "warm"),
)


def child_cpu(args: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of one ``python -m relaxlab ARGS``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "relaxlab", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--src", help="source tree to put first on PYTHONPATH")
    options = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="relaxlab-bench-cache-")
    env = {**os.environ, "RELAXLAB_CACHE_DIR": cache_dir}
    env.pop("RELAXLAB_NO_CACHE", None)
    if options.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [options.src, env.get("PYTHONPATH")]))
    try:
        for label, args, cache in COMMANDS:
            times = []
            for _ in range(options.repeats):
                if cache == "cold":
                    shutil.rmtree(cache_dir, ignore_errors=True)
                elif cache == "warm":
                    child_cpu(["list"], env)
                times.append(child_cpu(args, env))
            where = f"{cache} cache" if cache else ""
            print(
                f"{label:22s} {where:10s}  {min(times):5.2f} s CPU  (runs: {', '.join(f'{t:.2f}' for t in times)})",
                flush=True,
            )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
