"""tune_allocator: freed memory stays in the process (observed through the resident set size)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relaxlab.runtime import tune_allocator

_PROBE = """
import sys, torch
from relaxlab.runtime import tune_allocator
if sys.argv[1] == "tune":
    assert tune_allocator()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
block = torch.ones(4 * 2**20)  # 16 MiB, every page touched
peak = resident()
del block
print((peak - resident()) / 2**20)
"""


def _returned_mib(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux) only")
def test_freed_blocks_stay_in_the_process_after_tuning() -> None:
    assert _returned_mib("default") > 12.0  # glibc returns a freed 16 MiB block to the system
    assert _returned_mib("tune") < 4.0  # tuned, it keeps the block for the next allocation


def test_tune_allocator_reports_failure_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_allocator() is False
